"""The price of balancing and labeling: balanced faces/s ÷ unbalanced faces/s with the same model.

    python benchmarks/balanced_generation.py --registry REGISTRY --model VERSION --labeler LABELER
        [--count 20000] [--strata gender,race,age_group] [--exclude race=other] [--work DIR]
        [--max-attempts 10] [--reference DATASET]

Three `ganray generate` jobs (the command a user types; each starts its own local Ray), same
conditional model, same count, ψ, batch size and shard size, Parquet to local disk:

1. **unbalanced**: no labeler, no gate, no quotas (conditions drawn from each face's seed);
2. **labeled**: the classifier labeler and the face-quality gate on every face, no quotas;
3. **balanced**: the closed loop: an exact uniform quota per stratum of `--strata` (with `--exclude
   ATTR=VALUE`, equal quotas over the strata without that value and none for the rest), each
   candidate verified by the labeler and the gate, rejected candidates replaced by fresh seeds.

Printed, and written to results.json in the work folder: each job's wall time and faces/s (faces
written ÷ wall time, start-up included, as a user sees it), and the ratios labeled ÷ unbalanced and
balanced ÷ unbalanced. The balanced job's output keeps its balance_report.json/png (per-stratum
counts, acceptance, labeler agreement, rejects, and with the classifier labeler each stratum's
estimated true count and label precision: `balanced_true_balance` in results.json); the unbalanced
job's report shows the spread the quotas remove. One run on one machine; faces/s depend on what else the machine runs.

With `--reference DATASET` (the imported training set), distributions.png and the `distributions`
entry of results.json compare, per strata attribute, the share of each value: in the training set
(its import labels), in the labeled job's faces as the labeler sees them (no quotas), and in the
balanced job's faces (whose labels equal their stratum by construction). `--jobs none` only redraws
this from the outputs already in the work folder.
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

import pyarrow.parquet as pq
import yaml

from _result import BenchmarkRun

GANRAY = [sys.executable, "-m", "ganray.cli"]
RESULT_NAME = "balanced_generation"


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
        if args.exclude:
            generate["closed_loop"].update(target="proportions", proportions=uniform_without(args))
    return {"registry": {"url": args.registry}, "generate": generate}


def uniform_without(args) -> dict[str, float]:
    """Equal shares over the strata of `--strata` that hold none of the `--exclude` values (0 elsewhere),
    the attributes' values read from the reference dataset's manifest."""
    values = json.loads((Path(args.reference) / "manifest.json").read_text())["attributes"]
    excluded = {tuple(e.split("=", 1)) for e in args.exclude}
    strata = [[]]
    for a in args.strata:
        strata = [s + [v] for s in strata for v in values[a] if (a, v) not in excluded]
    return {"/".join(s): 1 / len(strata) for s in strata}


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


def label_shares(output: Path, attributes: list[str]) -> dict[str, dict[str, float]]:
    """Per attribute, the share of each labeler value among the output's faces."""
    table = pq.read_table(output / "data", columns=[f"label_{a}" for a in attributes])
    shares = {}
    for a in attributes:
        values = table.column(f"label_{a}").to_pylist()
        shares[a] = {v: values.count(v) / len(values) for v in sorted(set(values))}
    return shares


def distributions(args, work: Path) -> dict:
    manifest = json.loads((Path(args.reference) / "manifest.json").read_text())
    out: dict = {}
    for a in args.strata:
        hist = manifest["label_histograms"][a]
        total = sum(hist.values())
        out[a] = {"values": manifest["attributes"][a], "training_set": {v: n / total for v, n in hist.items()}}
    for kind in ("labeled", "balanced"):
        if (work / kind / "manifest.json").exists():
            for a, shares in label_shares(work / kind, args.strata).items():
                out[a][kind] = shares
    return out


def plot_distributions(dist: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("training_set", "training set (import labels)"), ("labeled", "no quotas (labeler's view)"),
              ("balanced", "closed loop (exact quotas)")]
    fig, axes = plt.subplots(len(dist), 1, figsize=(8, 2.6 * len(dist)))
    for ax, (attribute, d) in zip(axes if len(dist) > 1 else [axes], dist.items()):
        values = d["values"]
        present = [(k, label) for k, label in series if k in d]
        width = 0.8 / len(present)
        for i, (key, label) in enumerate(present):
            ax.bar([j + (i - (len(present) - 1) / 2) * width for j in range(len(values))],
                   [d[key].get(v, 0.0) for v in values], width, label=label)
        ax.set_xticks(range(len(values)), values, fontsize=8)
        ax.set_ylabel("share of faces")
        ax.set_title(attribute, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7) if len(dist) > 1 else axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True, help="registry holding the model and the labeler")
    parser.add_argument("--model", required=True, help="a conditional generator version (id or alias)")
    parser.add_argument("--labeler", required=True, help="a classifier labeler version (id or alias)")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--strata", type=lambda s: s.split(","), default=["gender", "race", "age_group"])
    parser.add_argument("--max-attempts", type=float, default=10.0, help="closed_loop.max_attempts_per_face")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="closed_loop.min_confidence")
    parser.add_argument("--exclude", action="append", default=[], metavar="ATTR=VALUE",
                        help="leave the strata with this value out of the balanced job's target (equal shares "
                             "over the rest; needs --reference for the attributes' values); repeatable")
    parser.add_argument("--psi", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--jobs", default="unbalanced,labeled,balanced",
                        help="which of the three jobs to run ('none': only redraw the distributions)")
    parser.add_argument("--reference", default=None, help="the imported training set, for distributions.png")
    parser.add_argument("--work", default=None, help="folder for outputs and logs (default: a temp folder)")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME, mode="distributions only" if args.jobs == "none" else "full")
    if args.exclude and not args.reference:
        parser.error("--exclude needs --reference (the attributes' values come from its manifest)")
    work = Path(args.work or tempfile.mkdtemp(prefix="ganray-balance-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)

    results: dict = {"machine": f"{os.cpu_count()} CPUs", "count": args.count, "strata": args.strata,
                     "exclude": args.exclude, "model": args.model, "labeler": args.labeler}
    for kind in [] if args.jobs == "none" else args.jobs.split(","):
        results[kind] = run_job(args, work, kind, env)
        print(f"{kind:>10}: {results[kind]['faces']} faces in {results[kind]['wall_s']} s = "
              f"{results[kind]['faces_per_s']} faces/s", flush=True)
    base = results.get("unbalanced", {}).get("faces_per_s")
    for kind in ("labeled", "balanced"):
        if base and kind in results:
            results[f"{kind}_over_unbalanced"] = round(results[kind]["faces_per_s"] / base, 3)
            print(f"{kind} ÷ unbalanced faces/s: {results[f'{kind}_over_unbalanced']}")
    balanced = results.get("balanced", {}).get("report")
    if balanced and (balanced.get("true_balance") or {}).get("available"):
        # Beside "every kept face agrees with its stratum" (true by construction): the estimated truth.
        results["balanced_true_balance"] = [
            {k: r.get(k) for k in ("stratum", "count", "estimated_true_count", "true_count_interval",
                                   "label_precision", "label_precision_interval")} for r in balanced["strata"]]
        for r in results["balanced_true_balance"]:
            print(f"  {r['stratum']:<24} labeled {r['count']:>6}  true (est.) {r['estimated_true_count']:>9} "
                  f"{r['true_count_interval']}  label precision {r['label_precision']} {r['label_precision_interval']}")
    if args.reference:
        results["distributions"] = distributions(args, work)
        plot_distributions(results["distributions"], work / "distributions.png")
        print(f"distributions: {work / 'distributions.png'}")
    if args.jobs == "none":
        previous = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
        results = {**previous, "distributions": results.get("distributions")}
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'results.json'}")
    run.settings = {k: results.get(k) for k in ("count", "strata", "exclude", "model", "labeler")}
    run.note("Faces/s = faces written ÷ wall time, start-up included, as a user sees it; Parquet to local disk.")
    for kind in ("labeled", "balanced"):
        if f"{kind}_over_unbalanced" in results:
            run.figure(f"{kind} ÷ unbalanced faces/s", results[f"{kind}_over_unbalanced"])
    jobs = [kind for kind in ("unbalanced", "labeled", "balanced") if isinstance(results.get(kind), dict)]
    for kind in jobs:
        run.figure(f"{kind}: faces/s", results[kind]["faces_per_s"], "faces/s",
                   f"{results[kind]['faces']} faces in {results[kind]['wall_s']} s")
    if run.figures:
        run.write()


if __name__ == "__main__":
    main()
