"""StyleGAN2's layers (ganray/models/stylegan2.py builds the networks from them).

Equalized learning rate: every weight and bias is stored as a N(0, 1)-scaled parameter (weights
N(0, 1/lr_mult^2), so that lr_mult slows a layer down) and multiplied at run time by
lr_mult / sqrt(fan_in) (weights) or lr_mult (biases): Adam's step is the same size for every layer.
Modulated convolutions use their raw N(0, 1) weights: demodulation normalises each output channel.

Up- and downsampling low-pass filter with `resample_filter` (separable, [1, 3, 3, 1] by default),
as NVlabs' upfirdn2d does, written here with `F.pad` and depthwise `F.conv2d`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)  # keeps unit second moment through leaky ReLU (He et al.)
SKIP_GAIN = math.sqrt(0.5)  # residual D: the two paths are summed with unit total variance
NORMALIZE_EPS = 1e-8


def _fp32(x: Tensor):
    """A region computed in float32 even under autocast (statistics, the RGB skip path, styles)."""
    return torch.autocast(x.device.type, enabled=False)


def _lrelu(x: Tensor, gain: float = 1.0, clamp: float | None = None) -> Tensor:
    x = F.leaky_relu(x, LRELU_SLOPE) * (LRELU_GAIN * gain)
    return x if clamp is None else x.clamp(-clamp * gain, clamp * gain)


def normalize_2nd_moment(x: Tensor) -> Tensor:
    """Each row scaled to unit mean square (z and the label embedding enter the mapping at one scale)."""
    return x * (x.square().mean(dim=1, keepdim=True) + NORMALIZE_EPS).rsqrt()


def _rowwise_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x @ weight.T + bias with each row computed on its own: BLAS picks its kernels by batch size,
    and their float32 results differ in the last bits, so a matmul would tie a face's styles (and
    so its pixels) to the batch it is rendered in. A broadcast multiply-and-sum does not."""
    return (x[:, None, :] * weight[None]).sum(-1) + bias


# Below this many multiply-adds per row, torch's CPU batched product runs a loop of its own instead
# of BLAS, which rounds otherwise than a one-row F.linear.
BLAS_BATCHED_MIN_PRODUCTS = 400


# Off the CPU, every mapping product has this many rows (the batch padded with zeros and split): one
# GEMM shape means one kernel, so a face's row never depends on the batch it is rendered in.
FIXED_ROWS = 64


def _linear_in_fixed_rows(x: Tensor, weight: Tensor, bias: Tensor, rows: int = FIXED_ROWS) -> Tensor:
    """x @ weight.T + bias in products of exactly `rows` rows (zero rows pad the last one)."""
    b = x.shape[0]
    pad = (-b) % rows
    padded = torch.cat([x, x.new_zeros(pad, x.shape[1])]) if pad else x
    return torch.cat([F.linear(chunk, weight, bias) for chunk in padded.split(rows)])[:b]


def _linear_as_single_rows(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x @ weight.T + bias, every row's bits independent of the other rows and of the batch size.

    On CPU in one call, each row the bits of F.linear on that row alone: a batched product of
    one-row matrices runs BLAS's one-row product for each (tests/test_stylegan2.py checks the bits);
    layers too small for BLAS go row by row. Elsewhere (GPU) in fixed-shape products of FIXED_ROWS rows.
    """
    b = x.shape[0]
    if x.device.type != "cpu":
        return _linear_in_fixed_rows(x, weight, bias) if b else F.linear(x, weight, bias)
    if b > 1 and weight.numel() >= BLAS_BATCHED_MIN_PRODUCTS:
        return torch.baddbmm(bias.expand(b, 1, -1), x[:, None, :], weight.t().expand(b, -1, -1)).squeeze(1)
    return torch.cat([F.linear(x[i:i + 1], weight, bias) for i in range(b)]) if b else F.linear(x, weight, bias)


# ---------------------------------------------------------------------------------------------
# Resampling: zero insertion / decimation with a separable FIR low-pass filter (upfirdn2d)


def make_filter(taps: list[int] | tuple[int, ...]) -> Tensor:
    """The 2-D filter (k, k): outer product of the taps, normalised to unit sum (unit DC gain)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def filter2d(x: Tensor, f: Tensor, pad0: int, pad1: int, gain: float = 1.0, stride: int = 1) -> Tensor:
    """Pad (pad0 before, pad1 after, on both axes; negative crops) and convolve every channel with f."""
    channels, k = x.shape[1], f.shape[0]
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    weight = (f * gain).flip([0, 1])[None, None].expand(channels, 1, k, k).to(x.dtype)
    return F.conv2d(x, weight, stride=stride, groups=channels)


def upsample2d(x: Tensor, f: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W): zeros between pixels, then the low-pass (gain 4 keeps the level)."""
    b, c, h, w = x.shape
    x = F.pad(x.reshape(b, c, h, 1, w, 1), [0, 1, 0, 0, 0, 1]).reshape(b, c, 2 * h, 2 * w)
    k = f.shape[0]
    return filter2d(x, f, (k + 1) // 2, (k - 2) // 2, gain=4.0)


def downsample2d(x: Tensor, f: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2): the low-pass, then every second pixel."""
    k = f.shape[0]
    return filter2d(x, f, (k - 1) // 2, (k - 2) // 2, stride=2)


# ---------------------------------------------------------------------------------------------
# Equalized-learning-rate layers


class EqualLinear(nn.Module):
    """A fully connected layer with equalized learning rate (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0, lr_mult: float = 1.0,
                 activation: bool = False, rowwise: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mult))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult
        self.activation = activation
        self.rowwise = rowwise  # batch-independent rows, in float32 (styles)

    def forward(self, x: Tensor, single_rows: bool = False) -> Tensor:
        """`single_rows`: each row exactly as in a batch of its own (rendering; see _linear_as_single_rows)."""
        weight, bias = self.weight * self.weight_gain, self.bias * self.bias_gain
        if self.rowwise:
            with _fp32(x):
                x = _rowwise_linear(x.float(), weight, bias)
        elif single_rows:
            x = _linear_as_single_rows(x, weight, bias)
        else:
            x = F.linear(x, weight, bias)
        return _lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """A conv layer (D) with equalized learning rate, optional 2x downsampling and leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: bool = True, down: bool = False, resample_filter: Tensor | None = None,
                 conv_clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.kernel_size, self.activation, self.down, self.conv_clamp = kernel_size, activation, down, conv_clamp
        if down:
            self.register_buffer("resample_filter", resample_filter.clone(), persistent=False)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        weight = self.weight * self.weight_gain
        if not self.down:
            x = F.conv2d(x, weight, self.bias, padding=self.kernel_size // 2)
        elif self.kernel_size == 1:
            x = F.conv2d(downsample2d(x, self.resample_filter), weight, self.bias)
        else:
            # Low-pass first (with the conv's own padding folded in), then a strided conv.
            k, pad = self.resample_filter.shape[0], self.kernel_size // 2
            x = filter2d(x, self.resample_filter, pad + (k - 1) // 2, pad + (k - 2) // 2)
            x = F.conv2d(x, weight, self.bias, stride=2)
        if self.activation:
            return _lrelu(x, gain, self.conv_clamp)
        x = x * gain
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp * gain, self.conv_clamp * gain)


def _label_codes(labels: Tensor, value_counts: list[int]) -> Tensor:
    """(B, n_cond) value indices -> (B, sum of value counts) concatenated one-hot codes, float32."""
    # Comparisons rather than F.one_hot, which reads the labels' range back to the host on CPU: these
    # read nothing back on any device (tests/test_train_gpu_paths.py counts such reads per step).
    codes = [labels[:, i, None] == torch.arange(n, device=labels.device) for i, n in enumerate(value_counts)]
    return torch.cat(codes, dim=1).float()


class MappingNetwork(nn.Module):
    """[normalised z, normalised label embedding] -> fully connected layers -> (B, out_dim), in float32.

    G maps z (and labels) to w; D maps labels alone (z_dim 0) to its projection vector.
    """

    def __init__(self, z_dim: int, label_dim: int, embed_dim: int, out_dim: int, num_layers: int, lr_mult: float,
                 hidden_dim: int | None = None):
        super().__init__()
        if z_dim == 0 and label_dim == 0:
            raise ValueError("a mapping network needs a latent or labels to map")
        self.z_dim = z_dim
        self.embed = EqualLinear(label_dim, embed_dim) if label_dim else None
        hidden = [hidden_dim or out_dim] * (num_layers - 1)  # NVlabs' layer_features (default: w_dim)
        features = [z_dim + (embed_dim if label_dim else 0)] + hidden + [out_dim]
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mult=lr_mult, activation=True)
                                    for a, b in zip(features, features[1:]))

    def forward(self, z: Tensor | None, label_codes: Tensor | None, single_rows: bool = False) -> Tensor:
        """`single_rows`: every row's output the same bits as when mapped in a batch of its own."""
        parts = []
        with _fp32(z if z is not None else label_codes):  # small, and w's average must be exact
            if self.z_dim:
                parts.append(normalize_2nd_moment(z.float()))
            if self.embed is not None:
                parts.append(normalize_2nd_moment(self.embed(label_codes, single_rows)))
            x = torch.cat(parts, dim=1)
            for layer in self.layers:
                x = layer(x, single_rows)
        return x


# ---------------------------------------------------------------------------------------------
# Synthesis layers


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool, up: bool = False,
                     padding: int = 0) -> Tensor:
    """conv(x, weight scaled per sample and input channel by `styles` (B, C_in)), then, if
    `demodulate`, each output channel scaled to unit expected second moment.

    Computed as scale -> conv -> scale (NVlabs' "non-fused" form): one shared weight serves the
    whole batch, so the conv is an ordinary batched conv on CPU and GPU alike. With `up`, a
    stride-2 transposed conv (the caller low-pass filters its output).
    """
    if demodulate:
        with _fp32(x):  # 1 / sqrt(sum over inputs and taps of (weight * style)^2), per sample and output
            energy = weight.float().square().sum(dim=[2, 3])  # (C_out, C_in)
            dcoefs = ((styles.float().square()[:, None, :] * energy[None]).sum(-1) + NORMALIZE_EPS).rsqrt()
    x = x * styles.to(x.dtype)[:, :, None, None]
    x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2) if up else F.conv2d(x, weight, padding=padding)
    if demodulate:
        x = x * dcoefs.to(x.dtype)[:, :, None, None]
    return x


class SynthesisLayer(nn.Module):
    """Modulated, demodulated 3x3 conv [with 2x upsampling], + noise * strength, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, w_index: int, *,
                 up: bool, resample_filter: Tensor, conv_clamp: float | None):
        super().__init__()
        self.resolution, self.w_index, self.up, self.conv_clamp = resolution, w_index, up, conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0, rowwise=True)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros(()))  # noise starts switched off, as in NVlabs'
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if up:
            self.register_buffer("resample_filter", resample_filter.clone(), persistent=False)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None) -> Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up, padding=1)
        if self.up:
            # The transposed conv gave 2H + 1 pixels; the low-pass (gain 4 for the inserted zeros)
            # trims them to 2H, centred as upsample-then-conv would be.
            k = self.resample_filter.shape[0]
            x = filter2d(x, self.resample_filter, (k + 1) // 2 - 1, (k - 2) // 2, gain=4.0)
        if noise is None:  # training: fresh noise; reproducible faces pass their own (ganray.models.face)
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
        x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        return _lrelu(x, clamp=self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, not demodulated, + bias: one resolution's skip output."""

    def __init__(self, in_channels: int, w_dim: int, w_index: int, conv_clamp: float | None):
        super().__init__()
        self.w_index, self.conv_clamp = w_index, conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0, rowwise=True)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)  # no demodulation: equalized lr via the styles
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)


# ---------------------------------------------------------------------------------------------
# Discriminator layers


def minibatch_stddev(x: Tensor, group_size: int, num_channels: int) -> Tensor:
    """x + `num_channels` feature maps holding the standard deviation of features across groups of
    samples (D sees the batch's variety and can penalise mode collapse). Groups are samples
    i, i + n, i + 2n, ... of the largest size <= group_size that divides the batch."""
    if num_channels == 0:
        return x
    b, c, h, w = x.shape
    group = next(g for g in range(min(group_size, b), 0, -1) if b % g == 0)
    with _fp32(x):
        y = x.float().reshape(group, -1, num_channels, c // num_channels, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)           # variance over the group
        y = (y + NORMALIZE_EPS).sqrt().mean(dim=[2, 3, 4])     # (n, num_channels): mean stddev
        y = y.reshape(-1, num_channels, 1, 1).repeat(group, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual: (3x3 conv, 3x3 conv with 2x downsampling) + 1x1 downsampling skip, sum scaled by sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int, resample_filter: Tensor, conv_clamp: float | None):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True, resample_filter=resample_filter,
                                 conv_clamp=conv_clamp)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True,
                                resample_filter=resample_filter)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x, gain=SKIP_GAIN) + self.conv1(self.conv0(x), gain=SKIP_GAIN)
