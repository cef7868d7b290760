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
from torch.nn.utils.parametrizations import spectral_norm

from ganray.config import DCGANConfig
from ganray.models.conditioning import check_labels, conditions_for
from ganray.models.dcgan_render import rewrite_for_render


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
        """Itself, rewritten in place to render the same faces faster on CPU (ganray.models.dcgan_render)."""
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
