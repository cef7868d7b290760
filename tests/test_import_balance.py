"""`import.balance`: resample down / up or weights over label strata, at awkward counts; deterministic;
the manifest's before/after counts; the weights reach training's sampler; bad input exits 2 before work."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ganray.cli import main as cli
from ganray.config import ConfigError, DataConfig, ImportBalanceConfig, ImportConfig
from ganray.data.balance import balance
from ganray.data.dataset import EpochSampler, build_indexed_rows, row_weights
from ganray.data.importer import run_import
from ganray.data.manifest import read_manifest, shard_paths
from ganray.data.synthetic import render_face

RES = 32
REGEX = r"(?P<sex>[ab])_(?P<tone>[xyz])_\d+\.png"
# Awkward strata: 5, 2, 1 and 3 faces; (a, z) and (b, y) have none.
STRATA = {("a", "x"): 5, ("a", "y"): 2, ("b", "x"): 1, ("b", "z"): 3}
ATTRIBUTES = {"sex": ["a", "b"], "tone": ["x", "y", "z"]}


def rows_for(strata: dict[tuple[str, str], int]) -> list[dict]:
    """Kept rows as the importer hands them to balancing: content hash and value indices."""
    rows = []
    for (sex, tone), n in strata.items():
        for k in range(n):
            rows.append({"content_hash": f"{sex}{tone}{k:03d}", "sex": ATTRIBUTES["sex"].index(sex),
                         "tone": ATTRIBUTES["tone"].index(tone)})
    return rows


def per_stratum(rows: list[dict], amounts: list[float]) -> dict[tuple[int, int], float]:
    out: Counter = Counter()
    for row, amount in zip(rows, amounts):
        out[(row["sex"], row["tone"])] += amount
    return dict(out)


@pytest.mark.parametrize("strata", [STRATA, {("a", "x"): 7, ("b", "y"): 3}, {("a", "x"): 1, ("b", "z"): 1},
                                    {("a", "x"): 4}])
def test_every_mode_equalises_the_strata(strata):
    rows = rows_for(strata)
    cfg = lambda mode: ImportBalanceConfig(attributes=["sex", "tone"], mode=mode, seed=3)  # noqa: E731
    down = balance(rows, ATTRIBUTES, cfg("resample_down"))
    assert set(per_stratum(rows, down.copies).values()) == {min(strata.values())}
    assert max(down.copies) == 1 and down.weights is None
    up = balance(rows, ATTRIBUTES, cfg("resample_up"))
    assert set(per_stratum(rows, up.copies).values()) == {max(strata.values())}
    for key, members in _members(rows).items():  # copies differ by at most one within a stratum
        assert max(up.copies[i] for i in members) - min(up.copies[i] for i in members) <= 1
    weighted = balance(rows, ATTRIBUTES, cfg("weights"))
    assert weighted.copies == [1] * len(rows)
    assert per_stratum(rows, weighted.weights) == pytest.approx(
        {k: len(rows) / len(strata) for k in per_stratum(rows, [1] * len(rows))})
    assert np.mean(weighted.weights) == pytest.approx(1.0)


def _members(rows):
    members: dict = {}
    for i, row in enumerate(rows):
        members.setdefault((row["sex"], row["tone"]), []).append(i)
    return members


def test_selection_is_a_function_of_content_and_seed_not_of_order():
    rows = rows_for(STRATA)
    cfg = ImportBalanceConfig(attributes=["sex", "tone"], mode="resample_down", seed=0)
    chosen = {rows[i]["content_hash"] for i, c in enumerate(balance(rows, ATTRIBUTES, cfg).copies) if c}
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    again = {shuffled[i]["content_hash"] for i, c in enumerate(balance(shuffled, ATTRIBUTES, cfg).copies) if c}
    assert chosen == again and len(chosen) == 4
    other_seeds = [{rows[i]["content_hash"] for i, c in enumerate(balance(
        rows, ATTRIBUTES, cfg.model_copy(update={"seed": s})).copies) if c} for s in range(1, 6)]
    assert any(o != chosen for o in other_seeds)  # the seed picks the rows
    up = balance(rows, ATTRIBUTES, cfg.model_copy(update={"mode": "resample_up"}))
    assert up.copies[:5] == [1] * 5  # the largest stratum (5 rows) is written once each
    assert sorted(up.copies[5:7]) == [2, 3]  # 2 rows filled to 5: one twice, one three times


def test_manifest_section_before_after_and_empty_strata():
    section = balance(rows_for(STRATA), ATTRIBUTES,
                      ImportBalanceConfig(attributes=["sex", "tone"], mode="resample_up")).section
    assert section["before"]["rows"] == 11 and section["after"]["rows"] == 20 and section["target_per_stratum"] == 5
    assert [(s["labels"], s["before"], s["after"]) for s in section["strata"]] == [
        ({"sex": "a", "tone": "x"}, 5, 5), ({"sex": "a", "tone": "y"}, 2, 5),
        ({"sex": "b", "tone": "x"}, 1, 5), ({"sex": "b", "tone": "z"}, 3, 5)]
    assert section["empty_strata"] == [{"sex": "a", "tone": "z"}, {"sex": "b", "tone": "y"}]
    assert section["before"]["label_histograms"]["sex"] == {"a": 7, "b": 4}
    assert section["after"]["label_histograms"]["sex"] == {"a": 10, "b": 10}
    one = balance(rows_for(STRATA), ATTRIBUTES, ImportBalanceConfig(attributes=["sex"], mode="resample_down")).section
    assert [(s["labels"], s["after"]) for s in one["strata"]] == [({"sex": "a"}, 4), ({"sex": "b"}, 4)]
    with pytest.raises(ConfigError, match=r"import.balance.attributes: \['age'\] are not label columns"):
        balance(rows_for(STRATA), ATTRIBUTES, ImportBalanceConfig(attributes=["age"], mode="weights"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("labeled")
    face = 0
    for (sex, tone), n in STRATA.items():
        for k in range(n):
            Image.fromarray(render_face(face, RES)[0]).save(src / f"{sex}_{tone}_{k}.png")
            face += 1
    return src


def read_rows(dst: Path) -> list[dict]:
    manifest = read_manifest(str(dst))
    return [row for path in shard_paths(str(dst), manifest) for row in pq.read_table(path).to_pylist()]


def import_balanced(source: Path, dst: Path, **balance_cfg) -> dict:
    return run_import(ImportConfig(src=str(source), dst=str(dst), resolution=RES, min_size=8, blank_std=0,
                                   blur_threshold=0, shard_rows=4, labels={"pattern": REGEX},
                                   balance=balance_cfg or None))


def test_import_resamples_down_and_up_deterministically(ray_session, source, tmp_path):
    plain = import_balanced(source, tmp_path / "plain")
    assert "balance" not in plain and "balance" not in plain["settings"] and "rows" not in plain["counts"]

    down = import_balanced(source, tmp_path / "down", attributes=["sex", "tone"], mode="resample_down", seed=1)
    rows = read_rows(tmp_path / "down")
    strata = Counter((r["sex"], r["tone"]) for r in rows)
    assert len(rows) == 4 and set(strata.values()) == {1} and len(strata) == 4
    assert down["counts"]["kept"] == 11 and down["counts"]["rows"] == 4 == sum(s["rows"] for s in down["shards"])
    assert down["balance"]["before"]["rows"] == 11 and down["balance"]["after"]["rows"] == 4
    assert down["label_histograms"] == {"sex": {"a": 2, "b": 2}, "tone": {"x": 2, "y": 1, "z": 1}}
    assert down["settings"]["balance"] == {"attributes": ["sex", "tone"], "mode": "resample_down", "seed": 1}
    assert down["manifest_hash"] != plain["manifest_hash"]
    assert [r["source_path"] for r in rows] == sorted(r["source_path"] for r in rows)  # path order kept

    up = import_balanced(source, tmp_path / "up", attributes=["sex", "tone"], mode="resample_up", seed=1)
    up_rows = read_rows(tmp_path / "up")
    assert len(up_rows) == 20 and set(Counter((r["sex"], r["tone"]) for r in up_rows).values()) == {5}
    assert len(up["shards"]) == 5 and {r["source_path"] for r in up_rows} == {r["source_path"] for r in read_rows(
        tmp_path / "plain")}  # every face kept, the small strata repeated
    assert up["balance"]["after"]["label_histograms"] == up["label_histograms"] == {
        "sex": {"a": 10, "b": 10}, "tone": {"x": 10, "y": 5, "z": 5}}

    again = import_balanced(source, tmp_path / "up", attributes=["sex", "tone"], mode="resample_up", seed=1)
    assert again["manifest_hash"] == up["manifest_hash"] and read_rows(tmp_path / "up") == up_rows


def test_weights_are_written_and_drive_the_training_sampler(ray_session, source, tmp_path):
    dst = tmp_path / "weighted"
    manifest = import_balanced(source, dst, attributes=["tone"], mode="weights")
    rows = read_rows(dst)
    assert len(rows) == 11 and manifest["counts"]["rows"] == 11 and manifest["balance"]["after"]["weighted"]
    by_tone: Counter = Counter()
    for r in rows:
        by_tone[r["tone"]] += r["weight"]
    assert list(by_tone.values()) == pytest.approx([11 / 3] * 3)  # x: 6 faces, y: 2, z: 3 -> equal weight
    assert manifest["balance"]["after"]["label_histograms"]["tone"] == pytest.approx({t: 11 / 3 for t in "xyz"})

    data = DataConfig(source="shards", url=str(dst), resolution=RES)
    weights = row_weights(data)
    assert weights == pytest.approx([r["weight"] for r in rows])
    indexed = build_indexed_rows(data)
    assert indexed.weights == pytest.approx(weights) and indexed.num_rows == 11
    assert row_weights(DataConfig(resolution=RES)) is None  # the built-in faces: no weights

    # Training draws rows in proportion to their weights: each tone about a third of the draws.
    sampler = EpochSampler(11, 11, seed=0, weights=indexed.weights)
    drawn: Counter = Counter()
    for _ in range(3000):
        indices, _ = sampler.next()
        drawn.update(rows[i]["tone"] for i in indices)
    shares = np.array([drawn[t] for t in range(3)]) / sum(drawn.values())
    assert np.abs(shares - 1 / 3).max() < 0.02
    replay = EpochSampler(11, 11, seed=0, weights=indexed.weights)
    replay.load_state_dict({"epoch": 5, "batch": 0})
    fresh = EpochSampler(11, 11, seed=0, weights=indexed.weights)
    for _ in range(5):
        fresh.next()
    assert list(replay.next()[0]) == list(fresh.next()[0])  # resumable: a pure function of the position


def test_cli_unknown_attribute_exits_2_before_any_work(ray_session, source, tmp_path, capsys):
    dst = tmp_path / "never"
    code = cli(["data", "import", str(source), str(dst), "--set", f"import.labels.pattern={json.dumps(REGEX)}",
                "--set", "import.balance.attributes=[age]", "--set", "import.balance.mode=resample_down"])
    assert code == 2
    assert "import.balance.attributes: ['age'] are not label columns" in capsys.readouterr().err
    assert not dst.exists()
    assert cli(["data", "import", str(source), str(dst), "--set", "import.balance.attributes=[sex]",
                "--set", "import.balance.mode=sideways"]) == 2
    assert "import.balance.mode" in capsys.readouterr().err and not dst.exists()
