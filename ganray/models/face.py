"""The face for (model version, seed, psi, conditions): one definition, shared by the bulk job and Serve.

Every step is a function of one face's inputs only, never of the batch it is rendered in:

- latent: z = randn(z_dim) from a torch.Generator seeded with the face's seed (one per face);
- truncation: z' = mean + psi * (z - mean), towards the generator's mean latent (the prior's
  mean, 0, for DCGAN's N(0, I) z; a model that knows a better mean, e.g. the average output of a
  mapping network, exposes it as a buffer named `latent_mean`);
- labels: one value index per conditioned attribute; an attribute left open is drawn from the seed;
- G(z', labels) in eval mode (BatchNorm uses its running statistics, not the batch's) under
  autocast (bf16 by default), then uint8 = round((x + 1) * 127.5) clamped to [0, 255].

With these, a face's pixels do not depend on batch size, position in the batch or thread count
(checked in tests/test_render.py), so any worker renders the same bytes for the same face.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16", "fp16")  # the values of ganray.config.Precision


def latents_for_seeds(seeds: Sequence[int], z_dim: int) -> Tensor:
    """(B, z_dim) float32 latents: row i depends on seeds[i] alone."""
    if len(seeds) == 0:
        return torch.empty(0, z_dim)
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def latent_mean(generator: nn.Module) -> Tensor:
    """The latent that truncation pulls towards: the model's `latent_mean` buffer, else 0 (the prior's mean)."""
    buffers = dict(generator.named_buffers())
    if "latent_mean" in buffers:
        return buffers["latent_mean"].detach().float().cpu()
    return torch.zeros(generator.z_dim)


def truncate(z: Tensor, psi: float, mean: Tensor) -> Tensor:
    """The truncation trick: psi = 1 leaves z as drawn, psi < 1 trades variety for typical faces."""
    return mean + psi * (z - mean)


def _seeded_index(seed: int, name: str, n: int) -> int:
    # A hash, not a torch RNG stream: stable across platforms and independent of the latent draw.
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


def complete_conditions(condition_values: Mapping[str, Sequence[str]], conditions: Mapping[str, str] | None,
                        seed: int | None = None) -> dict[str, str]:
    """The full condition set for one face: every conditioned attribute (name -> values) -> a value.

    Attributes missing from `conditions` are drawn from `seed` (uniformly over the attribute's
    values); without a seed they are an error. Raises ValueError naming a bad name or value.
    """
    conditions = dict(conditions or {})
    if not condition_values:
        if conditions:
            raise ValueError(f"this model is unconditional: it takes no conditions (got {sorted(conditions)})")
        return {}
    for name, value in conditions.items():
        if name not in condition_values:
            raise ValueError(f"unknown attribute {name!r}: this model conditions on {list(condition_values)}")
        if str(value) not in condition_values[name]:
            raise ValueError(f"unknown value {value!r} for attribute {name!r}: "
                             f"expected one of {list(condition_values[name])}")
    resolved = {}
    for name, choices in condition_values.items():
        if name in conditions:
            resolved[name] = str(conditions[name])
        elif seed is not None:
            resolved[name] = choices[_seeded_index(seed, name, len(choices))]
        else:
            raise ValueError(f"a value for attribute {name!r} is required: one of {list(choices)}")
    return resolved


def resolve_conditions(generator: nn.Module, conditions: Mapping[str, str] | None,
                       seed: int | None = None) -> dict[str, str]:
    """complete_conditions for the attributes `generator` conditions on."""
    return complete_conditions(getattr(generator, "condition_values", {}), conditions, seed)


def labels_for_rows(generator: nn.Module, rows: Sequence[Mapping[str, str]]) -> Tensor | None:
    """(B, n_cond) value indices for fully resolved per-face conditions; None for an unconditional model."""
    values: dict[str, list[str]] = getattr(generator, "condition_values", {})
    if not values:
        return None
    return torch.tensor([[values[name].index(row[name]) for name in values] for row in rows], dtype=torch.long)


def labels_for_conditions(generator: nn.Module, conditions: Mapping[str, str] | None, batch: int,
                          seeds: Sequence[int] | None = None) -> Tensor | None:
    """(batch, n_cond) value indices for the same `conditions` on every face; None if unconditional.

    With `seeds` (one per face), attributes left out of `conditions` are drawn per seed; without,
    every attribute must be given. ValueError names a bad attribute or value.
    """
    if seeds is None:
        rows = [resolve_conditions(generator, conditions)] * batch
    else:
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
        rows = [resolve_conditions(generator, conditions, s) for s in seeds]
    return labels_for_rows(generator, rows)


def _device(generator: nn.Module) -> torch.device:
    return next(generator.parameters()).device


def use_deterministic_cuda() -> None:
    """Pin CUDA to bit-reproducible kernels: cuDNN deterministic, no autotuning, no TF32.

    cuDNN autotuning picks the fastest kernel per run (which can differ between runs and round
    differently), and TF32 rounds fp32 matmuls and convolutions to 10-bit mantissas. Process-wide,
    as torch's flags are; render-only processes (generate actors, Serve replicas) are what set them.
    """
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """Run the forward pass on one intra-op thread on CPU.

    With more threads, oneDNN may split the work of a batch differently for different batch sizes,
    and then a face's pixels depend on the batch it was rendered in: measured here with 2 threads,
    a DCGAN-64 face differed by one level between batches of 7 and 16 (3 of 20 random models in
    fp32, 1 of 20 in bf16; never with one thread). Byte-identical faces come first; more cores are
    used by more renderers (bulk job replicas, Serve replicas), not by more threads per forward pass.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render_faces(generator: nn.Module, seeds: Sequence[int], psi: float = 1.0, labels: Tensor | None = None,
                 precision: str = "bf16") -> np.ndarray:
    """uint8 images (B, H, W, 3) for `seeds`, with `labels` (B, n_cond) for a conditional model."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if generator.training:
        raise ValueError("the generator is in training mode: call .eval() (BatchNorm must use running statistics)")
    device = _device(generator)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a GPU: use 'bf16' or 'fp32' on CPU")
    if device.type == "cuda":
        use_deterministic_cuda()
    z = truncate(latents_for_seeds(seeds, generator.z_dim), psi, latent_mean(generator))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with (torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
          one_cpu_thread(device)):
        x = generator(z.to(device), None if labels is None else labels.to(device))
    pixels = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
