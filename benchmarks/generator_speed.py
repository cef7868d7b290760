"""How much of the CPU does a generator's forward pass use? Faces/s and achieved FLOP/s per variant.

    .venv/bin/python benchmarks/generator_speed.py [--repeats 3] [--seconds 2] [--compile] [--quick]

Everything is measured in one run, on random weights (a forward pass costs the same whatever the
weights are):

- the machine's bf16 peak: the best timing of a 4096^3 bf16 matmul on all torch threads (AMX on
  Sapphire Rapids), and on one thread, over the whole run (before, in every round, after);
- for each architecture (dcgan, stylegan2 with ganray's default widths) at 64 and 256 px, each
  variant below: faces/s (best of `--repeats` rounds; in each round every variant runs one timed
  window of `--seconds` and the peak is measured again), achieved FLOP/s
  (faces/s x the generator's FLOPs per face) and that ÷ the bf16 peak on the same threads;
- for each variant, whether a face's bytes are independent of its batch: faces rendered in a batch
  of 64, of 7 and alone must be the same uint8 pixels, for 3 random models (`batch-independent`).

FLOPs per face are counted with torch.utils.flop_counter.FlopCounterMode on one forward pass of a
batch of 8 (it counts matmuls and convolutions, grouped ones by their real size, as 2 x MACs;
elementwise work is not counted), divided by 8.

The variants (`render` = ganray.models.face.render_faces, what the bulk job and Serve call):
  render bf16 / fp32               the product path: prepare_for_render (on CPU: DCGAN in channels_last
                                   and its render form, ganray/models/dcgan.py; StyleGAN2 in
                                   channels_last for bf16 on AMX), then render_faces
                                   (one thread) in bf16 or fp32 autocast
  render bf16, unprepared          render_faces on the generator as loaded (the path before)
  bf16 N threads                   autocast bf16, the bare forward pass on all torch threads
  bf16 1 thread                    the same on one thread
  bf16 channels_last (1 thread)    the model and input in channels_last memory format
  bf16 weights (1 thread)          the model cast to bfloat16 (no autocast casts per layer)
  bf16 compile 1 thread            torch.compile (inductor) of the channels_last model; --compile only:
                                   ~40 s to build per model on this machine
  batch 16 / 256                   the product path at other batch sizes (DCGAN-64)
"""
from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ganray.config import DCGANConfig, StyleGAN2Config
from ganray.models import build_generator
from ganray.models.face import (
    is_style_based,
    latents_for_seeds,
    noise_for_seeds,
    prepare_for_render,
    render_faces,
)

from _result import BenchmarkRun

RESULT_NAME = "generator_speed"


def matmul_peak(threads: int, repeats: int, n: int = 4096) -> float:
    """FLOP/s of the best of `repeats` n^3 bf16 matmuls on `threads` threads."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    with threads_set(threads):
        a @ b  # warm-up
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextlib.contextmanager
def threads_set(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_generator(arch: str, resolution: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = DCGANConfig() if arch == "dcgan" else StyleGAN2Config()
    return build_generator(cfg, resolution).eval()


def inputs(generator: torch.nn.Module, seeds: list[int]):
    """What the bare forward pass takes for `seeds` (ws and noise for a style-based G)."""
    if is_style_based(generator):
        with torch.no_grad():  # not inference_mode: FlopCounterMode's module hooks need normal tensors
            ws = torch.cat([generator.map(latents_for_seeds([s], generator.z_dim)) for s in seeds])
        return ws, noise_for_seeds(generator, seeds)
    return (latents_for_seeds(seeds, generator.z_dim),)


def forward_fn(generator: torch.nn.Module) -> Callable:
    return generator.synthesis if is_style_based(generator) else generator


def flops_per_face(generator: torch.nn.Module, batch: int = 8) -> float:
    args = inputs(generator, list(range(batch)))
    counter = FlopCounterMode(display=False)
    with counter:  # with autograd on: its module tracker fails on no_grad/inference tensors
        forward_fn(generator)(*args)
    return counter.get_total_flops() / batch


def to_pixels(x: torch.Tensor) -> np.ndarray:
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


class Variant:
    """A way to run the forward pass: `prepare(G) -> render(seeds) -> uint8 (B, 3, R, R)`."""

    def __init__(self, name: str, prepare: Callable[[torch.nn.Module], Callable[[list[int]], np.ndarray]],
                 threads: int):
        self.name, self.prepare, self.threads = name, prepare, threads


def bare(threads: int, autocast: bool = True, channels_last: bool = False, bf16_weights: bool = False,
         compile_: bool = False) -> Callable:
    def prepare(generator: torch.nn.Module) -> Callable[[list[int]], np.ndarray]:
        import copy

        g = copy.deepcopy(generator)
        if bf16_weights:
            g = g.to(torch.bfloat16)
        if channels_last:
            g = g.to(memory_format=torch.channels_last)
        fn = forward_fn(g)
        if compile_:
            fn = torch.compile(fn)

        def run(seeds: list[int]) -> np.ndarray:
            args = inputs(g, seeds)
            if bf16_weights:
                args = tuple(a.to(torch.bfloat16) if isinstance(a, torch.Tensor) else
                             [n.to(torch.bfloat16) for n in a] for a in args)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return to_pixels(fn(*args))
        return run
    return prepare


def product(precision: str, prepared: bool = True) -> Callable:
    """render_faces on the generator as the bulk job and Serve hold it (after prepare_for_render), or
    as loaded (`prepared=False`: the path before prepare_for_render existed)."""
    def prepare(generator: torch.nn.Module) -> Callable[[list[int]], np.ndarray]:
        import copy

        g = prepare_for_render(copy.deepcopy(generator), precision) if prepared else generator
        return lambda seeds: render_faces(g, seeds, precision=precision)
    return prepare


def variants(threads: int, with_compile: bool) -> list[Variant]:
    out = [
        Variant("render bf16 (bulk job and Serve)", product("bf16"), threads),
        Variant("render fp32 (bulk job and Serve)", product("fp32"), threads),
        Variant("render bf16, unprepared (before)", product("bf16", prepared=False), threads),
        Variant(f"bf16 {threads} threads", bare(threads), threads),
        Variant("bf16 1 thread", bare(1), 1),
        Variant(f"bf16 channels_last {threads} threads", bare(threads, channels_last=True), threads),
        Variant("bf16 channels_last 1 thread", bare(1, channels_last=True), 1),
        Variant("bf16 weights 1 thread", bare(1, autocast=False, bf16_weights=True), 1),
        Variant("fp32 1 thread", bare(1, autocast=False), 1),
    ]
    if with_compile:
        out.append(Variant("bf16 compile 1 thread", bare(1, channels_last=True, compile_=True), 1))
    return out


def faces_per_s(run: Callable[[list[int]], np.ndarray], batch: int, seconds: float, repeats: int) -> float:
    seeds = list(range(batch))
    run(seeds)  # warm-up: oneDNN builds its kernels on first use
    best = 0.0
    for _ in range(repeats):
        faces, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run(seeds)
            faces += batch
        best = max(best, faces / (time.perf_counter() - start))
    return best


def batch_independent(variant: Variant, arch: str, resolution: int, batch: int, models: int) -> bool:
    """The first faces of a batch of `batch`, rendered in a batch of 3 and one at a time: the same bytes?"""
    small = min(3, batch)
    with threads_set(variant.threads):
        for m in range(models):
            run = variant.prepare(make_generator(arch, resolution, seed=100 + m))
            big = run(list(range(batch)))[:small]
            few = run(list(range(small)))
            alone = np.concatenate([run([s]) for s in range(small)])
            if not (np.array_equal(big, few) and np.array_equal(big, alone)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    parser.add_argument("--quick", action="store_true", help="64 px only, no determinism checks")
    args = parser.parse_args()
    result = BenchmarkRun(RESULT_NAME, mode="quick" if args.quick else "full")

    threads = torch.get_num_threads()
    # Measured before, in every round and after the generators (the best of all): on a shared machine
    # the free CPU drifts, and a peak taken in a busy moment would flatter every ratio.
    peak = {threads: matmul_peak(threads, args.repeats), 1: matmul_peak(1, args.repeats)}
    print(f"torch {torch.__version__}, {threads} threads, cpu {torch.backends.cpu.get_cpu_capability()}")
    print(f"bf16 matmul peak (4096^3): {peak[threads] / 1e9:.0f} GFLOP/s on {threads} threads, "
          f"{peak[1] / 1e9:.0f} GFLOP/s on 1 thread")
    print("FLOPs counted with torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions, 2 x MACs)")
    print("batch-independent: 3 faces of a batch equal to the same faces in a batch of 3 and alone "
          "(3 random models for DCGAN-64, 1 otherwise)")
    print()
    rows = []
    for arch in ("dcgan", "stylegan2"):
        for resolution in ((64,) if args.quick else (64, 256)):
            generator = make_generator(arch, resolution)
            flops = flops_per_face(generator)
            # StyleGAN2 with the default widths costs ~75x DCGAN per face at 64 px: smaller batches,
            # and only the variants that could matter for it.
            batch = args.batch if arch == "dcgan" else max(args.batch // 8, 1)
            batch = batch if resolution == 64 else max(batch // 4, 1)
            runs = [(v, batch) for v in variants(threads, args.compile)
                    if arch == "dcgan" or "weights" not in v.name]
            if resolution == 64 and arch == "dcgan":
                runs += [(variants(threads, False)[0], 16), (variants(threads, False)[0], 256)]
            prepared = [(variant, b, variant.prepare(generator)) for variant, b in runs]
            best = [0.0] * len(prepared)
            # Rounds: every variant gets one timed window per round, and the peak is re-measured in
            # every round, so a busy moment on the shared machine costs each variant alike.
            for _ in range(args.repeats):
                for n in peak:
                    peak[n] = max(peak[n], matmul_peak(n, 1))
                for k, (variant, b, run) in enumerate(prepared):
                    # The product path chooses its own threads (one on CPU); the bare variants run on theirs.
                    with threads_set(variant.threads):
                        best[k] = max(best[k], faces_per_s(run, b, args.seconds, 1))
            for (variant, b, _), rate in zip(prepared, best):
                used_threads = 1 if variant.name.startswith("render") else variant.threads
                models = 3 if arch == "dcgan" and resolution == 64 else 1
                independent = "-" if args.quick else (
                    "yes" if batch_independent(variant, arch, resolution, b, models) else "NO")
                rows.append((arch, resolution, variant.name, b, flops, rate, rate * flops, used_threads, independent))
                print(f"  measured {arch}-{resolution} {variant.name} batch {b}: {rate:,.1f} faces/s", flush=True)
    for n in peak:
        peak[n] = max(peak[n], matmul_peak(n, args.repeats))
    print(f"bf16 matmul peak, best of every round: {peak[threads] / 1e9:.0f} GFLOP/s on {threads} threads, "
          f"{peak[1] / 1e9:.0f} GFLOP/s on 1 thread")
    print()
    print("| arch | px | variant | batch | GFLOP/face | faces/s | GFLOP/s | ÷ bf16 peak (same threads) | "
          "batch-independent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, resolution, name, b, flops, rate, achieved, used_threads, independent in rows:
        print(f"| {arch} | {resolution} | {name} | {b} | {flops / 1e9:.3f} | {rate:,.1f} | {achieved / 1e9:,.1f} | "
              f"{achieved / peak[used_threads]:.2f} ({used_threads} thr) | {independent} |")

    result.settings = {"threads": threads, "repeats": args.repeats, "seconds": args.seconds, "batch": args.batch,
                    "compile": args.compile, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    result.note("Random weights; faces/s are the best of the rounds; FLOPs counted with "
             "torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions, 2 x MACs). "
             "`render` rows are the product path (prepare_for_render, then render_faces on one thread).")
    result.figure(f"bf16 matmul peak (4096^3), {threads} threads", peak[threads] / 1e9, "GFLOP/s")
    result.figure("bf16 matmul peak (4096^3), 1 thread", peak[1] / 1e9, "GFLOP/s")
    by_name = {(a, r, n, b): rate for a, r, n, b, _, rate, *_ in rows}
    for arch in ("dcgan", "stylegan2"):
        prepared = by_name.get((arch, 64, "render bf16 (bulk job and Serve)", args.batch if arch == "dcgan"
                                else max(args.batch // 8, 1)))
        plain = by_name.get((arch, 64, "render bf16, unprepared (before)", args.batch if arch == "dcgan"
                             else max(args.batch // 8, 1)))
        if prepared and plain:
            result.figure(f"{arch}-64 render bf16: prepared ÷ unprepared", prepared / plain)
    result.table("Faces/s and achieved FLOP/s by variant", [
        "arch", "px", "variant", "batch", "GFLOP/face", "faces/s", "GFLOP/s", "÷ bf16 peak (same threads)",
        "threads", "batch-independent"], [
        [arch, resolution, name, b, flops / 1e9, rate, achieved / 1e9, achieved / peak[used_threads], used_threads,
         independent] for arch, resolution, name, b, flops, rate, achieved, used_threads, independent in rows])
    result.write()


if __name__ == "__main__":
    main()
