"""The price of balancing and labeling: balanced faces/s ÷ unbalanced faces/s with the same model.

    python benchmarks/balanced_generation.py --registry REGISTRY --model VERSION --labeler LABELER
        [--count 20000] [--strata gender,race,age_group] [--work DIR] [--max-attempts 10]

Three `ganray generate` jobs (the command a user types; each starts its own local Ray), same
conditional model, same count, ψ, batch size and shard size, Parquet to local disk:

1. **unbalanced**: no labeler, no gate, no quotas (conditions drawn from each face's seed);
2. **labeled**: the classifier labeler and the face-quality gate on every face, no quotas;
3. **balanced**: the closed loop: an exact uniform quota per stratum of `--strata`, each candidate
   verified by the labeler and the gate, rejected candidates replaced by fresh seeds.

Printed, and written to results.json in the work folder: each job's wall time and faces/s (faces
written ÷ wall time, start-up included, as a user sees it), and the ratios labeled ÷ unbalanced and
balanced ÷ unbalanced. The balanced job's output keeps its balance_report.json/png (per-stratum
counts, acceptance, labeler agreement, rejects); the unbalanced job's report shows the spread the
quotas remove. One run on one machine; faces/s depend on what else the machine runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GANRAY = [sys.executable, "-m", "ganray.cli"]


def job_config(args, output: Path, kind: str) -> dict:
    generate = {"model": args.model, "output": str(output), "count": args.count, "format": "parquet",
                "shard_size": args.shard_size, "psi": args.psi, "batch_size": args.batch_size,
                "progress_interval_s": 30}
    labeler = {"name": "classifier", "model": args.labeler}
    quality = {"detector": "haar"}
    if kind in ("labeled", "balanced"):
        generate["labeler"] = labeler
        generate["quality"] = quality
    if kind == "balanced":
        generate["closed_loop"] = {"strata": args.strata, "target": "uniform",
                                   "max_attempts_per_face": args.max_attempts,
                                   "on_budget_exhausted": "partial", "min_confidence": args.min_confidence}
    return {"registry": {"url": args.registry}, "generate": generate}


def run_job(args, work: Path, kind: str, env: dict[str, str]) -> dict:
    output = work / kind
    shutil.rmtree(output, ignore_errors=True)
    config = work / f"{kind}.yaml"
    config.write_text(yaml.safe_dump(job_config(args, output, kind), sort_keys=False))
    started = time.perf_counter()
    with open(work / f"{kind}.log", "wb") as log:
        code = subprocess.run(GANRAY + ["generate", "--config", str(config)], env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the {kind} job failed (exit {code}); see {work / f'{kind}.log'}")
    report = json.loads((output / "balance_report.json").read_text())
    written = report["total"]["count"]
    return {"wall_s": round(wall, 1), "faces": written, "faces_per_s": round(written / wall, 1),
            "output": str(output), "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True, help="registry holding the model and the labeler")
    parser.add_argument("--model", required=True, help="a conditional generator version (id or alias)")
    parser.add_argument("--labeler", required=True, help="a classifier labeler version (id or alias)")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--strata", type=lambda s: s.split(","), default=["gender", "race", "age_group"])
    parser.add_argument("--max-attempts", type=float, default=10.0, help="closed_loop.max_attempts_per_face")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="closed_loop.min_confidence")
    parser.add_argument("--psi", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--jobs", default="unbalanced,labeled,balanced", help="which of the three jobs to run")
    parser.add_argument("--work", default=None, help="folder for outputs and logs (default: a temp folder)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="ganray-balance-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)

    results: dict = {"machine": f"{os.cpu_count()} CPUs", "count": args.count, "strata": args.strata,
                     "model": args.model, "labeler": args.labeler}
    for kind in args.jobs.split(","):
        results[kind] = run_job(args, work, kind, env)
        print(f"{kind:>10}: {results[kind]['faces']} faces in {results[kind]['wall_s']} s = "
              f"{results[kind]['faces_per_s']} faces/s", flush=True)
    base = results.get("unbalanced", {}).get("faces_per_s")
    for kind in ("labeled", "balanced"):
        if base and kind in results:
            results[f"{kind}_over_unbalanced"] = round(results[kind]["faces_per_s"] / base, 3)
            print(f"{kind} ÷ unbalanced faces/s: {results[f'{kind}_over_unbalanced']}")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
