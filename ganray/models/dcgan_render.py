"""DCGAN's generator in its render form: the same faces, computed faster on CPU (render-only processes).

Each rewrite gives the plain generator's values bit for bit (tests/test_render.py compares the
faces byte for byte, batch by batch, in bf16 and fp32); benchmarks/generator_speed.py measures them.

- LatentProjection: the first layer maps the 1x1 latent "image" to k x k. oneDNN runs it as a
  convolution over a zero-padded (2k-1)^2 input, mostly multiplying zeros; it is a matrix product,
  which in bf16 gives the same bf16 values. (In fp32 it rounds differently: fp32 keeps the convolution.)
- RenderConvTranspose, tiles: a stride-2 layer on maps narrower than 8 columns fills only part of an
  AMX tile's 16 rows per output row, while its whole weight streams once per image. Laid side by side
  with one zero column between them, images make one wide map whose transposed conv gives each
  image's pixels the same sums (the zeros add exact zeros; the column keeps neighbours apart). A face
  gets the same bytes whatever its tile's width, so the last tile of a batch just holds the rest.
- bf16 weight copies: under bf16 autocast every conv casts its fp32 weight to bf16 on every call;
  the render form keeps the cast copy, which has the same values.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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
    TILED_BELOW_WIDTH computed in tiles of side-by-side images (the same values: see the module docstring)."""

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


def rewrite_for_render(generator: nn.Module) -> nn.Module:
    """`generator` (a DCGAN Generator, in place) with the layers above rewritten and in-place ReLUs: the same faces, faster
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
