"""Training throughput: the Ray Train DDP job vs a plain single-process PyTorch loop, same machine, same run.

    .venv/bin/python benchmarks/train_throughput.py            # DCGAN-64 defaults, 2 workers x 1 thread
    .venv/bin/python benchmarks/train_throughput.py --steps 40 # shorter

Both sides run the same GANSteps (one D update + one G update per step, bf16 autocast), the same
model, the same global batch and the same total number of threads (Ray: 2 workers x 1 thread; plain:
1 process x 2 threads), on the built-in faces. Images/s are steady-state: the first `--warmup`
steps are left out of both. The plain loop runs just before and just after the Ray Train job and
the two are averaged: on a shared machine the free CPU drifts over minutes. Prints the rates and the
ratio (goal >= 0.9).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganray.config import TrainJob, load_config  # noqa: E402
from ganray.data.dataset import to_training_batch  # noqa: E402
from ganray.data.synthetic import ATTRIBUTES, render_batch  # noqa: E402
from ganray.models import build_models  # noqa: E402
from ganray.train.steps import GANSteps  # noqa: E402

from _result import BenchmarkRun  # noqa: E402

RESULT_NAME = "train_throughput"


def make_job(args, storage: str) -> TrainJob:
    return load_config(TrainJob, REPO / "configs" / "demo.yaml", [
        f"run.storage_path={storage}", "run.name=bench",
        f"data.resolution={args.resolution}", f"data.synthetic.count={args.images}",
        f"model.g_width={args.width}", f"model.d_width={args.width}", "model.z_dim=100",
        f"model.conditional={str(args.conditional).lower()}",
        f"train.batch_size={args.batch}", "train.num_workers=2", "train.threads_per_worker=1",
        f"train.max_steps={args.warmup + args.steps}", f"train.log_every={args.warmup}",
        f"train.checkpoint_every={args.warmup + args.steps}", f"train.precision={args.precision}",
    ])


def plain_pytorch(job: TrainJob, args) -> float:
    """Images/s of one process with 2 threads running the same steps on in-memory batches."""
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(job.train.deterministic)  # as the Ray Train workers do
    torch.manual_seed(0)
    attributes = ATTRIBUTES if job.model.conditional else None
    G, D = build_models(job.model, job.data.resolution, attributes)
    G_ema = build_models(job.model, job.data.resolution, attributes)[0].eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    steps = GANSteps(G, D, G_ema, job.train, job.model.z_dim, torch.device("cpu"))
    data = render_batch(np.arange(args.images), job.data.resolution, 0)
    flips = np.random.default_rng(0)
    batch = job.train.batch_size
    n_batches = args.images // batch

    def one_step(i: int) -> None:
        rows = slice((i % n_batches) * batch, (i % n_batches + 1) * batch)
        real, labels = to_training_batch({k: v[rows] for k, v in data.items()}, flips.random(batch) < 0.5)
        labels = labels if job.model.conditional else None
        steps.discriminator_step(real, labels, d_index=i)  # schedules lazy R1 and ADA as the loop does
        steps.generator_step(batch, labels, i)

    for i in range(args.warmup):
        one_step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        one_step(args.warmup + i)
    return args.steps * batch / (time.perf_counter() - start)


def ray_train(job: TrainJob) -> float:
    """Steady-state images/s of the Ray Train job, from its own metrics (after the warm-up window)."""
    from ganray.train.trainer import run_training

    outcome = run_training(job)
    rows = [json.loads(line) for line in Path(outcome.metrics_jsonl.replace("file://", "")).read_text().splitlines()]
    rows = [r for r in rows if "images_per_s" in r]
    steady = rows[1:]  # the first window holds the warm-up steps
    steps = [rows[0]["step"]] + [r["step"] for r in steady]
    # Weighted by the steps in each window: total images / total time over the steady part.
    seconds = sum((steps[i + 1] - steps[i]) * job.train.batch_size / r["images_per_s"] for i, r in enumerate(steady))
    return (steps[-1] - steps[0]) * job.train.batch_size / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--width", type=int, default=64, help="g_width = d_width (64 = classic DCGAN)")
    p.add_argument("--batch", type=int, default=128, help="global batch (128 as in the DCGAN paper)")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--images", type=int, default=2048, help="built-in faces in the dataset")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--conditional", action="store_true")
    args = p.parse_args()
    defaults = {a.dest: a.default for a in p._actions if a.dest != "help"}
    run = BenchmarkRun(RESULT_NAME, mode="full" if vars(args) == defaults else "custom")
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

    with tempfile.TemporaryDirectory() as storage:
        job = make_job(args, storage)
        plain_before = plain_pytorch(job, args)
        print(f"plain PyTorch (1 process x 2 threads): {plain_before:8.1f} images/s", flush=True)
        ray_rate = ray_train(job)
        plain_after = plain_pytorch(job, args)
        print(f"plain PyTorch again, after Ray Train:  {plain_after:8.1f} images/s", flush=True)
    plain = (plain_before + plain_after) / 2
    print()
    print(f"model: DCGAN-{args.resolution} width {args.width}, global batch {args.batch}, {args.precision}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'setup':40s} {'images/s':>10s}")
    print(f"{'plain PyTorch, 1 process x 2 threads':40s} {plain:10.1f}  (before {plain_before:.1f}, "
          f"after {plain_after:.1f})")
    print(f"{'Ray Train DDP, 2 workers x 1 thread':40s} {ray_rate:10.1f}")
    print(f"ratio Ray Train / plain: {ray_rate / plain:.2f}  (goal >= 0.9)")
    run.settings = {k: v for k, v in vars(args).items()}
    run.note(f"DCGAN-{args.resolution} width {args.width}, global batch {args.batch}, {args.precision} autocast, "
             f"{args.steps} timed steps after {args.warmup} warm-up; the same GANSteps and total threads on both sides; "
             "the plain loop's rate is the mean of its runs just before and just after the Ray Train job.")
    run.figure("Ray Train ÷ plain PyTorch", ray_rate / plain, note="goal >= 0.9")
    run.figure("Ray Train DDP, 2 workers x 1 thread", ray_rate, "images/s")
    run.figure("plain PyTorch, 1 process x 2 threads", plain, "images/s",
               f"before {plain_before:.1f}, after {plain_after:.1f}")
    run.write()


if __name__ == "__main__":
    main()
