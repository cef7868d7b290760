"""Drift monitor: false-alarm rate on repeated healthy samples, and the untrained model's ratio.

    .venv/bin/python benchmarks/monitor_false_alarms.py [--baselines 5] [--samples 60] [--steps 300]

Trains a small conditional DCGAN on the built-in faces (32 px, one Ray Train worker), then measures
what `ganray monitor` judges, with its default settings (count 256, pixels extractor at 16 px, noise
floor over 3 sets): for each of `--baselines` baselines (seed offsets 0, 10^6, ...), the ratio of
the FID between a fresh healthy sample and the baseline faces to the baseline's noise floor, for
`--samples` healthy samples (fresh random seeds, as each monitoring run draws them). The healthy
faces are rendered offline with `render_faces`: the face API returns exactly these bytes for the
same version, seeds, psi and conditions (tests/test_serve.py), so no HTTP is needed to count false
alarms. The same ratio for the model's untrained weights (a reload to an untrained model) shows
the margin on the other side.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from ganray.config import MonitorConfig, TrainJob, load_config
from ganray.lifecycle.baseline import Measurement, baseline, plan, render_plan
from ganray.lifecycle.monitor import sample_seeds
from ganray.models import build_generator
from ganray.registry import Registry
from ganray.train.publish import push_run
from ganray.train.trainer import run_training

from _result import REPO, BenchmarkRun

RESULT_NAME = "monitor_false_alarms"
THRESHOLDS = (1.25, 1.5, 2.0, 3.0)
MAX_SEED = 2**62


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", type=int, default=5)
    parser.add_argument("--samples", type=int, default=60, help="healthy samples per baseline")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the monitored model")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME, mode="full" if args.baselines * args.samples >= 300 else "quick")
    cfg = MonitorConfig(url="http://unused")  # the defaults `ganray monitor` runs with
    root = tempfile.mkdtemp(prefix="monitor-bench-")
    job = load_config(TrainJob, REPO / "configs" / "demo.yaml", [
        f"run.storage_path={root}/runs", "run.name=monitored", "data.resolution=32", "data.synthetic.count=2048",
        "model.g_width=16", "model.d_width=16", "model.z_dim=32", "train.num_workers=1", "train.batch_size=32",
        f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps}", "train.log_every=50",
        "train.sample_seeds=4"])
    started = time.monotonic()
    run_training(job)
    train_s = time.monotonic() - started
    registry = Registry(f"{root}/registry")
    version = push_run(registry, f"{root}/runs", "monitored")
    info = registry.show(version)
    torch.manual_seed(0)
    untrained = registry.push(build_generator(info.model, info.resolution, info.attributes).state_dict(),
                              info.model, info.resolution, info.attributes, {"untrained": True})
    generators = {v: registry.load_generator(v).generator for v in (version, untrained)}
    rows = plan(cfg.count, info.conditions)

    ratios, degraded, floors = [], [], []
    for b in range(args.baselines):
        offset = b * 1_000_000
        c = cfg.model_copy(update={"baseline_seed_offset": offset})
        measure = Measurement(c, registry)
        base, features, _ = baseline(measure, registry, version, "fp32")
        floor = base["metrics"]["noise_fid"]
        floors.append(floor)
        low = offset + (c.noise_sets + 1) * c.count
        for s in range(args.samples):
            seeds = sample_seeds(c.count, 1000 * b + s, low, MAX_SEED)
            faces = render_plan(generators[version], rows, seeds, c.psi, "fp32")
            ratios.append(measure.compare(features, measure.features(faces))["fid"] / floor)
        for s in range(3):
            seeds = sample_seeds(c.count, 10_000 + 1000 * b + s, low, MAX_SEED)
            faces = render_plan(generators[untrained], rows, seeds, c.psi, "fp32")
            degraded.append(measure.compare(features, measure.features(faces))["fid"] / floor)
        print(f"baseline {b}: noise floor {floor:.4g}; healthy ratio max so far {max(ratios):.3f}; "
              f"untrained {min(degraded):.3g}", flush=True)

    ratios_a = np.array(ratios)
    run.settings.update(count=cfg.count, noise_sets=cfg.noise_sets, extractor="pixels",
                        pixels_side=cfg.extractor.pixels_side, baselines=args.baselines, samples=args.samples,
                        steps=args.steps, resolution=32, condition_combinations_sampled=len(set(map(str, rows))))
    run.figure("false-alarm rate at max_fid_ratio 2.0 (the default)", float((ratios_a > 2.0).mean()),
               note=f"{len(ratios)} healthy samples over {args.baselines} baselines")
    run.figure("healthy ratio, median", float(np.median(ratios_a)))
    run.figure("healthy ratio, 99th percentile", float(np.quantile(ratios_a, 0.99)))
    run.figure("healthy ratio, max", float(ratios_a.max()))
    run.figure("untrained weights' ratio, min", float(min(degraded)), note=f"{len(degraded)} samples")
    run.figure("training of the monitored model", train_s, unit="s")
    run.table("false alarms by threshold (FID to the baseline faces / noise floor)",
              ["max_fid_ratio", "false alarms", "healthy samples", "rate", "untrained samples caught"],
              [[t, int((ratios_a > t).sum()), len(ratios), float((ratios_a > t).mean()),
                f"{sum(d > t for d in degraded)}/{len(degraded)}"] for t in THRESHOLDS])
    run.note(f"monitored model: conditional DCGAN (demo config at 32 px, widths 16, z 32), {args.steps} steps on "
             "2,048 built-in faces; untrained: the same architecture with random weights")
    run.note(f"noise floors of the baselines: {', '.join(f'{f:.3g}' for f in floors)}")
    run.write()


if __name__ == "__main__":
    main()
