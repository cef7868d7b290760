"""Offline FID/KID of a training run's checkpoints, over training (a validation run, not in CI).

    python benchmarks/fid_over_training.py --storage STORAGE --run NAME [--run NAME2 ...]
        --registry REGISTRY --reference DATASET --labeler LABELER [--every 2] [--count 2000]
        [--reference-count 5000] [--out DIR]

For each run and each of its complete checkpoints (every `--every`-th, and always the newest), with
the commands a user types: `ganray registry push --from-run STORAGE NAME --step N` (a registry
version per checkpoint), then `ganray eval` of that version against DATASET with the `classifier`
extractor (the encoder of the labeler version LABELER: no outside weights; the numbers are NOT
comparable to published FID). The newest checkpoint's evaluation also runs the memorization check.

Written to OUT: fid_over_training.json (per run, per checkpoint: step, images seen, when it was
written, version, FID, KID mean/std, precision, recall; memorization of the newest)
and fid_over_training.png (FID and KID against images seen, one line per run).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from _result import BenchmarkRun

GANRAY = [sys.executable, "-m", "ganray.cli"]
RESULT_NAME = "fid_over_training"


def ganray(*args: str) -> str:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(GANRAY + list(args), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ganray {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def checkpoints(storage: str, run: str) -> list[tuple[int, dict]]:
    """(step, meta.json) of every complete checkpoint, oldest first."""
    from ganray.train import checkpoint as ckpt

    return [(meta["step"], meta) for meta in (ckpt.read_meta(url) for url in ckpt.list_checkpoints(storage, run))]


def evaluate(args, run: str, step: int, out: Path, memorization: bool) -> dict:
    pushed = ganray("registry", "push", "--registry", args.registry, "--from-run", args.storage, run,
                    "--step", str(step))
    version = re.search(r" as (\S+) to ", pushed).group(1)
    output = out / f"{run}-step{step:08d}.json"
    settings = {"registry.url": args.registry, "eval.model": version, "eval.reference": args.reference,
                "eval.output": str(output), "eval.count": args.count, "eval.reference_count": args.reference_count,
                "eval.record_as": "offline_classifier", "eval.kid_subset_size": min(1000, args.count),
                "eval.extractor.name": "classifier", "eval.extractor.labeler": args.labeler,
                "eval.memorization.enabled": str(memorization).lower()}
    ganray("eval", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")])
    result = json.loads(output.read_text())
    return {"version": version, "result": str(output), **result["metrics"],
            **({"memorization": result["memorization"]} if memorization else {})}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_kid) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, points in results["runs"].items():
        x = [p["images_seen"] / 1000 for p in points]
        ax_fid.plot(x, [p["fid"] for p in points], "o-", label=run)
        ax_kid.errorbar(x, [p["kid_mean"] for p in points], yerr=[p["kid_std"] for p in points], fmt="o-", label=run)
    for ax, name in ((ax_fid, "FID"), (ax_kid, "KID (mean ± std over subsets)")):
        ax.set_xlabel("thousands of real images shown to D")
        ax.set_ylabel(f"{name}, classifier features")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"offline extractor (labeler {results['labeler']}'s encoder), {results['count']} generated vs "
                 f"{results['reference_count']} training images: not comparable to published FID", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="the runs' storage_path")
    parser.add_argument("--run", action="append", required=True, help="a run name (repeat for several)")
    parser.add_argument("--registry", required=True, help="registry to push the checkpoints to; holds the labeler")
    parser.add_argument("--reference", required=True, help="the imported training dataset")
    parser.add_argument("--labeler", required=True, help="labeler version whose encoder extracts the features")
    parser.add_argument("--every", type=int, default=1, help="evaluate every k-th checkpoint (and the newest)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--reference-count", type=int, default=5000)
    parser.add_argument("--out", default="fid-over-training")
    args = parser.parse_args()
    result = BenchmarkRun(RESULT_NAME)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results: dict = {"labeler": args.labeler, "count": args.count, "reference_count": args.reference_count,
                     "reference": args.reference, "runs": {}}
    for run in args.run:
        found = checkpoints(args.storage, run)
        if not found:
            raise SystemExit(f"run {run!r} has no complete checkpoint under {args.storage}")
        chosen = [c for i, c in enumerate(found) if i % args.every == 0 or i == len(found) - 1]
        points = []
        for step, meta in chosen:
            newest = step == found[-1][0]
            point = {"step": step, "images_seen": meta.get("images_seen"), "created_at": meta.get("created_at"),
                     **evaluate(args, run, step, out, memorization=newest)}
            points.append(point)
            print(f"{run} step {step}: FID {point['fid']:.2f}  KID {point['kid_mean']:.4f} ± {point['kid_std']:.4f}",
                  flush=True)
        results["runs"][run] = points
        (out / "fid_over_training.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "fid_over_training.png")
    result.settings = {"labeler": args.labeler, "count": args.count, "reference_count": args.reference_count,
                       "reference": args.reference, "every": args.every}
    result.note("FID/KID with the `classifier` extractor (the labeler's encoder): not comparable to published FID.")
    rows = []
    for run, points in results["runs"].items():
        result.figure(f"{run}: FID at the newest checkpoint (step {points[-1]['step']})", points[-1]["fid"])
        rows += [[run, p["step"], p.get("images_seen") or "-", p["fid"], p["kid_mean"], p["kid_std"]] for p in points]
    result.table("FID and KID over training", ["run", "step", "images seen", "FID", "KID mean", "KID std"], rows)
    result.write()
    print(f"results: {out / 'fid_over_training.json'}, chart: {out / 'fid_over_training.png'}")


if __name__ == "__main__":
    main()
