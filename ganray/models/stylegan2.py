"""StyleGAN2 generator and discriminator (Karras et al. 2020, "Analyzing and Improving the Image
Quality of StyleGAN"), conditioned as in StyleGAN2-ADA, in plain PyTorch: no custom CUDA/C++ ops,
so the same code runs on CPU and GPU.

Generator
    mapping     z (B, z_dim), normalised [+ label embedding, normalised] -> `mapping_layers` fully
                connected layers -> w (B, w_dim). In training mode the average w is tracked
                (`latent_mean`, and per combination of condition values); truncation pulls w
                towards it: w' = mean + psi * (w - mean).
    styles      w is repeated to ws (B, num_ws, w_dim), one w per layer; style mixing replaces the
                layers from a crossover index on with another latent's w.
    synthesis   a learned constant 4x4 input, then per resolution r = 4, 8, ..., R:
                [upsampling modulated 3x3 conv (r >= 8)], modulated 3x3 conv, each followed by
                noise (B, 1, r, r) * a learned strength, bias and leaky ReLU; a toRGB (modulated
                1x1 conv, not demodulated) at every r, summed into the upsampled image of r / 2
                ("skip" outputs). Layer i of ws: 4x4 uses w0 (conv) and w1 (toRGB); resolution
                r = 2^(k+2), k >= 1, uses w(2k-1), w(2k) (convs) and w(2k+1) (toRGB), so
                num_ws = 2 log2(R) - 2.
    The image is not squashed (no tanh, as in NVlabs' code): values are near [-1, 1] and the
    renderer clamps.

Discriminator (residual)
    fromRGB (1x1) at R, then per resolution R, R/2, ..., 8 a block: 3x3 conv, 3x3 conv with 2x
    downsampling, plus a 1x1 downsampling skip, summed with gain sqrt(1/2); at 4x4: minibatch
    standard deviation, 3x3 conv, fully connected, output. Conditional: the output is a vector
    projected onto an embedding of the labels (a mapping network of the labels alone), scaled by
    1/sqrt(its size): StyleGAN2-ADA's projection head.

Channels at resolution r: min(channel_base // r, channel_max).

The layers they are built of (equalized learning rate, resampling filters, modulated convolutions,
the mapping network) are in ganray/models/stylegan2_layers.py.

Conditioning (`cfg.conditional`): labels are a LongTensor (B, n_cond) of value indices, one column
per name in `condition_names`; each column is one-hot encoded and the codes concatenated (one
learned vector per attribute value, summed, is what the embedding layer makes of them).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ganray.config import StyleGAN2Config
from ganray.models.conditioning import check_labels, conditions_for
from ganray.models.stylegan2_layers import (DiscriminatorBlock, EqualConv2d, EqualLinear, MappingNetwork,
                                            SynthesisLayer, ToRGB, _fp32, _label_codes, make_filter,
                                            minibatch_stddev, upsample2d)

# A per-condition average w is a (combinations, w_dim) buffer: past this many combinations of
# condition values it stops being an average of anything seen often (set w_avg_per_condition: false).
MAX_CONDITION_COMBINATIONS = 4096


def _check_resolution(resolution: int) -> None:
    # The networks work for any power of two >= 8; StyleGAN2Config restricts training jobs to 32..1024.
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")


def _channels(cfg: StyleGAN2Config, resolution: int) -> dict[int, int]:
    """Channels at every resolution 4, 8, ..., `resolution`."""
    channels = {4 * 2**i: min(cfg.channel_base // (4 * 2**i), cfg.channel_max)
                for i in range(int(math.log2(resolution)) - 1)}
    if channels[resolution] < 1:
        raise ValueError(f"model.channel_base {cfg.channel_base} gives no channels at {resolution}x{resolution}: "
                         f"it must be at least {resolution}")
    return channels


def num_styles(resolution: int) -> int:
    """num_ws of a generator for `resolution` (2 log2(R) - 2), known without building it: the bulk
    job checks a style-mixing crossover against it before loading any weights."""
    return 2 * int(math.log2(resolution)) - 2


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) [+ noise, one (B, 1, r, r) per layer] -> images (B, 3, R, R), float32."""

    def __init__(self, cfg: StyleGAN2Config, resolution: int):
        super().__init__()
        channels = _channels(cfg, resolution)
        f = make_filter(cfg.resample_filter)
        self.register_buffer("resample_filter", f, persistent=False)
        self.resolutions = sorted(channels)
        self.const = nn.Parameter(torch.randn(channels[4], 4, 4))
        layers, to_rgb, w_index = [], [], 0
        for r in self.resolutions:
            if r > 4:  # the upsampling conv shares its w with the previous resolution's toRGB
                layers.append(SynthesisLayer(channels[r // 2], channels[r], cfg.w_dim, r, w_index, up=True,
                                             resample_filter=f, conv_clamp=cfg.conv_clamp))
                w_index += 1
            layers.append(SynthesisLayer(channels[r], channels[r], cfg.w_dim, r, w_index, up=False,
                                         resample_filter=f, conv_clamp=cfg.conv_clamp))
            to_rgb.append(ToRGB(channels[r], cfg.w_dim, w_index + 1, cfg.conv_clamp))
            w_index += 1
        self.layers = nn.ModuleList(layers)
        self.to_rgb = nn.ModuleList(to_rgb)
        self.num_ws = to_rgb[-1].w_index + 1

    @property
    def noise_inputs(self) -> list[tuple[int, int]]:
        """(resolution, w index) of each layer's noise input, in the order `forward` takes them."""
        return [(layer.resolution, layer.w_index) for layer in self.layers]

    def forward(self, ws: Tensor, noise: list[Tensor] | None = None) -> Tensor:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape (B, {self.num_ws}, w_dim), got {tuple(ws.shape)}")
        if noise is not None and len(noise) != len(self.layers):
            raise ValueError(f"noise must be a list of {len(self.layers)} tensors (one per layer), got {len(noise)}")
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        image = None
        layers = iter(enumerate(self.layers))
        for r, to_rgb in zip(self.resolutions, self.to_rgb):
            for _ in range(1 if r == 4 else 2):
                i, layer = next(layers)
                x = layer(x, ws[:, layer.w_index], None if noise is None else noise[i])
            rgb = to_rgb(x, ws[:, to_rgb.w_index])
            with _fp32(rgb):  # the image is accumulated in float32 over all resolutions
                image = rgb.float() if image is None else upsample2d(image, self.resample_filter) + rgb.float()
        return image


# ---------------------------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """z (B, z_dim) [+ labels (B, n_cond)] -> images (B, 3, R, R), near [-1, 1] (not squashed).

    `forward` in training mode mixes styles with probability `style_mixing_prob` and tracks the
    average w; in eval mode it does neither. Rendering reproducible faces goes through
    `map` -> `synthesis(ws, noise)` with per-face noise: see ganray.models.face.render_faces.
    """

    def __init__(self, cfg: StyleGAN2Config, resolution: int, attributes: dict[str, list[str]] | None = None):
        super().__init__()
        _check_resolution(resolution)
        self.z_dim, self.w_dim, self.resolution = cfg.z_dim, cfg.w_dim, resolution
        self.condition_values = conditions_for(cfg, attributes)
        self.condition_names = list(self.condition_values)
        self.style_mixing_prob, self.w_avg_beta = cfg.style_mixing_prob, cfg.w_avg_beta
        self._value_counts = [len(v) for v in self.condition_values.values()]

        self.mapping = MappingNetwork(cfg.z_dim, sum(self._value_counts), cfg.embed_dim, cfg.w_dim,
                                      cfg.mapping_layers, cfg.mapping_lr_mult, cfg.mapping_width)
        self.synthesis = SynthesisNetwork(cfg, resolution)
        self.num_ws = self.synthesis.num_ws

        # The tracked average w and how many updates it has had (the first sets it outright).
        self.register_buffer("latent_mean", torch.zeros(cfg.w_dim))
        self.register_buffer("latent_mean_updates", torch.zeros(1, dtype=torch.long))
        self.per_condition = bool(self.condition_values) and cfg.w_avg_per_condition
        if self.per_condition:
            combinations = math.prod(self._value_counts)
            if combinations > MAX_CONDITION_COMBINATIONS:
                raise ValueError(
                    f"the attributes {self.condition_names} have {combinations} combinations of values, more than "
                    f"{MAX_CONDITION_COMBINATIONS} averages of w to track: condition on fewer "
                    f"(model.condition_on) or set model.w_avg_per_condition: false")
            self.register_buffer("condition_latent_means", torch.zeros(combinations, cfg.w_dim))
            self.register_buffer("condition_latent_updates", torch.zeros(combinations, dtype=torch.long))
            # Mixed-radix place values: combination index = sum(label_i * stride_i), last column fastest.
            strides = [math.prod(self._value_counts[i + 1:]) for i in range(len(self._value_counts))]
            self.register_buffer("_condition_strides", torch.tensor(strides), persistent=False)

    @property
    def noise_inputs(self) -> list[tuple[int, int]]:
        """(resolution, w index) of each noise input of `synthesis`, in order."""
        return self.synthesis.noise_inputs

    def condition_index(self, labels: Tensor) -> Tensor:
        """(B,) index of each row's combination of condition values (per-condition averages)."""
        return (labels.long() * self._condition_strides).sum(dim=1)

    def map(self, z: Tensor, labels: Tensor | None = None, psi: float = 1.0, track: bool | None = None,
            single_rows: bool = False) -> Tensor:
        """ws (B, num_ws, w_dim) in float32: w for (z, labels), truncated towards the average w of
        each row's conditions (psi = 1: not truncated). `track` (default: training mode) updates
        the averages with this batch first. `single_rows` (rendering): each row's ws the same bits as
        when mapped in a batch of its own, so a face does not depend on its batch."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        check_labels(labels, self.condition_values, z.shape[0])
        codes = _label_codes(labels, self._value_counts) if self.condition_values else None
        w = self.mapping(z, codes, single_rows)
        if self.training if track is None else track:
            self._track_latent_mean(w.detach(), labels)
        if psi != 1:
            w = torch.lerp(self.truncation_target(labels, z.shape[0]), w, psi)
        return w[:, None, :].repeat(1, self.num_ws, 1)

    def truncation_target(self, labels: Tensor | None, batch: int) -> Tensor:
        """(B, w_dim): each row's condition-combination average w, or the overall average where the
        model tracks none per condition or has never seen that combination."""
        target = self.latent_mean[None].expand(batch, -1)
        if self.per_condition:
            index = self.condition_index(labels)
            seen = self.condition_latent_updates[index] > 0
            target = torch.where(seen[:, None], self.condition_latent_means[index], target)
        return target

    @torch.no_grad()
    def _track_latent_mean(self, w: Tensor, labels: Tensor | None) -> None:
        _update_averages(self.latent_mean[None], self.latent_mean_updates, torch.zeros_like(w[:, 0], dtype=torch.long),
                         w, self.w_avg_beta)
        if self.per_condition:
            _update_averages(self.condition_latent_means, self.condition_latent_updates,
                             self.condition_index(labels), w, self.w_avg_beta)

    def forward(self, z: Tensor, labels: Tensor | None = None, psi: float = 1.0,
                noise: list[Tensor] | None = None) -> Tensor:
        ws = self.map(z, labels, psi)
        if self.training and self.style_mixing_prob > 0 and self.num_ws > 1:
            # NVlabs' regulariser: the layers from a random crossover on take a second latent's w,
            # so adjacent styles do not learn to depend on each other. CPU draws: no device sync.
            if torch.rand(()) < self.style_mixing_prob:
                crossover = int(torch.randint(1, self.num_ws, ()))
                second = self.map(torch.randn_like(z), labels, psi, track=False)
                ws = torch.cat([ws[:, :crossover], second[:, crossover:]], dim=1)
        return self.synthesis(ws, noise)


@torch.no_grad()
def _update_averages(means: Tensor, updates: Tensor, index: Tensor, w: Tensor, beta: float) -> None:
    """Exponential moving averages of w per index (in place): each index present in the batch moves
    its average to lerp(batch mean, average, beta); the first update sets it to the batch mean.
    Whole-buffer arithmetic, so no device sync; index_add_, not bincount, which has no deterministic
    CUDA kernel (train.deterministic)."""
    count = torch.zeros(means.shape[0], device=w.device).index_add_(0, index, torch.ones_like(w[:, 0]))
    batch_mean = torch.zeros_like(means).index_add_(0, index, w.float()) / count.clamp(min=1)[:, None]
    present = (count > 0)[:, None]
    moved = torch.where((updates > 0)[:, None], torch.lerp(batch_mean, means, beta), batch_mean)
    means.copy_(torch.where(present, moved, means))
    updates.add_(present[:, 0].long())



class Discriminator(nn.Module):
    """images (B, 3, R, R) [+ labels (B, n_cond)] -> logits (B,) in float32, high = "real"."""

    def __init__(self, cfg: StyleGAN2Config, resolution: int, attributes: dict[str, list[str]] | None = None):
        super().__init__()
        _check_resolution(resolution)
        self.resolution = resolution
        self.condition_values = conditions_for(cfg, attributes)
        self.condition_names = list(self.condition_values)
        self._value_counts = [len(v) for v in self.condition_values.values()]
        channels = _channels(cfg, resolution)
        c4 = channels[4]
        if cfg.mbstd_channels and c4 % cfg.mbstd_channels:
            raise ValueError(f"model.mbstd_channels {cfg.mbstd_channels} must divide the {c4} channels at 4x4")
        self.mbstd_group, self.mbstd_channels = cfg.mbstd_group, cfg.mbstd_channels
        f = make_filter(cfg.resample_filter)

        self.from_rgb = EqualConv2d(3, channels[resolution], 1, conv_clamp=cfg.conv_clamp)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(channels[r], channels[r // 2], f, cfg.conv_clamp)
            for r in sorted(channels, reverse=True) if r > 4)
        self.conv = EqualConv2d(c4 + cfg.mbstd_channels, c4, 3, conv_clamp=cfg.conv_clamp)
        self.fc = EqualLinear(c4 * 4 * 4, c4, activation=True)
        # Conditional: the output is a c4-vector, projected onto the labels' mapping (NVlabs' cmap).
        self.projection_dim = c4 if self.condition_values else 0
        self.out = EqualLinear(c4, self.projection_dim or 1)
        self.label_mapping = (
            MappingNetwork(0, sum(self._value_counts), self.projection_dim, self.projection_dim,
                           cfg.mapping_layers, cfg.mapping_lr_mult)
            if self.condition_values else None)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        if images.ndim != 4 or images.shape[1:] != (3, self.resolution, self.resolution):
            raise ValueError(f"images must have shape (B, 3, {self.resolution}, {self.resolution}), "
                             f"got {tuple(images.shape)}")
        check_labels(labels, self.condition_values, images.shape[0])
        x = self.from_rgb(images)
        for block in self.blocks:
            x = block(x)
        x = self.conv(minibatch_stddev(x, self.mbstd_group, self.mbstd_channels))
        x = self.out(self.fc(x.flatten(1))).float()  # fp32: losses and penalties are rounding-sensitive
        if self.label_mapping is None:
            return x.squeeze(1)
        projection = self.label_mapping(None, _label_codes(labels, self._value_counts))
        return (x * projection).sum(dim=1) / math.sqrt(self.projection_dim)
