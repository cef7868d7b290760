"""DCGAN generator and discriminator (Radford et al. 2016), optionally conditioned on attributes.

Shapes for resolution R = 64 with the defaults (z_dim 100, g_width = d_width = 64, max_channels 512):

    Generator      z (B, 100) [+ one embedding per attribute] -> (B, C, 1, 1)
                   -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3 (tanh, in [-1, 1])
    Discriminator  64x64x3 -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> logit (B,)

Each doubling of R adds one block to each network. Channels double per block away from the image
and are capped at `max_channels`.

Conditioning (`cfg.conditional`): labels are a LongTensor (B, n_cond) of value indices, one column
per name in `condition_names`. G joins one embedding per attribute to z; D has a projection head
(Miyato & Koyama 2018): logit = w . phi(x) + b + sum_a <embed_a(y_a), phi(x)>, phi = D's features.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ganray.config import DCGANConfig
from ganray.models.conditioning import check_labels, conditions_for


def _check_resolution(resolution: int) -> None:
    # The networks work for any power of two >= 8; DCGANConfig restricts training jobs to 32..256.
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")


def _channels(width: int, num_blocks: int, cap: int) -> list[int]:
    """Channels of blocks ordered from the image inwards: width, 2*width, 4*width, ... capped."""
    return [min(width * 2**i, cap) for i in range(num_blocks)]


def _norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # normalises over (C, H, W) per image
    return None


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN init: conv/linear weights ~ N(0, 0.02); norm scales ~ N(1, 0.02); biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, z_dim) [+ labels (B, n_cond)] -> images (B, 3, R, R) in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig, resolution: int, attributes: dict[str, list[str]] | None = None):
        super().__init__()
        _check_resolution(resolution)
        self.z_dim = cfg.z_dim
        self.resolution = resolution
        self.condition_values = conditions_for(cfg, attributes)
        self.condition_names = list(self.condition_values)
        # Default N(0, 1) init: the embeddings enter next to z ~ N(0, 1), at the same scale.
        self.label_embeddings = nn.ModuleList(
            nn.Embedding(len(values), cfg.embed_dim) for values in self.condition_values.values()
        )

        # Feature maps at 4x4, 8x8, ..., R/2 x R/2; g_width channels at R/2, doubling towards 4x4.
        channels = _channels(cfg.g_width, int(math.log2(resolution)) - 2, cfg.max_channels)[::-1]
        in_dim = cfg.z_dim + len(self.condition_names) * cfg.embed_dim
        # Conv bias is redundant before BatchNorm (it subtracts the mean), hence bias=False.
        layers = [nn.ConvTranspose2d(in_dim, channels[0], 4, 1, 0, bias=False),  # 1x1 -> 4x4
                  nn.BatchNorm2d(channels[0]), nn.ReLU()]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.net.apply(_dcgan_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        check_labels(labels, self.condition_values, z.shape[0])
        embedded = [table(labels[:, i]) for i, table in enumerate(self.label_embeddings)]
        x = torch.cat([z, *embedded], dim=1)
        return self.net(x[:, :, None, None])  # (B, C) -> (B, C, 1, 1): the 1x1 "image" to upsample

    def to_render_form(self) -> "Generator":
        """Itself, rewritten in place to render the same faces faster on CPU (`rewrite_for_render`)."""
        return rewrite_for_render(self)


class Discriminator(nn.Module):
    """images (B, 3, R, R) [+ labels (B, n_cond)] -> logits (B,) in float32, high = "real"."""

    def __init__(self, cfg: DCGANConfig, resolution: int, attributes: dict[str, list[str]] | None = None):
        super().__init__()
        _check_resolution(resolution)
        self.resolution = resolution
        self.condition_values = conditions_for(cfg, attributes)
        self.condition_names = list(self.condition_values)

        # Feature maps at R/2, R/4, ..., 4x4; d_width channels at R/2, doubling towards 4x4.
        channels = _channels(cfg.d_width, int(math.log2(resolution)) - 2, cfg.max_channels)
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(channels):
            # No normalisation on the input block: DCGAN found it makes training oscillate and unstable.
            norm = _norm(cfg.d_norm, c_out) if i > 0 else None
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm is None))
            if norm is not None:
                layers.append(norm)
            layers.append(nn.LeakyReLU(0.2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        feature_dim = channels[-1] * 4 * 4
        self.head = nn.Linear(feature_dim, 1)  # same as DCGAN's final 4x4 conv to one channel
        self.projections = nn.ModuleList(
            nn.Embedding(len(values), feature_dim) for values in self.condition_values.values()
        )
        self.apply(_dcgan_init)
        for table in self.projections:
            nn.init.normal_(table.weight, 0.0, 0.02)  # the same scale as the head's weights

        if cfg.spectral_norm:
            # Every weight that multiplies features, projection embeddings included (as in Miyato's
            # reference code), so that the whole logit is Lipschitz-controlled.
            for m in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]:
                spectral_norm(m)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(labels, self.condition_values, images.shape[0])
        phi = self.features(images).flatten(1)
        logits = self.head(phi).squeeze(1).float()  # fp32: losses and penalties are rounding-sensitive
        for i, table in enumerate(self.projections):
            logits = logits + (table(labels[:, i]).float() * phi.float()).sum(1)
        return logits


# --- The generator's render form (render-only processes on CPU) --------------------------------
#
# Some of the generator's work runs far below the CPU's bf16 peak in oneDNN and can be computed
# another way that gives the same values bit for bit (tests/test_render.py checks the faces byte for
# byte against the plain generator, batch by batch, in bf16 and fp32):
#
# - the first layer maps the 1x1 latent "image" to k x k. oneDNN runs it as a convolution over a
#   zero-padded (2k-1)^2 input, so 15 of every 16 products are zeros (~25 GFLOP/s here). It is a
#   matrix product; in bf16 the product gives the same bf16 values, ~10x faster. (In fp32 it
#   rounds differently: fp32 keeps the convolution.)
# - a stride-2 layer on 4x4 maps (DCGAN-64's 512 -> 256) ran at a third of the rate of the next
#   layers with the same FLOPs: oneDNN's AMX kernels take a row of output pixels as a tile's rows
#   (16), and an 8-pixel row fills half of one, while the whole weight (4 MiB in bf16, more than a
#   core's L2) streams once per image. Laid side by side with one zero column between them, images
#   make one wide map whose transposed conv gives each image's pixels the same sums (the zeros add
#   exact zeros; the column keeps neighbours apart) ~3x faster at 16 images a tile. A face gets the
#   same bytes whatever its tile's width (the tests check tiles of 1, 4, 7, 10 and 16 images against
#   the plain layer), so the last tile of a batch just holds the rest: no padding images.
# - under bf16 autocast every conv casts its fp32 weight to bf16 on every call (with the other copies,
#   ~8 % of a forward pass); the render form keeps the cast copy, which has the same values.

TILE_INPUT_COLUMNS = 80  # columns of a tile of side-by-side maps: 16 images of 4 columns and their zero columns
TILED_BELOW_WIDTH = 8  # tile layers whose input rows are narrower (their output rows fill < 16 AMX rows)


def _bf16_autocast_on_cpu(x: Tensor) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and \
        torch.get_autocast_dtype("cpu") == torch.bfloat16


def _bf16_copy(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to(torch.bfloat16)  # autocast's cast, done once (keeps the layout)


class LatentProjection(nn.Module):
    """The first ConvTranspose2d (1x1 input, stride 1, no padding, no bias), as a matrix product under
    CPU bf16 autocast; the convolution itself otherwise."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        if conv.stride != (1, 1) or conv.padding != (0, 0) or conv.bias is not None or conv.groups != 1:
            raise ValueError("LatentProjection takes a stride-1, unpadded, bias-free ConvTranspose2d")
        self.conv = conv
        # (C_in, C_out, k, k) -> (C_out*k*k, C_in): F.linear's layout; bf16 as autocast would cast it.
        weight = conv.weight.detach().reshape(conv.in_channels, -1).t().contiguous()
        self.register_buffer("weight_bf16", weight.to(torch.bfloat16), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2:] != (1, 1) or not _bf16_autocast_on_cpu(x):
            return self.conv(x)
        k_h, k_w = self.conv.kernel_size
        y = F.linear(x.flatten(1).to(torch.bfloat16), self.weight_bf16)
        return y.view(x.shape[0], self.conv.out_channels, k_h, k_w).contiguous(memory_format=torch.channels_last)


class RenderConvTranspose(nn.Module):
    """A ConvTranspose2d on CPU with its bf16 weight kept for bf16 autocast, and maps narrower than
    TILED_BELOW_WIDTH computed in tiles of side-by-side images (the same values: see above)."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        self.conv = conv
        self.register_buffer("weight_bf16", _bf16_copy(conv.weight), persistent=False)
        self.register_buffer("bias_bf16", _bf16_copy(conv.bias), persistent=False)
        # Only DCGAN's upsampling shape: output column o reads input columns (o - 1) // 2 and
        # (o + 1) // 2 (of each image), so one zero column keeps two images' sums apart.
        self.tileable = (conv.kernel_size, conv.stride, conv.padding, conv.output_padding, conv.dilation,
                         conv.groups) == ((4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        if x.device.type != "cpu":
            return c(x)
        weight, bias = (self.weight_bf16, self.bias_bf16) if _bf16_autocast_on_cpu(x) else (c.weight, c.bias)
        if not self.tileable or x.shape[3] >= TILED_BELOW_WIDTH:
            return F.conv_transpose2d(x, weight, bias, c.stride, c.padding, c.output_padding, c.groups, c.dilation)
        return self._tiled(x, weight, bias, TILE_INPUT_COLUMNS // (x.shape[3] + 1))

    def _tiled(self, x: Tensor, weight: Tensor, bias: Tensor | None, per_tile: int) -> Tensor:
        """Tiles of `per_tile` images (the last one holds the rest), one transposed conv for them."""
        if torch.is_autocast_enabled("cpu"):
            x = x.to(torch.get_autocast_dtype("cpu"))  # what autocast does to the conv's input
        full = x.shape[0] // per_tile * per_tile
        parts = [self._tiles(x[:full], weight, bias, per_tile)] if full else []
        if full < x.shape[0]:
            parts.append(self._tiles(x[full:], weight, bias, x.shape[0] - full))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _tiles(self, x: Tensor, weight: Tensor, bias: Tensor | None, per_tile: int) -> Tensor:
        b, ch, h, w = x.shape
        tiles = b // per_tile
        # (tile, row, image in tile, column, channel), with one zero column after each image's columns.
        grid = x.new_zeros(tiles, h, per_tile, w + 1, ch)
        grid.permute(0, 2, 1, 3, 4)[:, :, :, :w] = x.permute(0, 2, 3, 1).view(tiles, per_tile, h, w, ch)
        wide = grid.view(tiles, h, per_tile * (w + 1), ch).permute(0, 3, 1, 2)  # NCHW, channels_last memory
        y = F.conv_transpose2d(wide, weight, bias, self.conv.stride, self.conv.padding)
        out = y.permute(0, 2, 3, 1).view(tiles, 2 * h, per_tile, 2 * (w + 1), y.shape[1])[:, :, :, :2 * w]
        # A copy in NHWC order: with one tile, reshape would give a strided view, and BatchNorm rounds
        # differently on a tensor that is not channels_last-contiguous.
        out = out.permute(0, 2, 1, 3, 4).contiguous().view(b, 2 * h, 2 * w, y.shape[1])
        return out.permute(0, 3, 1, 2)


def rewrite_for_render(generator: Generator) -> Generator:
    """`generator` (in place) with the layers above rewritten and in-place ReLUs: the same faces, faster
    on CPU. Call it after the memory-format change (the bf16 copies keep the weights' layout). For
    render-only processes: the module's parameters are then stale copies for training or saving (its
    state_dict keys change too)."""
    layers = list(generator.net)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ConvTranspose2d):
            if i == 0 and layer.stride == (1, 1) and layer.bias is None:
                layers[i] = LatentProjection(layer)
            else:
                layers[i] = RenderConvTranspose(layer)
        elif isinstance(layer, nn.ReLU):
            layers[i] = nn.ReLU(inplace=True)  # exact: it only zeroes negatives, and saves a copy per layer
    generator.net = nn.Sequential(*layers)
    return generator
