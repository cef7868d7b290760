"""Closed-loop exact quotas, the label stage and balance reports, on a real local Ray.

A tiny conditional DCGAN (built-in faces' attribute names) is pushed to a temporary registry. The
quality gate's contrast threshold is set at a percentile of the model's own faces, so it really
rejects a share of the candidates and the loop must draw fresh seeds to fill each quota.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ganray.data.hf_features import to_ganray_table
from ganray.cli import main as cli
from ganray.config import DCGANConfig, GenerateJob, load_config
from ganray.generate.closedloop import candidate_seed, exact_quotas
from ganray.generate.job import QuotaNotMet, run_generate
from ganray.images import decode_png
from ganray.labels.quality import contrast_scores, grey_levels
from ganray.models import build_generator
from ganray.models.face import complete_conditions, labels_for_rows, render_faces
from ganray.registry import Registry

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = {"age_group": ["child", "adult", "senior"], "smile": ["no", "yes"]}  # as the built-in faces'
# 31 faces over 3 strata: quotas 11, 10, 10; shards of 2 faces (16 shards), psi 1.
CLOSED = {"count": 31, "shard_size": 2, "format": "parquet", "psi": 1.0, "seed_offset": 7, "batch_size": 64,
          "closed_loop": {"strata": ["age_group"]}}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    cfg = DCGANConfig(z_dim=16, g_width=8, conditional=True, embed_dim=4)
    g = build_generator(cfg, 32, ATTRIBUTES)
    with torch.no_grad():  # spread the weights: DCGAN's init gives near-flat images at this width
        for p in g.parameters():
            p.normal_(0.0, 0.3)
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    provenance = {"train_config": {"data": {"source": "synthetic", "synthetic": {"count": 300, "seed": 0}}}}
    registry.promote(registry.push(g.state_dict(), cfg.model_dump(), 32, ATTRIBUTES, provenance), "production")
    g.eval()
    rows = [{"age_group": "adult", "smile": "no"}] * 80
    contrast = contrast_scores(grey_levels(render_faces(g, list(range(80)), 1.0, labels_for_rows(g, rows))))
    # A threshold that rejects about 35 % of this model's faces.
    return {"url": registry.url, "generator": g, "min_contrast": float(np.percentile(contrast, 35))}


def gate(model: dict) -> dict:
    return {"detector": "none", "min_contrast": model["min_contrast"], "min_sharpness": 0.0}


def overrides(model: dict, output: str, params: dict) -> list[str]:
    return [f"registry.url={model['url']}", f"generate.output={output}", "generate.model=production",
            "generate.progress_interval_s=0.5", *(f"generate.{k}={json.dumps(v)}" for k, v in params.items())]


def generate(model: dict, output: str, **params) -> dict:
    return run_generate(load_config(GenerateJob, None, overrides(model, output, params)))


def snapshot(url: str) -> dict[str, bytes]:
    root = Path(url)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name not in ("summary.json", "card.json", "README.md") and "_lease" not in p.parts}


def entries(output: str) -> list[Path]:
    return sorted(Path(output, "_manifest").glob("shard-*.json"))


@pytest.fixture(scope="module")
def reference(ray_session, model, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("closed") / "faces")
    generate(model, output, **CLOSED, quality=gate(model))
    return output


def test_quotas_are_exact_and_every_face_passed_its_verification(reference, model):
    table = to_ganray_table(pq.read_table(os.path.join(reference, "data"))).sort_by("face_id")
    assert exact_quotas(31, [1, 1, 1]) == [11, 10, 10] and exact_quotas(10, [1, 1, 1]) == [4, 3, 3]
    assert table.num_rows == 31 and table.column("face_id").to_pylist() == list(range(31))
    strata = table.column("stratum").to_pylist()
    assert strata == ["child"] * 11 + ["adult"] * 10 + ["senior"] * 10  # stratum after stratum
    assert table.column("age_group").to_pylist() == strata  # rendered conditioned on its stratum
    assert table.column("label_age_group").to_pylist() == strata
    assert set(table.column("label_age_group_confidence").to_pylist()) == {1.0}
    assert min(table.column("quality_contrast").to_pylist()) >= np.float32(model["min_contrast"])

    # Each stratum's faces are its first passing candidates in attempt order, from the candidate seeds.
    g = model["generator"]
    for stratum in ("child", "senior"):
        rows = [r for r in table.to_pylist() if r["stratum"] == stratum]
        last = rows[-1]["attempt"]
        seeds = [candidate_seed(7, stratum, k) for k in range(last + 1)]
        conditions = [json.loads(r["conditions"]) for r in rows]
        assert [r["seed"] for r in rows] == [seeds[r["attempt"]] for r in rows]
        asked = [{"age_group": stratum, "smile": c} for c in
                 [complete_conditions(ATTRIBUTES, {"age_group": stratum}, s)["smile"] for s in seeds]]
        images = render_faces(g, seeds, 1.0, labels_for_rows(g, asked))
        passing = [k for k, c in enumerate(contrast_scores(grey_levels(images))) if c >= model["min_contrast"]]
        assert [r["attempt"] for r in rows] == passing  # the first quota-many, none skipped
        assert last + 1 > len(rows)  # the gate really rejected some
        assert conditions == [asked[r["attempt"]] for r in rows]
        np.testing.assert_array_equal(decode_png(rows[0]["image"]), images[rows[0]["attempt"]])

    report = json.loads(Path(reference, "balance_report.json").read_text())
    assert Path(reference, "balance_report.png").read_bytes()[:4] == b"\x89PNG"
    assert report["mode"] == "closed_loop" and report["total"]["max_abs_deviation"] == 0
    by_name = {r["stratum"]: r for r in report["strata"]}
    assert [by_name[s]["count"] for s in ("child", "adult", "senior")] == [11, 10, 10]
    assert [by_name[s]["target"] for s in ("child", "adult", "senior")] == [11, 10, 10]
    for r in report["strata"]:
        assert r["attempts"] == r["accepted"] + sum(r["rejects"].values()) and r["accepted"] == r["count"]
        assert 0 < r["acceptance_rate"] < 1 and set(r["rejects"]) == {"low_contrast"}
        assert r["labeler_agreement"] == 1.0  # the conditions labeler always agrees
    assert report["total"]["rejects"]["low_contrast"] == sum(r["rejects"]["low_contrast"] for r in report["strata"])


def test_same_bytes_whatever_the_batch_size_and_replicas(reference, model, tmp_path):
    output = str(tmp_path / "faces")
    generate(model, output, **{**CLOSED, "batch_size": 3, "replicas": 2}, quality=gate(model))
    assert snapshot(output) == snapshot(reference)


def test_a_killed_closed_loop_job_resumes_to_the_same_bytes(reference, model, ray_session, tmp_path):
    output = str(tmp_path / "faces")
    params = {**CLOSED, "batch_size": 2, "quality": gate(model)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "ganray.cli", "generate",
         *(a for o in overrides(model, output, params) for a in ("--set", o))],
        cwd=REPO, env={**os.environ, "RAY_ADDRESS": ray_session.address_info["gcs_address"]},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(entries(output)) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    assert 2 <= len(entries(output)) < 16 and not Path(output, "manifest.json").exists()
    time.sleep(1)  # let Ray stop the dead driver's workers
    summary = generate(model, output, **params)
    assert summary["resumed"] and summary["shards_this_run"] < 16
    assert snapshot(output) == snapshot(reference)
    assert cli(["generate", "--verify", output]) == 0


def test_attempt_budget_spent_error_exit_or_partial_set_with_report(model, ray_session, tmp_path, capsys):
    tight = {**CLOSED, "closed_loop": {"strata": ["age_group"], "max_attempts_per_face": 1.0}}
    failed = tmp_path / "failed"
    assert cli(["generate", *(a for o in overrides(model, str(failed), {**tight, "quality": gate(model)})
                              for a in ("--set", o))]) == 1
    err = capsys.readouterr().err
    assert "stratum child: quota 11, the attempt budget of 11 candidates ran out" in err
    assert "No manifest was written" in err and not (failed / "manifest.json").exists()

    partial = str(tmp_path / "partial")
    tight["closed_loop"]["on_budget_exhausted"] = "partial"
    summary = generate(model, partial, **tight, quality=gate(model))
    report = json.loads(Path(partial, "balance_report.json").read_text())
    assert summary["balance"]["short_strata"] == ["adult", "child", "senior"]
    rows = to_ganray_table(pq.read_table(os.path.join(partial, "data")))
    assert rows.num_rows == summary["faces"] < 31
    for r in report["strata"]:
        assert r["short"] and r["attempts"] == r["target"] and r["count"] == r["accepted"] < r["target"]
        assert r["count"] == rows.column("stratum").to_pylist().count(r["stratum"])
    assert report["total"]["max_abs_deviation"] > 0
    assert cli(["report", partial]) == 0
    assert "short of their quota (attempt budget spent): ['adult', 'child', 'senior']" in capsys.readouterr().out


def test_training_set_target_and_proportions(model, ray_session, tmp_path):
    from ganray.labels.histograms import synthetic_joint_counts

    counts = synthetic_joint_counts(300, 0, ["age_group"])
    output = str(tmp_path / "match")
    generate(model, output, count=13, shard_size=13, closed_loop={"strata": ["age_group"], "target": "training_set"})
    report = json.loads(Path(output, "balance_report.json").read_text())
    expected = exact_quotas(13, [counts[v] for v in ATTRIBUTES["age_group"]])
    assert [r["target"] for r in report["strata"]] == [r["count"] for r in report["strata"]] == expected

    output = str(tmp_path / "proportions")
    generate(model, output, count=7, shard_size=4, labeler={"name": "conditions"},
             closed_loop={"strata": ["age_group", "smile"], "target": "proportions",
                          "proportions": {"child/no": 0.5, "senior/yes": 0.25, "adult/yes": 0.25}})
    table = to_ganray_table(pq.read_table(os.path.join(output, "data")))
    # 3.5, 1.75, 1.75 -> 3, 1, 1 and two left: to the largest remainders (0.75, 0.75), then 0.5 is left out.
    assert sorted(table.column("stratum").to_pylist()) == ["adult/yes"] * 2 + ["child/no"] * 3 + ["senior/yes"] * 2


def test_label_stage_without_closed_loop_drops_rejects_and_counts_them(model, ray_session, tmp_path):
    output = str(tmp_path / "labeled")
    summary = generate(model, output, count=24, shard_size=8, balance=["age_group"], labeler={"name": "conditions"},
                       quality=gate(model))
    table = to_ganray_table(pq.read_table(os.path.join(output, "data")))
    assert 0 < table.num_rows == summary["faces"] < 24  # rejected faces are never written
    assert table.column("label_age_group").to_pylist() == table.column("age_group").to_pylist()
    manifest = json.loads(Path(output, "manifest.json").read_text())
    rejects = sum(e["verdicts"]["rejects"].get("low_contrast", 0) for e in manifest["shards"])
    assert rejects == 24 - table.num_rows
    report = json.loads(Path(output, "balance_report.json").read_text())
    assert report["mode"] == "balanced" and report["total"]["rejects"] == {"low_contrast": rejects}
    assert sum(r["count"] for r in report["strata"]) == table.num_rows


@pytest.mark.parametrize("bad, message", [
    ({"closed_loop": {"strata": ["age_group"], "target": "proportions", "proportions": {"child": 0.5}}},
     "closed_loop.proportions must be non-negative and sum to 1, got sum 0.5"),
    ({"closed_loop": {"strata": ["hair"]}}, "the 'conditions' labeler cannot label attribute 'hair'"),
    ({"closed_loop": {"strata": ["age_group"], "target": "proportions", "proportions": {"old": 1.0}}},
     "closed_loop.proportions names unknown strata ['old']"),
    ({"closed_loop": {"strata": ["age_group"]}, "balance": ["smile"]}, "generate.balance and generate.closed_loop"),
    ({"closed_loop": {"strata": ["age_group"], "max_attempts_per_face": 0.5}}, "max_attempts_per_face"),
])
def test_bad_closed_loop_config_exits_2_and_writes_nothing(bad, message, model, tmp_path, capsys):
    output = tmp_path / "faces"
    assert cli(["generate", *(a for o in overrides(model, str(output), {**CLOSED, **bad}) for a in ("--set", o))]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_report_of_generated_imported_and_foreign_folders(reference, tmp_path, capsys, s3_bucket):
    assert cli(["report", reference]) == 0
    out = capsys.readouterr().out
    assert "mode closed_loop, strata over ['age_group'], labeler conditions; 31 faces, target 31" in out
    assert "  child " in out and "rejects: low_contrast" in out
    from ganray import storage

    fs, _ = storage.url_to_fs(f"s3://{s3_bucket}")
    fs.put(reference + "/", f"{s3_bucket}/faces/", recursive=True)
    assert cli(["report", "--json", f"s3://{s3_bucket}/faces"]) == 0
    from_s3 = json.loads(capsys.readouterr().out)
    assert from_s3["source"] == f"s3://{s3_bucket}/faces" and from_s3["total"]["count"] == 31

    imported = tmp_path / "imported"
    imported.mkdir()
    manifest = {"format": "ganray-shards/1", "attributes": {"gender": ["female", "male"]},
                "counts": {"kept": 30}, "dropped": {"blank": 2, "blurry": 0},
                "label_histograms": {"gender": {"female": 18, "male": 12}},
                "balance": {"after": {"label_histograms": {"gender": {"female": 15, "male": 15}}}}, "shards": []}
    (imported / "manifest.json").write_text(json.dumps(manifest))
    assert cli(["report", "--write", str(imported)]) == 0
    out = capsys.readouterr().out
    assert "gender: max |count - target| 3.0" in out and "female 15, male 15" in out and "dropped: blank 2" in out
    assert json.loads((imported / "balance_report.json").read_text())["kind"] == "imported"
    assert (imported / "balance_report.png").exists()

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "job.json").write_bytes(Path(reference, "job.json").read_bytes())
    assert cli(["report", str(unfinished)]) == 2
    assert "is a ganray generate output that is not finished (no manifest.json)" in capsys.readouterr().err

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    assert cli(["report", str(foreign)]) == 2
    assert "is neither a ganray generate output" in capsys.readouterr().err


def test_a_job_without_labels_keeps_the_identity_it_had_before_labels(model, ray_session, tmp_path):
    from ganray.generate.job import plan_job, with_environment

    job = load_config(GenerateJob, None, overrides(model, str(tmp_path / "faces"), {"count": 5, "balance": ["smile"]}))
    plan = with_environment(plan_job(job))
    assert plan.labeling is None and plan.closed is None
    assert set(plan.identity["parameters"]) == {
        "layout", "balance_order", "model_version", "model_content_hash", "resolution", "count", "shard_size",
        "format", "psi", "seed_offset", "conditions", "balance", "precision", "device", "device_kind", "torch",
        "table_layout", "parquet_files"}  # how Parquet files hold images and labels, their names (not labels)
    assert plan.identity["parameters"]["layout"] == "ganray-generate/2"


def test_training_set_counts_of_an_imported_dataset_are_joint_counts_of_its_label_columns(tmp_path):
    import pyarrow as pa

    from ganray.labels.histograms import import_joint_counts, training_joint_counts

    shard = tmp_path / "imports" / "20261123T000000Z-0123456789ab" / "shard-00000.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image": [b""] * 5, "gender": [0, 1, 1, 0, 1], "race": [2, 0, 0, 2, 1]}), shard)
    manifest = {"format": "ganray-shards/1", "attributes": {"gender": ["female", "male"],
                                                             "race": ["a", "b", "c"]},
                "label_histograms": {"gender": {"female": 2, "male": 3}},
                "shards": [{"file": str(shard.relative_to(tmp_path)), "rows": 5}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert import_joint_counts(str(tmp_path), ["gender", "race"]) == {"female/c": 2, "male/a": 2, "male/b": 1}
    provenance = {"train_config": {"data": {"source": "shards", "url": str(tmp_path)}}}
    assert training_joint_counts(provenance, ["race"]) == {"c": 2, "a": 2, "b": 1}
    with pytest.raises(ValueError, match=r"has no labels for \['age'\]"):
        import_joint_counts(str(tmp_path), ["age"])
