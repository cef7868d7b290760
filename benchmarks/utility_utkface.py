"""Train on synthetic, test on real (UTKFace-64): a closed-loop balanced set against an unbalanced one

    python benchmarks/utility_utkface.py --data DATA --registry REG --balanced OUT_B --unbalanced OUT_U --work DIR

DATA is the full UTKFace-64 import (four age bands); OUT_B and OUT_U are two `ganray generate`
outputs of the same size from the same generator in REG, trained on an import with
`leave_out_heldout` (docs/evaluation.md#utility-train-on-synthetic-test-on-real gives every
command). Runs `ganray eval utility` with configs/eval_utility_utkface.yaml once per set: the
classifier trained on the real training split, on the set, and on both, tested on the same real
held-out images. The `real` arm is trained in both runs with the same recipe and seed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _result import BenchmarkRun

RESULT_NAME = "utility_utkface"
CONFIG = Path(__file__).resolve().parents[1] / "ganray" / "configs" / "eval_utility_utkface.yaml"


def interval(pair) -> str:
    return "-" if not pair else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def run_set(args: argparse.Namespace, name: str, output: str) -> dict:
    from ganray.config import UtilityJob, load_config
    from ganray.eval.utility import run_utility

    overrides = [f"labeler.data.url={json.dumps(args.data)}", f"registry.url={json.dumps(args.registry)}",
                 f"utility.generated={json.dumps(output)}",
                 f"utility.output={json.dumps(str(Path(args.work) / name))}",
                 *args.overrides]
    return run_utility(load_config(UtilityJob, str(CONFIG), overrides))


def generated_summary(url: str) -> dict:
    from ganray.data.manifest import read_generated_manifest

    manifest = read_generated_manifest(url) or {}
    parameters = manifest.get("parameters") or {}
    closed = parameters.get("closed_loop") or {}
    quotas = list((closed.get("quotas") or {}).values())
    return {"faces": manifest.get("faces"), "requested": parameters.get("count"),
            "model_version": parameters.get("model_version"), "strata": closed.get("strata"),
            "quotas": [min(quotas), max(quotas)] if quotas else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the full UTKFace-64 import (four age bands)")
    parser.add_argument("--registry", required=True, help="registry holding the generator of both sets")
    parser.add_argument("--balanced", required=True, help="closed-loop output, target uniform")
    parser.add_argument("--unbalanced", required=True, help="output of the same size, another make-up")
    parser.add_argument("--work", required=True, help="folder for the two utility results, runs and classifiers")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the utility config (e.g. labeler.train.max_steps=300)")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME)
    import ray

    sets = {"balanced": args.balanced, "unbalanced": args.unbalanced}
    results = {}
    try:
        for name, output in sets.items():
            results[name] = run_set(args, name, output)
    finally:
        ray.shutdown()

    first = results["balanced"]
    run.settings = {"config": str(CONFIG.relative_to(CONFIG.parents[2])), "overrides": args.overrides,
                    "heldout_images": first["heldout_images"], "groups_by": first["groups_by"],
                    "recipe": first["recipe"], "bootstrap": first["bootstrap"], "confidence": first["confidence"],
                    "sets": {n: generated_summary(u) for n, u in sets.items()},
                    "generator_check": {n: r["generator_check"] for n, r in results.items()}}
    checks = [r["generator_check"] for r in results.values()]
    for name, summary in run.settings["sets"].items():
        quotas = summary["quotas"]
        run.figure(f"faces in the {name} set", summary["faces"], note=f"of {summary['requested']} asked" + (
            f"; closed loop, quotas {quotas[0]} to {quotas[1]} per stratum" if quotas else ""))
    run.note(f"{first['heldout_images']} real held-out UTKFace images (content hash < "
             f"{first['heldout_rule']['fraction']}), the same for every classifier; groups by "
             f"{', '.join(first['groups_by'])}; {int(first['confidence'] * 100)} % percentile-bootstrap intervals "
             f"over {first['bootstrap']} resamples shared by the arms (differences are paired).")
    run.note("Generator check: " + "; ".join(
        f"{n}: {c.get('generator_training_images')} training images, {c.get('heldout_in_generator_training')} "
        "of them held out" for n, c in zip(results, checks)))
    real = {n: r["accuracy"]["arms"]["real"] for n, r in results.items()}
    same_real = all(real["balanced"][a]["accuracy"] == real["unbalanced"][a]["accuracy"] for a in real["balanced"])
    run.note("The `real` arm, trained once per run with the same recipe and seed, "
             + ("scored the same in both runs." if same_real else "scored differently in the two runs "
                "(Ray Train's DDP reductions are not bitwise repeatable); the table shows both."))

    rows = []
    for set_name, result in results.items():
        for arm, per_attribute in result["accuracy"]["arms"].items():
            if arm == "real" and set_name == "unbalanced" and same_real:
                continue
            shown = "real" if arm == "real" else f"{arm} ({set_name})"
            for attribute, entry in per_attribute.items():
                worst = entry["worst_group"] or {}
                delta = entry.get("minus_real") or {}
                rows.append([shown, attribute, entry["accuracy"], interval(entry["interval"]),
                             worst.get("group", "-"), worst.get("accuracy", "-"), interval(worst.get("interval")),
                             delta.get("worst_group", "-"), interval(delta.get("worst_group_interval"))])
                if worst:
                    run.figure(f"{attribute} worst-group accuracy, {shown}", worst["accuracy"],
                               note=f"group {worst['group']}")
    run.table("Accuracy on the real held-out images (worst group among groups of at least "
              f"{first['min_group_images']} images)",
              ["trained on", "attribute", "accuracy", "interval", "worst group", "worst-group accuracy",
               "its interval", "worst group - real", "paired interval"], rows)
    for set_name, result in results.items():
        entry = result["accuracy"]["arms"]["real+generated"]
        for attribute, per in entry.items():
            delta = (per.get("minus_real") or {}).get("worst_group")
            if delta is not None:
                low, high = per["minus_real"]["worst_group_interval"]
                verdict = "above real" if low > 0 else "below real" if high < 0 else "not distinguishable from real"
                run.figure(f"{attribute} worst group, real+generated ({set_name}) - real", delta,
                           note=f"95 % interval [{low:.3f}, {high:.3f}]: {verdict}")
    run.write()


if __name__ == "__main__":
    main()
