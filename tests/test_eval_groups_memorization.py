"""Per-group metrics and the memorization check of `ganray eval`, on a real local Ray and a real import.

The reference is labeled by file name (glasses: "no" / "yes", numbered 0 / 1 by the importer); the
conditional model's vocabulary is ["maybe", "no", "yes"], so its index of "no" is not the
reference's: strata must be matched by value name. "maybe" exists only on the generated side.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ganray import storage
from ganray.cli import main as cli
from ganray.config import DCGANConfig, ExtractorConfig, ImportConfig, LabelConfig
from ganray.data.hf_features import to_ganray_table
from ganray.data.importer import run_import
from ganray.data.manifest import shard_paths
from ganray.data.synthetic import render_face
from ganray.eval import metrics
from ganray.eval.extractors import build_extractor
from ganray.eval.groups import per_group_metrics
from ganray.eval.job import PAIRS_SUFFIX
from ganray.eval.memorization import memorization_report, pairs_grid
from ganray.images import decode_png, encode_png
from ganray.models import build_generator
from ganray.models.face import labels_for_conditions, render_faces
from ganray.registry import Registry

RES = 32
REFERENCE_COUNT, COUNT = 40, 24
MODEL = DCGANConfig(z_dim=8, g_width=4, conditional=True).model_dump()
MODEL_VALUES = {"glasses": ["maybe", "no", "yes"]}
SETTINGS = {"eval.count": COUNT, "eval.reference_count": REFERENCE_COUNT, "eval.kid_subset_size": 12,
            "eval.kid_subsets": 5, "eval.extractor.pixels_side": 8, "eval.extractor.batch_size": 16,
            "eval.render_batch_size": 16, "eval.memorization.pairs": 4}


def glasses(i: int) -> str:
    return "yes" if i % 4 == 0 else "no"  # 10 "yes", 30 "no" in the first 40


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("faces")
    for i in range(REFERENCE_COUNT):
        Image.fromarray(render_face(i, RES)[0]).save(src / f"face{i:03d}_{glasses(i)}.png")
    dst = str(tmp_path_factory.mktemp("ref") / "faces")
    run_import(ImportConfig(src=str(src), dst=dst, resolution=RES, min_size=8, blank_std=0, blur_threshold=0,
                            shard_rows=16, labels=LabelConfig(pattern=r"face\d+_(?P<glasses>\w+)\.png")))
    return dst


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    registry = Registry(str(tmp_path_factory.mktemp("reg") / "registry"))
    torch.manual_seed(3)
    generator = build_generator(DCGANConfig(**MODEL), RES, MODEL_VALUES)
    registry.push(generator.state_dict(), MODEL, RES, MODEL_VALUES, {})
    return registry


def run_eval(registry: Registry, reference: str, output: Path, **extra) -> int:
    settings = {**SETTINGS, "registry.url": registry.url, "eval.reference": reference, "eval.output": str(output),
                **extra}
    return cli(["eval", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])


def reference_rows(reference: str) -> list[bytes]:
    manifest = json.loads(storage.read_bytes(storage.join(reference, "manifest.json")))
    return [data for path in shard_paths(reference, manifest) for data in pq.read_table(path)["image"].to_pylist()]


def pixels(images: np.ndarray) -> np.ndarray:
    return build_extractor(ExtractorConfig(pixels_side=8))(images)["features"]


# -- per-group metrics --------------------------------------------------------------------------


def test_per_group_metrics_of_a_conditional_model(registry, reference, tmp_path):
    out = tmp_path / "groups.json"
    assert run_eval(registry, reference, out, **{"eval.model": "v1", "eval.groups": "[glasses]",
                                                "eval.group_min_samples": 11}) == 0
    result = json.loads(out.read_text())
    assert registry.evaluation("v1", "default") == result  # per-group numbers go to the registry too

    # The same strata, built here: reference labels from file names, faces' conditions from their seeds.
    rows = reference_rows(reference)[:REFERENCE_COUNT]
    real = pixels(np.stack([decode_png(r) for r in rows]))
    real_glasses = np.array([glasses(i) for i in range(REFERENCE_COUNT)])  # import keeps the file order
    generator = registry.load_generator("v1").generator
    seeds = list(range(COUNT))
    labels = labels_for_conditions(generator, {}, COUNT, seeds=seeds)
    fake = pixels(render_faces(generator, seeds, 1.0, labels, "auto"))
    fake_glasses = np.array([MODEL_VALUES["glasses"][int(i)] for i in labels[:, 0]])
    assert {"maybe", "no", "yes"} == set(fake_glasses)  # every stratum has faces

    strata = {s["values"]["glasses"]: s for s in result["per_group"]["strata"]}
    assert result["per_group"]["by"] == ["glasses"] and result["per_group"]["min_samples"] == 11
    assert list(strata) == ["maybe", "no", "yes"]
    no = strata["no"]
    assert (no["reference_count"], no["generated_count"]) == (30, int((fake_glasses == "no").sum()))
    if no["generated_count"] >= 11:
        assert no["fid"] == pytest.approx(metrics.fid(real[real_glasses == "no"], fake[fake_glasses == "no"]),
                                          rel=1e-6)
        pr = metrics.precision_recall(real[real_glasses == "no"], fake[fake_glasses == "no"])
        assert (no["precision"], no["recall"]) == (pr["precision"], pr["recall"])
    # "yes": 10 reference images < 11; "maybe": none in the reference at all.
    assert "fid" not in strata["yes"] and "reference has 10" in strata["yes"]["skipped"]
    assert "eval.group_min_samples" in strata["yes"]["skipped"]
    assert strata["maybe"]["reference_count"] == 0 and "reference has 0" in strata["maybe"]["skipped"]
    # The overall metrics are those of an evaluation without groups (new keys only).
    assert result["metrics"]["fid"] == pytest.approx(metrics.fid(real, fake), rel=1e-6)

    # Memorization: a model's own faces (no copies) are not flagged; the grid shows the closest pair,
    # the face rendered again by seed on the left, its nearest training image on the right.
    memo = result["memorization"]
    assert memo["count_below_threshold"] == 0 and memo["share_below_threshold"] == 0
    assert memo["nn_distance"]["min"] > memo["threshold"]
    first = memo["closest"][0]
    nearest = np.sqrt(((fake[:, None, :].astype(np.float64) - real[None]) ** 2).sum(-1))
    assert first["distance"] == pytest.approx(nearest.min(), rel=1e-6)
    grid = np.asarray(Image.open(memo["pairs_png"]))
    g = first["generated_index"]
    np.testing.assert_array_equal(grid[:RES, :RES], render_faces(generator, [g], 1.0, labels[g:g + 1], "auto")[0])
    np.testing.assert_array_equal(grid[:RES, RES + 2:], decode_png(rows[first["reference_index"]]))


def test_per_group_math_and_thresholds():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 1
    real_labels = {"a": np.array(["x"] * 20 + ["y"] * 10)}
    fake_labels = {"a": np.array(["x"] * 16 + ["y"] * 4)}
    out = per_group_metrics(real, real_labels, fake, fake_labels, ["a"], min_samples=4, pr_k=3)
    x, y = out["strata"]
    assert x["fid"] == pytest.approx(metrics.fid(real[:20], fake[:16]), rel=1e-12)
    assert y["fid"] == pytest.approx(metrics.fid(real[20:], fake[16:]), rel=1e-12)  # exactly min_samples: kept
    out = per_group_metrics(real, real_labels, fake, fake_labels, ["a"], min_samples=5, pr_k=3)
    assert "generated has 4" in out["strata"][1]["skipped"] and "fid" in out["strata"][0]
    with pytest.raises(metrics.MetricError, match="at least 4"):
        per_group_metrics(real, real_labels, fake, fake_labels, ["a"], min_samples=3, pr_k=3)


@pytest.mark.parametrize("extra, message", [
    ({"eval.model": "v1", "eval.groups": "[smile]"}, "not label columns of the reference"),
    ({"eval.model": "plain", "eval.groups": "[glasses]"}, "does not condition on ['glasses']"),
    ({"eval.model": "v1", "eval.groups": "[glasses]", "eval.group_min_samples": 3}, "must exceed eval.pr_k"),
])
def test_bad_groups_exit_2_and_write_nothing(extra, message, registry, reference, tmp_path, capsys):
    if extra["eval.model"] == "plain" and "plain" not in registry.aliases():
        plain = DCGANConfig(z_dim=8, g_width=4).model_dump()
        registry.promote(registry.push(build_generator(DCGANConfig(**plain), RES, {}).state_dict(), plain, RES,
                                       {}, {}), "plain")
    out = tmp_path / "result.json"
    assert run_eval(registry, reference, out, **extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / f"result{PAIRS_SUFFIX}").exists()


# -- memorization -------------------------------------------------------------------------------

COPIES = {3: 5, 10: 0, 17: 22}  # generated face index -> the reference image copied into it


@pytest.fixture(scope="module")
def outputs(registry, tmp_path_factory, reference) -> tuple[str, str]:
    """A real `ganray generate` output of v1, and a copy of it with three faces replaced by
    reference images (byte-identical PNGs)."""
    root = tmp_path_factory.mktemp("gen")
    out = str(root / "gen")
    assert cli(["generate", "--set", f"registry.url={registry.url}", "--set", "generate.model=v1",
                "--set", f"generate.output={out}", "--set", f"generate.count={COUNT}", "--set", "generate.psi=1.0",
                "--set", "generate.shard_size=16", "--set", "generate.format=parquet"]) == 0
    copied = str(root / "copied")
    shutil.copytree(out, copied)
    rows = reference_rows(reference)
    for shard, first in ((root / "copied/data/train-00000-of-00002.parquet", 0),
                         (root / "copied/data/train-00001-of-00002.parquet", 16)):
        replace_images(shard, {g - first: rows[r] for g, r in COPIES.items() if first <= g < first + 16})
    return out, copied


def replace_images(shard: Path, pngs: dict[int, bytes]) -> None:
    """Rewrite a generated Parquet shard (either table layout) as a plain one with some rows' PNGs replaced."""
    table = to_ganray_table(pq.read_table(shard))
    images = table["image"].to_pylist()
    for row, png in pngs.items():
        images[row] = png
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary())),
                   shard)


def test_exact_copies_are_flagged_and_drawn(registry, reference, outputs, tmp_path):
    _, copied = outputs
    out = tmp_path / "copied.json"
    assert run_eval(registry, reference, out, **{"eval.model": "null", "eval.generated": copied}) == 0
    memo = json.loads(out.read_text())["memorization"]
    assert memo["count_below_threshold"] == len(COPIES)
    assert memo["share_below_threshold"] == pytest.approx(len(COPIES) / COUNT)
    closest = memo["closest"]
    assert len(closest) == 4
    assert {(p["generated_index"], p["reference_index"]) for p in closest[:3]} == set(COPIES.items())
    assert all(p["distance"] < 1e-6 for p in closest[:3]) and closest[3]["distance"] > memo["threshold"]
    assert memo["threshold"] == pytest.approx(0.5 * memo["reference_nn_median"])
    # The grid: a row per pair, generated | nearest training image; the copies' rows are identical halves.
    assert memo["pairs_png"] == str(tmp_path / f"copied{PAIRS_SUFFIX}")
    grid = np.asarray(Image.open(memo["pairs_png"]))
    assert grid.shape == (4 * RES + 3 * 2, 2 * RES + 2, 3)
    rows = reference_rows(reference)
    for i, pair in enumerate(closest):
        top = i * (RES + 2)
        np.testing.assert_array_equal(grid[top:top + RES, RES + 2:], decode_png(rows[pair["reference_index"]]))
        if i < 3:
            np.testing.assert_array_equal(grid[top:top + RES, :RES], grid[top:top + RES, RES + 2:])


def test_memorization_can_be_turned_off(registry, reference, outputs, tmp_path):
    original, _ = outputs
    out = tmp_path / "off.json"
    assert run_eval(registry, reference, out, **{"eval.model": "null", "eval.generated": original,
                                                "eval.memorization.enabled": "false"}) == 0
    result = json.loads(out.read_text())
    assert result["memorization"] is None and result["metrics"]["fid"] > 0
    assert not (tmp_path / f"off{PAIRS_SUFFIX}").exists()


def test_memorization_threshold():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(50, 6))
    fake = np.concatenate([real[[7, 9]], rng.normal(size=(8, 6)) * 3])
    report = memorization_report(real, fake, threshold=None, threshold_ratio=0.5, pairs=3)
    own = [np.sort(np.linalg.norm(real - p, axis=1))[1] for p in real]  # nearest *other* reference sample
    assert report["reference_nn_median"] == pytest.approx(np.median(own), rel=1e-9)
    assert [(p["generated_index"], p["reference_index"]) for p in report["closest"][:2]] == [(0, 7), (1, 9)]
    assert report["count_below_threshold"] >= 2
    fixed = memorization_report(real, fake, threshold=0.0, threshold_ratio=0.5, pairs=0)
    assert fixed["count_below_threshold"] == 0 and fixed["closest"] == []  # strictly below 0: nothing
    assert fixed["threshold_source"] == "eval.memorization.threshold"
    assert pairs_grid(np.zeros((2, 4, 4, 3), np.uint8), np.ones((2, 4, 4, 3), np.uint8)).shape == (10, 10, 3)


def test_memorization_searches_every_training_image_by_default(registry, reference, outputs, tmp_path):
    """A near copy of the LAST training image, planted in one face, is found although the metrics use only
    the first 16 reference images; searching only those 16 (the old behaviour) misses it."""
    original, _ = outputs
    planted = str(tmp_path / "planted")
    shutil.copytree(original, planted)
    last = decode_png(reference_rows(reference)[-1]).astype(np.int16)
    near = np.clip(last + np.where(np.indices(last.shape).sum(0) % 2 == 0, 2, -2), 0, 255).astype(np.uint8)
    replace_images(Path(planted) / "data/train-00000-of-00002.parquet", {7: encode_png(near)})
    replace_images(Path(planted) / "data/train-00001-of-00002.parquet", {})  # one table layout for the whole output
    common = {"eval.model": "null", "eval.generated": planted, "eval.reference_count": 16}
    out = tmp_path / "all.json"
    assert run_eval(registry, reference, out, **common) == 0
    memo = json.loads(out.read_text())["memorization"]
    assert memo["reference_count"] == REFERENCE_COUNT  # every training image searched
    assert memo["closest"][0]["generated_index"] == 7
    assert memo["closest"][0]["reference_index"] == REFERENCE_COUNT - 1
    assert memo["count_below_threshold"] == 1 and 0 < memo["closest"][0]["distance"] < memo["threshold"]
    histogram = memo["distribution"]["histogram"]
    assert sum(histogram["counts"]) == COUNT and memo["distribution"]["quantiles"]["0"] == memo["nn_distance"]["min"]

    out = tmp_path / "first16.json"
    assert run_eval(registry, reference, out, **common, **{"eval.memorization.reference_count": 16}) == 0
    memo = json.loads(out.read_text())["memorization"]
    assert memo["reference_count"] == 16 and all(p["reference_index"] < 16 for p in memo["closest"])
    assert memo["closest"][0]["reference_index"] != REFERENCE_COUNT - 1


def test_nearest_distance_distribution():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(300, 5)), rng.normal(size=(120, 5))
    report = memorization_report(real, fake, threshold=1.0, threshold_ratio=0.5, pairs=0)
    nearest = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1)).min(1)  # brute force, every pair
    distribution = report["distribution"]
    assert distribution["quantiles"]["0.5"] == pytest.approx(np.median(nearest), rel=1e-9)
    assert distribution["quantiles"]["1"] == pytest.approx(nearest.max(), rel=1e-9)
    counts, edges = np.histogram(nearest, bins=len(distribution["histogram"]["counts"]), range=(0, nearest.max()))
    assert distribution["histogram"]["counts"] == counts.tolist()
    assert report["count_below_threshold"] == int((nearest < 1.0).sum())
