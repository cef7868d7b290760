"""The face for (model version, seed, psi, conditions): one definition, shared by the bulk job and Serve.

Every step is a function of one face's inputs only, never of the batch it is rendered in:

- latent: z = randn(z_dim) from a torch.Generator seeded with the face's seed (one per face);
- labels: one value index per conditioned attribute; an attribute left open is drawn from the seed;
- a generator with one latent input (DCGAN):
  truncation z' = mean + psi * (z - mean), towards the generator's mean latent (the prior's mean,
  0, for DCGAN's N(0, I) z; a model that knows a better mean exposes it as a buffer named
  `latent_mean`), then G(z', labels);
- a style-based generator (StyleGAN2: `map`, `synthesis`, `num_ws`, `noise_inputs`):
  ws = G.map(z, labels, psi, single_rows=True), each face's row independent of the batch,
  truncated in w space towards the average w G tracked for the face's conditions (its `latent_mean` buffers); noise inputs drawn from a
  torch.Generator seeded with a hash of (seed, "noise"), one per face; then G.synthesis(ws, noise).
  Style mixing (`mix_seeds`, `crossover`): layers from w index `crossover` on take the second
  seed's w and noise, so crossover 0 is the second seed's face and crossover num_ws the first's;
- G runs in eval mode (BatchNorm uses its running statistics, not the batch's; no style mixing or
  average tracking) under autocast (bf16 by default), then uint8 = round((x + 1) * 127.5) clamped
  to [0, 255].

With these, a face's pixels do not depend on batch size, position in the batch or thread count
(checked in tests/test_render.py and tests/test_stylegan2.py), so any worker renders the same
bytes for the same face.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16", "fp16")  # the autocast dtypes a face can be rendered in
AUTO = "auto"  # ganray.config.Precision's fourth value: the fastest of these for the device (resolve_precision)


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


CUDA_KERNEL_FLAGS = (
    (torch.backends.cudnn, "deterministic", True),
    (torch.backends.cudnn, "benchmark", False),
    (torch.backends.cudnn, "allow_tf32", False),
    (torch.backends.cuda.matmul, "allow_tf32", False),
)


@contextlib.contextmanager
def deterministic_cuda_kernels():
    """Bit-reproducible CUDA kernels for the duration of a render: cuDNN deterministic, no
    autotuning, no TF32; the process's own settings are restored afterwards.

    cuDNN autotuning picks the fastest kernel per run (which can differ between runs and round
    differently), and TF32 rounds fp32 matmuls and convolutions to 10-bit mantissas. The flags are
    process-wide, so they are scoped: a training rank that renders sample grids or evaluates must
    go on training with the kernels its own settings choose, like every other rank. On CPU they
    change nothing.
    """
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in CUDA_KERNEL_FLAGS]
    try:
        for owner, name, value in CUDA_KERNEL_FLAGS:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """Run the forward pass on one intra-op thread on CPU.

    With more threads, oneDNN may split the work of a batch differently for different batch sizes,
    and then a face's pixels can depend on the batch it was rendered in. Byte-identical faces come
    first; more cores are used by more renderers (bulk job and Serve replicas), not more threads.
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16), so that oneDNN's bf16
    kernels are its fast ones. Without (AVX2-only CPUs such as AMD EPYC Zen 3), bf16 convolutions and
    matmuls fall back to reference kernels, far slower than fp32 (benchmarks/generator_speed.py)."""
    return cpu_has_amx() or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later): oneDNN's bf16 kernels there are
    the ones a StyleGAN2's channels_last render form was found exact on (see prepare_for_render)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, device: str | torch.device, fp16: bool = True) -> str:
    """The autocast dtype that `precision` means on `device` ("cpu" or "cuda"; "cuda" means the current
    GPU): a concrete one as it is; "auto" the fastest one the device computes in hardware. On CPU,
    bf16 where the CPU computes it (AMX or AVX512-BF16), else fp32: oneDNN's reference bf16 kernels
    on an AVX2-only CPU made a DCGAN-64 face ~35x slower than fp32. On a GPU, bf16 where it has it
    (Ampere and later), else fp16 (fp32 with `fp16=False`, for code without fp16 loss scaling).

    It is a function of the device kind alone (ganray.generate.plan.render_environment names the
    CPU's bf16 kind and the GPU's compute capability), so renderers of one kind agree on it."""
    if precision != AUTO:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {(AUTO, *PRECISIONS)}, got {precision!r}")
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else ("fp16" if fp16 else "fp32")
    return "bf16" if cpu_has_native_bf16() else "fp32"


def sample_precision(train_precision: str, device: str | torch.device) -> str:
    """The precision a training run's own faces (sample grids, in-training evaluation) render in: fp32
    for an fp32 run, else bf16 (an fp16 run renders in bf16, which needs no loss scaling); "auto" is
    resolved on `device` first."""
    return "fp32" if resolve_precision(train_precision, device) == "fp32" else "bf16"


def prepare_for_render(generator: nn.Module, precision: str) -> nn.Module:
    """The generator (in place) in the form that renders fastest in `precision`, for render-only
    processes (render_faces then refuses another precision on it).

    On CPU, a single-latent (DCGAN) generator goes to channels_last: oneDNN's convolutions then run
    on NHWC directly instead of reordering every activation to its blocked layout and back (the
    reorders were ~20 % of a DCGAN-64 forward pass), and BatchNorm runs its NHWC kernel. Then the
    model's own `to_render_form()`, where it has one (DCGAN: its first layer as a matrix product in
    bf16, the 4x4 -> 8x8 layer in tiles of side-by-side images, bf16 weight copies, in-place ReLU;
    see ganray/models/dcgan_render.py). A style-based generator goes to channels_last in bf16 only: there
    it gave the plain generator's bytes in every model tried, in fp32 a pixel in 10^4 differed.
    The pixels are the same bytes as with the plain generator (tests/test_render.py and
    tests/test_stylegan2.py check it, batch by batch), so faces from a prepared and an unprepared
    generator are interchangeable. That was found, and holds, for oneDNN's native bf16 kernels (AMX,
    AVX512-BF16) and for fp32; on a CPU without native bf16 (AVX2 only: oneDNN's bf16 convolutions are
    reference kernels there, whose sums round differently with the layout and the width of a map) the
    rewrites gave other bytes, so in bf16 such a CPU keeps the plain generator. "auto" is resolved
    here (resolve_precision). Not for a model that is still trained or saved (safetensors wants
    contiguous weights; the render form's state_dict differs).
    """
    precision = resolve_precision(precision, _device(generator))
    if _device(generator).type == "cpu" and (precision != "bf16" or cpu_has_native_bf16()):
        if not is_style_based(generator):
            generator.to(memory_format=torch.channels_last)
            if hasattr(generator, "to_render_form"):
                generator.to_render_form()
        elif precision == "bf16" and cpu_has_amx():
            generator.to(memory_format=torch.channels_last)
    generator.prepared_for_precision = precision
    return generator


def is_style_based(generator: nn.Module) -> bool:
    """Whether `generator` is rendered in w space (ganray.models.stylegan2.Generator's interface)."""
    return all(hasattr(generator, name) for name in ("map", "synthesis", "num_ws", "noise_inputs"))


def noise_seed(seed: int) -> int:
    """The seed of one face's noise inputs: a hash of (seed, "noise"), apart from its latent's stream."""
    digest = hashlib.sha256(f"{int(seed)}/noise".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: any torch.Generator takes it


def noise_for_seeds(generator: nn.Module, seeds: Sequence[int]) -> list[Tensor]:
    """A style-based generator's noise inputs, one float32 (B, 1, r, r) tensor per layer in the order of
    `generator.noise_inputs`: row i is drawn, layer after layer, from a torch.Generator of seeds[i] alone."""
    per_face = []
    for seed in seeds:
        stream = torch.Generator().manual_seed(noise_seed(seed))
        per_face.append([torch.randn(1, r, r, generator=stream) for r, _ in generator.noise_inputs])
    return [torch.stack([face[i] for face in per_face]) if per_face else torch.empty(0, 1, r, r)
            for i, (r, _) in enumerate(generator.noise_inputs)]


def _styles_for_seeds(generator: nn.Module, seeds: Sequence[int], psi: float, labels: Tensor | None,
                      device: torch.device) -> Tensor:
    """ws (B, num_ws, w_dim) for `seeds`, truncated per face's conditions; one mapping call, each row as
    in a batch of its own (BLAS picks float32 matmul kernels by batch size, and they differ in the last bits)."""
    z = latents_for_seeds(seeds, generator.z_dim).to(device)
    return generator.map(z, labels, psi, single_rows=True)


def check_mixing(generator: nn.Module, seeds: Sequence[int], mix_seeds: Sequence[int] | None,
                 crossover: int | None) -> None:
    """ValueError, naming the problem, unless (mix_seeds, crossover) is a valid mix for `generator` (or
    both are None). Callers that render many requests in one batch check each request with it first."""
    if mix_seeds is None and crossover is None:
        return
    if not is_style_based(generator):
        raise ValueError("style mixing needs a style-based generator (model.arch stylegan2); "
                         "this one has a single latent input")
    if mix_seeds is None or crossover is None:
        raise ValueError("style mixing needs both mix_seeds and crossover")
    if len(mix_seeds) != len(seeds):
        raise ValueError(f"got {len(mix_seeds)} mix_seeds for {len(seeds)} seeds: one second seed per face")
    if isinstance(crossover, bool) or not isinstance(crossover, int) or not 0 <= crossover <= generator.num_ws:
        raise ValueError(f"crossover must be a layer index from 0 to {generator.num_ws} (this model's number "
                         f"of styles), got {crossover!r}")


def render_faces(generator: nn.Module, seeds: Sequence[int], psi: float = 1.0, labels: Tensor | None = None,
                 precision: str = AUTO, mix_seeds: Sequence[int] | None = None,
                 crossover: int | None = None) -> np.ndarray:
    """uint8 images (B, H, W, 3) for `seeds`, with `labels` (B, n_cond) for a conditional model.

    Style-based generators only: `mix_seeds` (one per face) and `crossover` (0..num_ws) mix styles:
    w indices >= crossover (and their layers' noise) come from the mix seed. "auto" is resolved for the
    generator's device (resolve_precision).
    """
    precision = resolve_precision(precision, _device(generator))
    if generator.training:
        raise ValueError("the generator is in training mode: call .eval() (BatchNorm must use running statistics)")
    prepared = getattr(generator, "prepared_for_precision", precision)
    if prepared != precision:
        raise ValueError(f"this generator was prepared to render in {prepared} (prepare_for_render), "
                         f"not {precision}: load it again to render in {precision}")
    check_mixing(generator, seeds, mix_seeds, crossover)
    device = _device(generator)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a GPU: use 'bf16' or 'fp32' on CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    labels = None if labels is None else labels.to(device)
    with torch.inference_mode(), one_cpu_thread(device), deterministic_cuda_kernels():
        if not is_style_based(generator):
            z = truncate(latents_for_seeds(seeds, generator.z_dim), psi, latent_mean(generator))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                x = generator(z.to(device), labels)
        elif len(seeds) == 0:
            x = torch.empty(0, 3, generator.resolution, generator.resolution)
        else:
            ws = _styles_for_seeds(generator, seeds, psi, labels, device)
            noise = noise_for_seeds(generator, seeds)
            if mix_seeds is not None:
                second = _styles_for_seeds(generator, mix_seeds, psi, labels, device)
                ws = torch.cat([ws[:, :crossover], second[:, crossover:]], dim=1)
                noise = [own if w_index < crossover else other for (_, w_index), own, other
                         in zip(generator.noise_inputs, noise, noise_for_seeds(generator, mix_seeds))]
            noise = [n.to(device) for n in noise]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if precision == "fp32" and device.type == "cpu":
                    # oneDNN's float32 convs take batch-size-dependent code paths even on one thread
                    # (a StyleGAN2-64 face differed by a level between batches of 7 and 16, and alone
                    # vs in a batch, each in 1 of 12 random models; bf16: in none): one face at a time.
                    x = torch.cat([generator.synthesis(ws[i:i + 1], [n[i:i + 1] for n in noise])
                                   for i in range(len(seeds))])
                else:
                    x = generator.synthesis(ws, noise)
    # round((x + 1) * 127.5) clamped, in float32: one new tensor, then in place (the same values).
    pixels = x.float().add(1).mul_(127.5).round_().clamp_(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
