"""Training-time augmentation of the attribute classifier's batches: a small random translation and
a brightness/contrast change per image.

The random numbers are a pure function of (seed, step, rank), never of an RNG that runs along, so a
resumed run draws exactly what an uninterrupted one drew at the same step. Flips are the sampler's
(ganray.data.dataset.EpochSampler); this adds what the sampler does not do.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_AUGMENT_STREAM = 2  # apart from the sampler's order (0) and flip (1) streams


def augment_batch(x: torch.Tensor, *, seed: int, step: int, rank: int, shift: float, color: float) -> torch.Tensor:
    """Images (B, 3, R, R) in [-1, 1] -> the same shape, each moved by up to `shift` x R pixels
    (edges repeated) and its contrast and brightness changed by up to `color`."""
    if shift <= 0 and color <= 0:
        return x
    n, _, side, _ = x.shape
    rng = np.random.default_rng([seed, _AUGMENT_STREAM, step, rank])
    pad = int(round(shift * side))
    if pad > 0:
        offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        x = torch.stack([padded[i, :, dy:dy + side, dx:dx + side] for i, (dy, dx) in enumerate(offsets.tolist())])
    if color > 0:
        contrast = torch.from_numpy(rng.uniform(1 - color, 1 + color, size=(n, 1, 1, 1)).astype(np.float32))
        brightness = torch.from_numpy(rng.uniform(-color, color, size=(n, 1, 1, 1)).astype(np.float32))
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast.to(x.device) + mean + brightness.to(x.device)).clamp(-1, 1)
    return x.contiguous()
