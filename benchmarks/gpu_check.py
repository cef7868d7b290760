"""GPU validation: the checks only a CUDA GPU can settle, in one short run (docs/gpu.md).

    .venv/bin/python benchmarks/gpu_check.py           # a CUDA GPU: writes benchmarks/results/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --cpu     # the same checks at toy sizes on CPU, in seconds

1. Render bytes: the same seeds rendered with batch sizes 1, 5 and 16 (fixed) and in batches of
   varying size give byte-identical faces (fp16 on cuda, fp32 on CPU), for a DCGAN and a StyleGAN2
   (whose mapping runs in fixed-shape products off the CPU).
2. DDP training: steps of a small DCGAN under DistributedDataParallel (one process; nccl on cuda,
   gloo on CPU) with fp16 autocast and a GradScaler (disabled on CPU); the same steps resumed from a
   checkpoint taken halfway (weights, optimizers, scaler, RNG) end in byte-identical weights.
3. Speed: faces/s on one GPU at 64 and 256 px (batch 64), and p95 latency of one 1024 px face.

Without a GPU and without --cpu it refuses: one line naming what is missing, exit status 2, no file.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import time
from pathlib import Path

RESULT_NAME = "gpu_check"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def render_bytes_check(device: str, precision: str, resolution: int, faces: int, arch: str = "dcgan") -> dict:
    import numpy as np
    import torch

    from ganray.config import DCGANConfig, StyleGAN2Config
    from ganray.models import build_generator
    from ganray.models.face import labels_for_conditions, prepare_for_render, render_faces

    torch.manual_seed(0)
    cfg = DCGANConfig(z_dim=32, g_width=16) if arch == "dcgan" else StyleGAN2Config(
        z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32)
    generator = build_generator(cfg, resolution, {}).to(device).eval()
    generator = prepare_for_render(generator, precision)
    seeds = list(range(faces))

    def render(batches: list[int]) -> bytes:
        parts, start = [], 0
        for size in batches:
            chunk = seeds[start:start + size]
            parts.append(render_faces(generator, chunk, 1.0, labels_for_conditions(generator, {}, len(chunk), seeds=chunk),
                                      precision))
            start += size
        return np.concatenate(parts).tobytes()

    reference = render([faces])
    fixed = {size: render([size] * (faces // size) + ([faces % size] if faces % size else [])) == reference
             for size in (1, 5, 16)}
    varying = [3, 1, 7, 2, faces]  # sizes that change from call to call; the last takes the rest
    sizes, left = [], faces
    for size in varying:
        sizes.append(min(size, left))
        left -= sizes[-1]
    return {"fixed": fixed, "varying": render([s for s in sizes if s]) == reference}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_steps(device: str, resolution: int, steps: int, resume_at: int | None, batch: int) -> bytes:
    """The generator's and discriminator's weights after `steps` steps, as bytes (resumed at `resume_at`)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ganray.config import DCGANConfig
    from ganray.models import build_discriminator, build_generator

    cfg = DCGANConfig(z_dim=32, g_width=16, d_width=16)
    on_gpu = device == "cuda"

    def fresh():
        torch.manual_seed(0)
        g = build_generator(cfg, resolution, {}).to(device)
        d = build_discriminator(cfg, resolution, {}).to(device)
        ids = [0] if on_gpu else None
        return (DDP(g, device_ids=ids), DDP(d, device_ids=ids), torch.optim.Adam(g.parameters(), 2e-4),
                torch.optim.Adam(d.parameters(), 2e-4), torch.amp.GradScaler(device, enabled=on_gpu))

    def step(g, d, g_opt, d_opt, scaler, k):
        gen = torch.Generator(device=device).manual_seed(1000 + k)  # the step's data and noise: from k alone
        real = torch.rand(batch, 3, resolution, resolution, generator=gen, device=device) * 2 - 1
        z = torch.randn(batch, cfg.z_dim, generator=gen, device=device)
        with torch.autocast(device, dtype=torch.float16, enabled=on_gpu):
            fake = g(z)
            d_loss = F.softplus(d(fake.detach())).mean() + F.softplus(-d(real)).mean()
        d_opt.zero_grad(set_to_none=True)
        scaler.scale(d_loss).backward()
        scaler.step(d_opt)
        with torch.autocast(device, dtype=torch.float16, enabled=on_gpu):
            g_loss = F.softplus(-d(g(z))).mean()
        g_opt.zero_grad(set_to_none=True)
        scaler.scale(g_loss).backward()
        scaler.step(g_opt)
        scaler.update()

    parts = fresh()
    for k in range(steps if resume_at is None else resume_at):
        step(*parts, k)
    if resume_at is not None:
        buf = io.BytesIO()
        g, d, g_opt, d_opt, scaler = parts
        torch.save({"g": g.module.state_dict(), "d": d.module.state_dict(), "g_opt": g_opt.state_dict(),
                    "d_opt": d_opt.state_dict(), "scaler": scaler.state_dict()}, buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        parts = fresh()
        g, d, g_opt, d_opt, scaler = parts
        g.module.load_state_dict(state["g"])
        d.module.load_state_dict(state["d"])
        g_opt.load_state_dict(state["g_opt"])
        d_opt.load_state_dict(state["d_opt"])
        scaler.load_state_dict(state["scaler"])
        for k in range(resume_at, steps):
            step(*parts, k)
    g, d = parts[0].module, parts[1].module
    return b"".join(t.detach().cpu().contiguous().numpy().tobytes()
                    for t in [*g.state_dict().values(), *d.state_dict().values()])


def ddp_check(device: str, resolution: int, steps: int, batch: int) -> dict:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        straight = ddp_steps(device, resolution, steps, None, batch)
        resumed = ddp_steps(device, resolution, steps, steps // 2, batch)
    finally:
        dist.destroy_process_group()
    return {"steps": steps, "resume_equal": straight == resumed}


def faces_per_s(device: str, precision: str, resolution: int, batch: int, repeats: int) -> float:
    import torch

    from ganray.config import DCGANConfig
    from ganray.models import build_generator
    from ganray.models.face import labels_for_conditions, prepare_for_render, render_faces

    generator = prepare_for_render(build_generator(DCGANConfig(), resolution, {}).to(device).eval(), precision)
    seeds = list(range(batch))
    labels = labels_for_conditions(generator, {}, batch, seeds=seeds)
    render_faces(generator, seeds, 1.0, labels, precision)  # warm-up: kernels chosen, memory allocated
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        render_faces(generator, seeds, 1.0, labels, precision)  # returns host bytes: synchronised
    return batch * repeats / (time.perf_counter() - started)


def p95_latency_ms(device: str, precision: str, resolution: int, requests: int) -> float:
    import numpy as np

    from ganray.config import DCGANConfig
    from ganray.models import build_generator
    from ganray.models.face import labels_for_conditions, prepare_for_render, render_faces

    generator = prepare_for_render(build_generator(DCGANConfig(), resolution, {}).to(device).eval(), precision)
    times = []
    for seed in range(requests + 1):
        started = time.perf_counter()
        render_faces(generator, [seed], 1.0, labels_for_conditions(generator, {}, 1, seeds=[seed]), precision)
        times.append(time.perf_counter() - started)
    return float(np.percentile(np.array(times[1:]) * 1000, 95))  # the first one warms up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run the checks on CPU at toy sizes (no speed figures)")
    parser.add_argument("--out-dir", default=None, help="folder for gpu_check.json (default benchmarks/results/)")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(f"gpu_check: needs a CUDA GPU (torch {torch.__version__}, torch.version.cuda "
              f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); "
              "--cpu runs the checks on CPU", file=sys.stderr)
        return 2
    from _result import BenchmarkRun

    device, precision = ("cpu", "fp32") if args.cpu else ("cuda", "fp16")
    run = BenchmarkRun(RESULT_NAME, mode="cpu" if args.cpu else "gpu")
    run.settings = {"device": device, "precision": precision}
    renders = {arch: render_bytes_check(device, precision, 32 if args.cpu else 64, 24 if args.cpu else 256, arch)
               for arch in ("dcgan", "stylegan2")}
    for arch, render in renders.items():
        run.figure(f"{arch}: render bytes equal, fixed batch sizes 1/5/16", str(all(render["fixed"].values())).lower())
        run.figure(f"{arch}: render bytes equal, varying batch sizes", str(render["varying"]).lower())
    renders_equal = all(r["varying"] and all(r["fixed"].values()) for r in renders.values())
    ddp = ddp_check(device, 32 if args.cpu else 64, 4 if args.cpu else 20, 4 if args.cpu else 64)
    run.figure(f"DDP {ddp['steps']} steps = {ddp['steps'] // 2} + resumed {ddp['steps'] - ddp['steps'] // 2}, "
               f"{'fp16 + GradScaler' if device == 'cuda' else 'fp32'}", str(ddp["resume_equal"]).lower())
    if not args.cpu:
        for resolution in (64, 256):
            run.figure(f"faces/s on one GPU, {resolution} px DCGAN, batch 64",
                       faces_per_s(device, precision, resolution, 64, 20), unit="faces/s")
        run.figure("p95 latency of one 1024 px face", p95_latency_ms(device, precision, 1024, 50), unit="ms")
    else:
        run.note("CPU mode: the checks at toy sizes; speed figures only on a GPU")
    if args.out_dir:
        run.write(Path(args.out_dir))
    else:
        run.write()
    passed = renders_equal and ddp["resume_equal"]
    print(f"gpu_check ({device}): render bytes {'equal' if renders_equal else 'DIFFER'}, "
          f"DDP resume {'equal' if ddp['resume_equal'] else 'DIFFERS'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
