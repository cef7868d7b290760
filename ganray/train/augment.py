"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data").

D sees real and generated images only through `AdaptiveAugment`: each image gets each transform of
the pipeline with probability p. The transforms are differentiable in the images, so G's gradient
flows through them, and with p < 1 the augmentations do not "leak" into G's images. p is steered
by the overfitting heuristic r_t = E[sign(D(augmented real))]: every `ada_interval` D minibatches
p moves by sign(r_t - ada_target) * (global batch * ada_interval) / (ada_kimg * 1000), clamped to
[0, 1], so that it can go from 0 to 1 in ada_kimg thousand images.

Pipelines (`train.augment`), in the order the transforms are applied:
    blit   x-flip, 90-degree rotations, integer translation (up to 1/8 of the image)
    geom   isotropic scaling (2^N(0, 0.2^2)), arbitrary rotation (uniform angle)
    color  brightness (+N(0, 0.2^2)), contrast (x 2^N(0, 0.5^2)), saturation (x 2^N(0, 1))
    bgc    blit + geom + color
NVlabs' "bgc" also has anisotropic scaling, fractional translation, luma flip and hue rotation.

Geometric transforms are composed into one matrix per image and resampled once, bilinearly, with
mirrored borders, written with `gather` (deterministic on CPU and CUDA, where grid_sample's
backward is not). Pixel coordinates are kept exact for the "blit" transforms, so they move pixels
without interpolating; an image that drew no transform at all is passed through unchanged (bitwise).

Randomness: every draw comes from torch's default generator on the images' device: the per-rank RNG
that training checkpoints save, so a resumed run augments exactly as an uninterrupted one. The
number of draws does not depend on p (draws are made for every image and every transform).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

PIPELINES: dict[str, tuple[str, ...]] = {
    "blit": ("xflip", "rotate90", "translate"),
    "geom": ("scale", "rotate"),
    "color": ("brightness", "contrast", "saturation"),
    "bgc": ("xflip", "rotate90", "translate", "scale", "rotate", "brightness", "contrast", "saturation"),
}
GEOMETRIC = ("xflip", "rotate90", "translate", "scale", "rotate")

# Strengths, as NVlabs' defaults.
TRANSLATE_MAX = 0.125  # integer translation: uniform in +-this fraction of the image size
SCALE_STD = 0.2        # isotropic scale 2^N(0, SCALE_STD^2)
BRIGHTNESS_STD = 0.2   # added to [-1, 1] images
CONTRAST_STD = 0.5     # scale about 0 by 2^N(0, CONTRAST_STD^2)
SATURATION_STD = 1.0   # chroma scaled by 2^N(0, SATURATION_STD^2)


def _geometry(batch: int, size: int, transforms: tuple[str, ...], p: float | Tensor,
              device: torch.device) -> Tensor:
    """(B, 2, 3) matrices taking an output pixel's offset from the image centre to its source
    position (x, y) in pixel units, offset from the centre. Identity where no transform was drawn."""
    matrix = torch.eye(3, device=device).repeat(batch, 1, 1)

    def chosen() -> Tensor:
        return torch.rand(batch, device=device) < p

    def compose(m: Tensor, applied: Tensor) -> None:
        nonlocal matrix
        matrix = torch.where(applied[:, None, None], m @ matrix, matrix)

    def linear(a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor | None = None, ty: Tensor | None = None):
        zero = torch.zeros_like(a)
        tx, ty = (zero if tx is None else tx), (zero if ty is None else ty)
        one = torch.ones_like(a)
        return torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1),
                            torch.stack([zero, zero, one], 1)], 1)

    one = torch.ones(batch, device=device)
    zero = torch.zeros(batch, device=device)
    if "xflip" in transforms:
        compose(linear(-one, zero, zero, one), chosen())
    if "rotate90" in transforms:
        applied = chosen()
        quarter = torch.randint(0, 4, (batch,), device=device)
        # Exact cos/sin of multiples of 90 degrees (no rounding: pixels move without interpolation).
        cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device)[quarter]
        sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device)[quarter]
        compose(linear(cos, -sin, sin, cos), applied)
    if "translate" in transforms:
        applied = chosen()
        shift = ((torch.rand(batch, 2, device=device) * 2 - 1) * TRANSLATE_MAX * size).round()
        compose(linear(one, zero, zero, one, shift[:, 0], shift[:, 1]), applied)
    if "scale" in transforms:
        applied = chosen()
        s = torch.exp2(torch.randn(batch, device=device) * SCALE_STD)
        compose(linear(s, zero, zero, s), applied)
    if "rotate" in transforms:
        applied = chosen()
        angle = (torch.rand(batch, device=device) * 2 - 1) * math.pi
        cos, sin = angle.cos(), angle.sin()
        compose(linear(cos, -sin, sin, cos), applied)
    return matrix[:, :2]


def _mirror(index: Tensor, size: int) -> Tensor:
    """Integer pixel indices reflected into [0, size): ... 1 0 | 0 1 ... size-1 | size-1 size-2 ..."""
    index = index.remainder(2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def resample(images: Tensor, matrix: Tensor) -> Tensor:
    """images (B, C, H, W) sampled at matrix @ (each output pixel's offset from the centre),
    bilinearly, with mirrored borders. Differentiable in `images` (gather's backward)."""
    b, c, h, w = images.shape
    device = images.device
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2,
                            torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2, indexing="ij")
    offsets = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, device=device)])  # (3, HW)
    source = matrix.float() @ offsets  # (B, 2, HW): source offsets from the centre
    x = source[:, 0] + (w - 1) / 2
    y = source[:, 1] + (h - 1) / 2
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0).to(images.dtype), (y - y0).to(images.dtype)
    x0, y0 = x0.long(), y0.long()
    flat = images.reshape(b, c, h * w)

    def tap(yi: Tensor, xi: Tensor) -> Tensor:
        index = (_mirror(yi, h) * w + _mirror(xi, w))[:, None, :].expand(b, c, h * w)
        return flat.gather(2, index)

    fx, fy = fx[:, None, :], fy[:, None, :]
    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy).reshape(b, c, h, w)


def _color(images: Tensor, transforms: tuple[str, ...], p: float | Tensor) -> tuple[Tensor, Tensor]:
    """(images with the colour transforms, (B,) which images drew at least one)."""
    batch, device = images.shape[0], images.device
    touched = torch.zeros(batch, dtype=torch.bool, device=device)

    def chosen() -> Tensor:
        nonlocal touched
        applied = torch.rand(batch, device=device) < p
        touched = touched | applied
        return applied[:, None, None, None]

    x = images
    if "brightness" in transforms:
        applied = chosen()
        x = torch.where(applied, x + (torch.randn(batch, device=device) * BRIGHTNESS_STD)[:, None, None, None], x)
    if "contrast" in transforms:
        applied = chosen()
        x = torch.where(applied, x * torch.exp2(torch.randn(batch, device=device) * CONTRAST_STD)[:, None, None, None],
                        x)
    if "saturation" in transforms:
        applied = chosen()
        gray = x.mean(dim=1, keepdim=True)  # the luma axis (1, 1, 1) / sqrt(3), as NVlabs'
        factor = torch.exp2(torch.randn(batch, device=device) * SATURATION_STD)[:, None, None, None]
        x = torch.where(applied, gray + (x - gray) * factor, x)
    return x, touched


def augment(images: Tensor, pipeline: str, p: float | Tensor) -> Tensor:
    """Each image of (B, C, H, W) gets each transform of `pipeline` with probability p (a number,
    or a 0-dim tensor on the images' device)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown augmentation pipeline {pipeline!r}; choose one of {list(PIPELINES)}")
    transforms = PIPELINES[pipeline]
    # Outside autocast: pixel coordinates in bf16 would round (D's autocast region encloses this).
    with torch.autocast(images.device.type, enabled=False):
        return _augment(images, transforms, p)


def _augment(images: Tensor, transforms: tuple[str, ...], p: float | Tensor) -> Tensor:
    x = images
    if any(t in GEOMETRIC for t in transforms):
        matrix = _geometry(images.shape[0], images.shape[-1], transforms, p, images.device)
        identity = (matrix == torch.eye(3, device=images.device)[:2]).flatten(1).all(dim=1)
        x = torch.where(identity[:, None, None, None], x, resample(x, matrix))
    x, _ = _color(x, transforms, p)
    return x


class AdaptiveAugment:
    """The augmentation pipeline, its probability p and the r_t statistics that steer p.

    State (saved in checkpoints, `state_dict`): p; the sum of sign(D(real)) and the number of
    logits since p was last adjusted (totals over all ranks); the last r_t. All ranks hold the same p.
    p, r_t and the sign sum live on the training device and are adjusted there: a training step
    never waits for the GPU on their account; reading `p`, `rt` or `sign_sum` does (reports only).
    """

    def __init__(self, pipeline: str, p: float, target: float | None, interval: int, kimg: float,
                 global_batch: int, device: torch.device | str = "cpu"):
        if pipeline != "none" and pipeline not in PIPELINES:
            raise ValueError(f"unknown augmentation pipeline {pipeline!r}; choose none or one of {list(PIPELINES)}")
        self.pipeline, self.target, self.device = pipeline, target, torch.device(device)
        self.interval, self.kimg, self.global_batch = interval, kimg, global_batch
        self.p = p
        # This rank's share since the last adjustment (count: logits, known on the host).
        self._sign_sum, self.count, self._rt = self._scalar(0.0), 0, None

    def _scalar(self, value: float) -> Tensor:
        # torch.full fills on the device: no host-to-device copy (which would wait for the GPU).
        return torch.full((), float(value), dtype=torch.float64, device=self.device)

    @property
    def p(self) -> float:
        return float(self._p)

    @p.setter
    def p(self, value: float) -> None:
        self._p = self._scalar(value)

    @property
    def rt(self) -> float | None:
        return None if self._rt is None else float(self._rt)

    @property
    def sign_sum(self) -> float:
        return float(self._sign_sum)

    @property
    def enabled(self) -> bool:
        return self.pipeline != "none"

    def __call__(self, images: Tensor) -> Tensor:
        return augment(images, self.pipeline, self._p) if self.enabled else images

    def accumulate(self, real_logits: Tensor) -> None:
        """Note D's logits on (augmented) real images of one minibatch."""
        if self.enabled and self.target is not None:
            # Sums of +-1 in float64: exact, as the host-side sums they replace.
            self._sign_sum = self._sign_sum + real_logits.detach().sign().sum(dtype=torch.float64)
            self.count += real_logits.numel()

    def end_minibatch(self, d_index: int, device: torch.device) -> None:
        """After D minibatch `d_index` (0-based): every `interval` of them, r_t over all ranks
        (a collective: every rank calls this in step) and one adjustment of p, on the device."""
        if not (self.enabled and self.target is not None) or (d_index + 1) % self.interval:
            return
        totals = torch.stack([self._sign_sum, self._scalar(self.count)]).to(device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)  # sums of +-1 in float64: exact in any order
        self._sign_sum, self.count = self._scalar(0.0), 0
        self._rt = totals[0] / totals[1].clamp(min=1.0)
        direction = torch.sign(self._rt - self.target)  # -1, 0 or 1
        step = self.global_batch * self.interval / (self.kimg * 1000)
        self._p = (self._p + direction * step).clamp(0.0, 1.0)

    def state_dict(self, pending: list[tuple[float, int]] | None = None) -> dict[str, Any]:
        """`pending`: every rank's (sign_sum, count) (gathered by the caller); default this rank's."""
        pending = pending if pending is not None else [(self.sign_sum, self.count)]
        return {"p": self.p, "rt": self.rt, "sign_sum": sum(s for s, _ in pending), "count": sum(c for _, c in pending)}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """The totals go to rank 0 (only their sum over ranks is ever used), whatever the worker count."""
        self.p = float(state["p"])
        self._rt = None if state["rt"] is None else self._scalar(state["rt"])
        sign_sum, self.count = (float(state["sign_sum"]), int(state["count"])) if rank == 0 else (0.0, 0)
        self._sign_sum = self._scalar(sign_sum)
