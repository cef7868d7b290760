"""The balance report's chart draws only panels with something to show: an output made without a
labeler or quality gate gets the counts panel alone, not empty acceptance/agreement and reject panels."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from ganray.generate.report import write_balance_report
from ganray.labels.report import CHART_FILE

PANEL_PX = int(2.6 * 80)  # draw_report: 2.6 inches a panel at 80 dpi


def _output(root: Path, labeled: bool) -> Path:
    """A finished, balanced generation output of 4 faces over smile x glasses (files as the job writes them)."""
    out = root / ("labeled" if labeled else "plain")
    (out / "parquet").mkdir(parents=True)
    rows = {"face_id": [0, 1, 2, 3], "smile": ["no", "yes", "no", "yes"], "glasses": ["no", "no", "yes", "yes"]}
    parameters = {"format": "parquet", "count": 4, "balance": ["smile", "glasses"], "closed_loop": None}
    if labeled:
        rows |= {"label_smile": rows["smile"], "label_glasses": ["no", "no", "yes", "no"]}
        parameters |= {"labeler": {"name": "conditions"}, "labels_layout": 1}
    pq.write_table(pa.table(rows), out / "parquet" / "shard-00000.parquet")
    (out / "job.json").write_text(json.dumps({"job_id": "test", "parameters": parameters}))
    (out / "manifest.json").write_text(json.dumps({"faces": 4, "shards": [{"shard": 0}]}))
    return out


def _panels(png: bytes) -> int:
    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR
    assert height % PANEL_PX == 0, height
    return height // PANEL_PX


def test_report_of_an_output_without_labeler_draws_the_counts_panel_alone(tmp_path):
    report = write_balance_report(str(_output(tmp_path, labeled=False)))
    assert report["labeler"] is None and all("labeler_agreement" not in r for r in report["strata"])
    assert _panels((tmp_path / "plain" / CHART_FILE).read_bytes()) == 1


def test_report_of_a_labeled_output_adds_the_agreement_panel(tmp_path):
    report = write_balance_report(str(_output(tmp_path, labeled=True)))
    assert [r["labeler_agreement"] for r in report["strata"]] == [1.0, 1.0, 1.0, 0.0]
    assert _panels((tmp_path / "labeled" / CHART_FILE).read_bytes()) == 2  # counts, agreement; no rejects


def test_report_of_a_classifier_labeled_output_estimates_the_true_balance_beside_the_labeled_counts(tmp_path):
    """Balance report + the labeler's held-out evidence (no Ray): each stratum gets its estimated
    true count and label precision with intervals; the chart and the text carry them; without the
    labeler's evaluation the report says why there is no estimate."""
    import numpy as np

    from ganray.config import ClassifierModelConfig
    from ganray.labels.calibration import calibration_report
    from ganray.labels.report import format_report
    from ganray.models.classifier import build_classifier
    from ganray.registry import LabelerRegistry

    values = {"smile": ["no", "yes"], "glasses": ["no", "yes"]}
    rng = np.random.default_rng(0)
    evaluation = {"attributes": {}}
    for name, vals in values.items():  # a held-out split where "yes" is labeled "no" a third of the time
        truth = rng.integers(0, 2, 600)
        label = np.where((truth == 1) & (rng.random(600) < 1 / 3), 0, truth)
        probabilities = np.stack([np.where(label == 0, 0.8, 0.2), np.where(label == 1, 0.8, 0.2)], axis=1)
        evaluation["attributes"][name] = {"confusion": {"values": vals},
                                          "calibration": calibration_report(vals, None, (probabilities, truth))}
    cfg = ClassifierModelConfig(width=8, feature_dim=16)
    registry = LabelerRegistry(str(tmp_path / "registry"))
    version = registry.push(build_classifier(cfg, 16, values).state_dict(), cfg.model_dump(), 16, values, {},
                            evaluation)

    out = _output(tmp_path, labeled=True)
    table = pq.read_table(out / "parquet" / "shard-00000.parquet")
    for name in values:
        table = table.append_column(f"label_{name}_confidence", pa.array([0.8] * 4, pa.float32()))
    pq.write_table(table, out / "parquet" / "shard-00000.parquet")
    job = json.loads((out / "job.json").read_text())
    job["parameters"]["labeler"] = {"name": "classifier", "version": version}
    (out / "job.json").write_text(json.dumps(job))

    report = write_balance_report(str(out), registry_url=str(tmp_path / "registry"))
    assert report["true_balance"]["available"] and report["true_balance"]["labeler_version"] == version
    rows = {r["stratum"]: r for r in report["strata"]}
    assert sum(r["estimated_true_count"] for r in rows.values()) == pytest.approx(4, abs=0.05)
    # Labeled no/no once, but a share of the faces labeled "no" truly show "yes": fewer true no/no.
    assert rows["no/no"]["estimated_true_count"] < 1
    assert rows["no/no"]["label_precision_interval"][0] <= rows["no/no"]["label_precision"] < 1
    assert rows["yes/no"]["label_precision"] > rows["no/no"]["label_precision"]  # "yes" labels are always right
    assert "label_precision" not in rows["yes/yes"]  # no face labeled so
    assert "true count (est.)" in format_report(report)
    assert _panels((out / CHART_FILE).read_bytes()) == 2

    elsewhere = write_balance_report(str(out), registry_url=str(tmp_path / "empty-registry"))
    assert not elsewhere["true_balance"]["available"] and version in elsewhere["true_balance"]["reason"]
    assert all("estimated_true_count" not in r for r in elsewhere["strata"])
