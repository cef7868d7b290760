"""`ganray eval` on a real local Ray: a registry model and a generated output against a real import;
the numbers match a driver-side recomputation; cached reference features are reused and keyed;
results reach the registry; bad input exits 2 and writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ganray import storage
from ganray.cli import main as cli
from ganray.config import DCGANConfig, ExtractorConfig, ImportConfig
from ganray.data.importer import run_import
from ganray.data.manifest import shard_paths
from ganray.data.synthetic import render_face
from ganray.eval import job as eval_job
from ganray.eval import metrics
from ganray.eval.extractors import build_extractor
from ganray.images import decode_png
from ganray.models import build_generator
from ganray.models.face import render_faces
from ganray.registry import Registry

RES = 32
MODEL = DCGANConfig(z_dim=8, g_width=4).model_dump()
COUNT, REFERENCE_COUNT = 24, 32
SETTINGS = {"eval.count": COUNT, "eval.reference_count": REFERENCE_COUNT, "eval.kid_subset_size": 12,
            "eval.kid_subsets": 5, "eval.small_count": 8, "eval.extractor.pixels_side": 8,
            "eval.extractor.batch_size": 16, "eval.render_batch_size": 16}


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("faces")
    for i in range(40):
        Image.fromarray(render_face(i, RES)[0]).save(src / f"face{i:03d}.png")
    dst = str(tmp_path_factory.mktemp("ref") / "faces")
    run_import(ImportConfig(src=str(src), dst=dst, resolution=RES, min_size=8, blank_std=0, blur_threshold=0,
                            shard_rows=16))
    return dst


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    registry = Registry(str(tmp_path_factory.mktemp("reg") / "registry"))
    for seed in (1, 2):
        torch.manual_seed(seed)
        registry.push(build_generator(DCGANConfig(**MODEL), RES, {}).state_dict(), MODEL, RES, {}, {"seed": seed})
    return registry


def run_eval(registry: Registry, reference: str, output: Path, **extra) -> int:
    settings = {**SETTINGS, "registry.url": registry.url, "eval.reference": reference,
                "eval.output": str(output), **extra}
    return cli(["eval", "--config", str(eval_job_config()),
                *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])


def eval_job_config() -> Path:
    return Path(__file__).resolve().parents[1] / "configs" / "eval_demo.yaml"


def reference_images(reference: str, count: int) -> np.ndarray:
    manifest = json.loads(storage.read_bytes(storage.join(reference, "manifest.json")))
    rows = [data for path in shard_paths(reference, manifest) for data in pq.read_table(path)["image"].to_pylist()]
    return np.stack([decode_png(data) for data in rows[:count]])


@pytest.fixture(scope="module")
def v1_result(registry, reference, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "v1.json"
    assert run_eval(registry, reference, out, **{"eval.model": "v1"}) == 0
    return json.loads(out.read_text())


def test_model_eval_matches_driver_side_numbers_and_is_recorded(v1_result, registry, reference):
    result = v1_result
    assert result["model_version"] == "v1" and result["reference_cache"]["hit"] is False
    assert result["comparable_to_published"] is False and "not comparable" in result["note"]
    assert registry.evaluation("v1", "default") == result

    # The same numbers from features computed here, on the driver, without Ray.
    extractor = build_extractor(ExtractorConfig(pixels_side=8))
    generator = registry.load_generator("v1").generator
    fake = extractor(render_faces(generator, list(range(COUNT)), 1.0, None, "auto"))["features"]
    real = extractor(reference_images(reference, REFERENCE_COUNT))["features"]
    assert result["metrics"]["fid"] == pytest.approx(metrics.fid(real, fake), rel=1e-6)
    kid = metrics.kid(real, fake, subset_size=12, subsets=5)
    assert result["metrics"]["kid_mean"] == pytest.approx(kid["kid_mean"], rel=1e-6)
    pr = metrics.precision_recall(real, fake)
    assert (result["metrics"]["precision"], result["metrics"]["recall"]) == (pr["precision"], pr["recall"])
    assert result["fid_sample_size_bias"]["fid_small_count"] == 8


def test_cached_features_are_what_is_read(v1_result, reference):
    manifest = json.loads(storage.read_bytes(storage.join(reference, "manifest.json")))
    cfg = ExtractorConfig(pixels_side=8)
    key = eval_job.cache_key_fields(cfg, manifest, REFERENCE_COUNT)
    cache = v1_result["reference_cache"]["url"]
    real, info = eval_job.reference_features(reference, manifest, REFERENCE_COUNT, cfg)
    assert info == {"url": cache, "hit": True}
    eval_job.write_cached(cache, key, {"features": real["features"] + 0.5})  # planted under the same key
    planted, _ = eval_job.reference_features(reference, manifest, REFERENCE_COUNT, cfg)
    np.testing.assert_array_equal(planted["features"], real["features"] + 0.5)
    eval_job.write_cached(cache, key, real)
    # Another extractor setting names another file, not there yet: computed afresh (as v1's first run was).
    assert eval_job.cache_url(reference, eval_job.cache_key_fields(ExtractorConfig(pixels_side=4), manifest,
                                                                   REFERENCE_COUNT)) != cache


def test_cache_key_changes_with_every_input_and_a_foreign_key_is_not_read(tmp_path):
    manifest = {"manifest_hash": "a" * 64}
    base = eval_job.cache_key_fields(ExtractorConfig(), manifest, 100)
    variants = [
        eval_job.cache_key_fields(ExtractorConfig(resize="legacy"), manifest, 100),
        eval_job.cache_key_fields(ExtractorConfig(pixels_side=8), manifest, 100),
        eval_job.cache_key_fields(ExtractorConfig(), {"manifest_hash": "b" * 64}, 100),  # the dataset changed
        eval_job.cache_key_fields(ExtractorConfig(), manifest, 101),
        eval_job.cache_key_fields(ExtractorConfig(name="inception_v3", weights="w", weights_sha256="c" * 64),
                                  manifest, 100),
        eval_job.cache_key_fields(ExtractorConfig(name="inception_v3", weights="w", weights_sha256="d" * 64),
                                  manifest, 100),
    ]
    urls = {eval_job.cache_url(str(tmp_path), k) for k in [base, *variants]}
    assert len(urls) == 1 + len(variants)
    url = eval_job.cache_url(str(tmp_path), base)
    eval_job.write_cached(url, base, {"features": np.ones((2, 3), np.float32)})
    assert eval_job.read_cached(url, base)["features"].shape == (2, 3)
    assert eval_job.read_cached(url, variants[0]) is None  # a file holding another key is never used
    Path(url).write_bytes(b"not npz")
    assert eval_job.read_cached(url, base) is None


def test_generated_output_gives_the_same_numbers_as_the_model(v1_result, registry, reference, tmp_path):
    out = str(tmp_path / "gen")
    assert cli(["generate", "--set", f"registry.url={registry.url}", "--set", "generate.model=v1",
                "--set", f"generate.output={out}", "--set", f"generate.count={COUNT}", "--set", "generate.psi=1.0",
                "--set", "generate.shard_size=16", "--set", "generate.format=parquet"]) == 0
    assert run_eval(registry, reference, tmp_path / "from_output.json",
                    **{"eval.model": "null", "eval.generated": out}) == 0
    from_model = v1_result
    from_output = json.loads((tmp_path / "from_output.json").read_text())
    assert from_output["model_version"] == "v1" and from_output["generated"] == out
    assert from_output["reference_cache"] == {"url": from_model["reference_cache"]["url"], "hit": True}
    assert from_output["metrics"] == from_model["metrics"]  # the same faces, read back from the shards
    assert from_output["comparable"] == from_model["comparable"]


@pytest.mark.parametrize("extra, message", [
    ({"eval.model": "v1", "eval.reference": "/nonexistent/ref"}, "no imported dataset"),
    ({"eval.model": "v9"}, "unknown model 'v9'"),
    ({"eval.model": "v1", "eval.generated": "/x"}, "exactly one of eval.model"),
    ({"eval.model": "v1", "eval.reference_count": 1000}, "1000 images asked"),
    ({"eval.model": "big"}, "renders 64x64 faces"),
    ({"eval.model": "null", "eval.generated": "/nonexistent/out"}, "not a finished `ganray generate` output"),
    ({"eval.model": "v1", "eval.extractor.name": "inception_v3", "eval.extractor.weights": "/nonexistent.pth",
      "eval.extractor.weights_sha256": "ab" * 32}, "Inception weights not found"),
])
def test_bad_input_exits_2_and_writes_nothing(extra, message, registry, reference, tmp_path, capsys):
    if extra.get("eval.model") == "big" and "big" not in registry.aliases():
        torch.manual_seed(0)
        big = registry.push(build_generator(DCGANConfig(**MODEL), 64, {}).state_dict(), MODEL, 64, {}, {})
        registry.promote(big, "big")
    out = tmp_path / "result.json"
    assert run_eval(registry, reference, out, **extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
