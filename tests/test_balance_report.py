"""The balance report's chart draws only panels with something to show: an output made without a
labeler or quality gate gets the counts panel alone, not empty acceptance/agreement and reject panels."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pyarrow as pa
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
