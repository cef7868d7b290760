"""`ganray generate` with a StyleGAN2: balanced strata, the same bytes at any batch size, and style
mixing, on a tiny conditional StyleGAN2 with random weights (noise on and a tracked average w, so
psi and noise matter) and the session's real local Ray."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny_generators import ATTRIBUTES, push_random_stylegan2

from ganray.config import GenerateJob
from ganray.data.hf_features import to_ganray_table
from ganray.images import encode_png
from ganray.models.face import labels_for_rows, render_faces
from ganray.registry import Registry

MIX = {"mix_seed_offset": 90, "crossover": 3}  # the style-mixing job's (num_ws is 8 at 32 px)


@pytest.fixture(scope="module")
def stylegan2(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("registry"))
    registry = Registry(url)
    return registry, url, push_random_stylegan2(registry, init_seed=7)


def _bulk_job(stylegan2, tmp_path_factory, name: str, **generate) -> Path:
    """A bulk job of the tiny StyleGAN2 (seed offset 60, psi 0.7, batches of 3); its output folder."""
    from ganray.generate.job import run_generate

    _, url, version = stylegan2
    output = tmp_path_factory.mktemp(name) / "faces"
    run_generate(GenerateJob.model_validate({"registry": {"url": url}, "generate": {
        "model": version, "output": str(output), "shard_size": 4, "psi": 0.7, "seed_offset": 60,
        "batch_size": 3, **generate}}), log=lambda line: None)
    return output


@pytest.fixture(scope="module")
def stylegan2_bulk(ray_session, stylegan2, tmp_path_factory):
    """A bulk job's faces of the tiny StyleGAN2, balanced over both attributes."""
    from ganray.generate.output import HUB_DIR

    output = _bulk_job(stylegan2, tmp_path_factory, "stylegan2-bulk", count=8, format="parquet",
                       balance=["age", "smile"])
    return sorted(to_ganray_table(pq.read_table(output / HUB_DIR)).to_pylist(), key=lambda row: row["seed"])


@pytest.fixture(scope="module")
def stylegan2_mixed_bulk(ray_session, stylegan2, tmp_path_factory):
    """A style-mixing bulk job of the tiny StyleGAN2, in PNG folders (the metadata rows)."""
    output = _bulk_job(stylegan2, tmp_path_factory, "stylegan2-mixed", count=4, format="both",
                       conditions={"age": "old"}, **MIX)
    rows = sorted(to_ganray_table(pq.read_table(output / "data")).to_pylist(), key=lambda row: row["seed"])
    png_folder = next(output.glob("png/*"))
    return rows, to_ganray_table(pq.read_table(next(png_folder.glob("*.parquet")))).to_pylist(), png_folder


def test_stylegan2_bulk_job_is_balanced_and_the_same_bytes_at_any_batch_size(stylegan2_bulk, stylegan2):
    reg, _, version = stylegan2
    rows = stylegan2_bulk
    seeds = [r["seed"] for r in rows]
    assert seeds == list(range(60, 68)) and {r["model_version"] for r in rows} == {version}
    # Balanced over age x smile: 8 faces, each of the 4 combinations twice, and each shard of 4 once.
    conditions = [json.loads(r["conditions"]) for r in rows]
    combos = [tuple(c[a] for a in ATTRIBUTES) for c in conditions]
    assert sorted(combos) == sorted([(a, s) for a in ATTRIBUTES["age"] for s in ATTRIBUTES["smile"]] * 2)
    assert len(set(combos[:4])) == len(set(combos[4:])) == 4
    # The job rendered batches of 3; the same faces rendered all 8 in one batch, and one at a time.
    generator = reg.load_generator(version).generator
    labels = labels_for_rows(generator, conditions)
    at_once = [encode_png(image) for image in render_faces(generator, seeds, 0.7, labels, "auto")]
    one_by_one = [encode_png(render_faces(generator, [s], 0.7, labels[i:i + 1], "auto")[0])
                  for i, s in enumerate(seeds)]
    assert [r["image"] for r in rows] == at_once == one_by_one
    # psi matters: the model has an average w to truncate towards.
    assert at_once[0] != encode_png(render_faces(generator, seeds[:1], 1.0, labels[:1], "auto")[0])


def test_style_mixing_bulk_rows_record_the_mix_and_are_render_faces_bytes(stylegan2_mixed_bulk, stylegan2_bulk,
                                                                          stylegan2):
    reg, _, version = stylegan2
    rows, png_rows, png_folder = stylegan2_mixed_bulk
    assert [r["seed"] for r in rows] == list(range(60, 64))
    assert [r["mix_seed"] for r in rows] == list(range(90, 94)) and {r["crossover"] for r in rows} == {3}
    assert [(r["mix_seed"], r["crossover"]) for r in png_rows] == [(r["mix_seed"], r["crossover"]) for r in rows]
    assert [(png_folder.parent.parent / r["file"]).read_bytes() for r in png_rows] == [r["image"] for r in rows]
    unmixed = stylegan2_bulk
    assert "mix_seed" not in unmixed[0] and "crossover" not in unmixed[0]  # rows without mixing are unchanged
    generator = reg.load_generator(version).generator
    labels = labels_for_rows(generator, [json.loads(r["conditions"]) for r in rows])
    seeds, mix_seeds = [r["seed"] for r in rows], [r["mix_seed"] for r in rows]
    mixed = [encode_png(image) for image in render_faces(generator, seeds, 0.7, labels, "auto",
                                                         mix_seeds=mix_seeds, crossover=3)]
    assert [r["image"] for r in rows] == mixed
    assert mixed != [encode_png(image) for image in render_faces(generator, seeds, 0.7, labels, "auto")]


def test_a_mixing_job_refuses_a_crossover_beyond_the_models_styles(stylegan2, tmp_path):
    from ganray.generate.job import plan_job
    from ganray.generate.output import GenerateError

    _, url, version = stylegan2

    def job(crossover: int) -> GenerateJob:
        return GenerateJob.model_validate({"registry": {"url": url}, "generate": {
            "model": version, "output": str(tmp_path / "faces"), "mix_seed_offset": 1, "crossover": crossover}})

    assert plan_job(job(8)).model.version == version  # num_ws = 8 at 32 px: crossover 8 is the last one
    with pytest.raises(GenerateError, match="generate.crossover must be a w index from 0 to 8 .* got 9"):
        plan_job(job(9))
    assert not (tmp_path / "faces").exists()
