"""Generated outputs where users load them: Hugging Face `datasets` (Image + ClassLabel features in
the Parquet shards, local and on S3), WebDataset tar shards, the one ganray reader for the old and
new table layouts (an older output keeps its layout when resumed), and docs/consuming.md's recipes."""
from __future__ import annotations

import fnmatch
import functools
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ganray import storage
from ganray.config import DCGANConfig, GenerateJob, load_config
from ganray.data.hf_features import HF_LAYOUT, PLAIN_LAYOUT, features_of, hf_table, to_ganray_table
from ganray.data.manifest import read_face_rows
from ganray.generate import job as generate_job
from ganray.generate.card import build_card
from ganray.generate.job import plan_job, run_generate
from ganray.generate.output import (HUB_FILES, SHARD_FILES, GenerateError, OutputLayout, keep_existing_layout,
                                    verify_output)
from ganray.generate.plan import ShardRange
from ganray.models import build_generator
from ganray.registry import Registry

REPO = Path(__file__).resolve().parents[1]
# The demo model's attributes (ganray/data/synthetic.py), so docs/consuming.md's recipes run as written.
ATTRIBUTES = {"skin_tone": ["very_light", "light", "medium", "tan", "dark"], "age_group": ["child", "adult", "senior"]}
# 12 labeled faces in 3 shards, balanced over age group; the conditions labeler gives label_* columns.
JOB = {"count": 12, "shard_size": 4, "psi": 0.8, "seed_offset": 100, "balance": ["age_group"],
       "labeler": {"name": "conditions"}, "format": "parquet"}
DOCS_OUT, DOCS_WDS_OUT = "./out/demo-faces-v1", "./out/demo-faces-wds"  # the outputs docs/consuming.md reads


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = DCGANConfig(z_dim=16, g_width=8, conditional=True, embed_dim=4)
    g = build_generator(cfg, 32, ATTRIBUTES)
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0.0, 0.3)
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    registry.promote(registry.push(g.state_dict(), cfg.model_dump(), 32, ATTRIBUTES, {"test": True}), "production")
    return registry.url


def job_config(registry_url: str, output: str, **params) -> GenerateJob:
    return load_config(GenerateJob, None, [
        f"registry.url={registry_url}", f"generate.output={output}", "generate.model=production",
        *(f"generate.{k}={json.dumps(v)}" for k, v in params.items())])


def generate(registry_url: str, output: str, **params) -> dict:
    return run_generate(job_config(registry_url, output, **params), log=lambda _: None)


@pytest.fixture(scope="module")
def parquet_out(ray_session, registry_url, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parquet") / "faces"
    generate(registry_url, str(out), **JOB)
    return out


@pytest.fixture(scope="module")
def webdataset_out(ray_session, registry_url, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("webdataset") / "faces"
    generate(registry_url, str(out), **{**JOB, "format": "webdataset", "class_attribute": "age_group"})
    return out


def rows(out: Path, layout_dir: str = "data") -> list[dict]:
    fs, _ = storage.url_to_fs(str(out))
    return [row for path in sorted((out / layout_dir).iterdir())
            for row in read_face_rows(fs, str(path)).to_pylist()]


# -- the table layout, without Ray --------------------------------------------------------------


def test_a_hf_table_declares_its_features_and_reads_back_as_ganray_rows():
    columns = {"face_id": [0, 1], "image": [b"png0", b"png1"], "gender": ["male", "female"],
               "label_gender_confidence": [1.0, 0.5]}
    table = hf_table(columns, {"face_id": pa.int64(), "label_gender_confidence": pa.float32()},
                     {"gender": ["female", "male"]})
    assert features_of(table.schema) == {
        "face_id": {"dtype": "int64", "_type": "Value"}, "image": {"_type": "Image"},
        "gender": {"names": ["female", "male"], "_type": "ClassLabel"},
        "label_gender_confidence": {"dtype": "float32", "_type": "Value"}}
    assert table.column("gender").to_pylist() == [1, 0]
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    back = to_ganray_table(table)
    assert back.column("image").to_pylist() == [b"png0", b"png1"] and back.column("gender").to_pylist() == ["male", "female"]
    with pytest.raises(ValueError, match="'gender' holds \\['other'\\]"):
        hf_table({"gender": ["other"]}, {}, {"gender": ["female", "male"]})


def test_class_attribute_is_checked_before_anything_is_written(registry_url, tmp_path):
    with pytest.raises(Exception, match="class_attribute is only read with generate.format 'webdataset'"):
        job_config(registry_url, str(tmp_path / "a"), **{**JOB, "class_attribute": "age_group"})
    with pytest.raises(GenerateError, match="generate.class_attribute: 'hair' is neither"):
        plan_job(job_config(registry_url, str(tmp_path / "b"), **{**JOB, "format": "webdataset",
                                                                  "class_attribute": "hair"}))
    assert not (tmp_path / "b").exists()


# -- Hugging Face datasets -----------------------------------------------------------------------


def _check_hf_dataset(ds, expected: list[dict]) -> None:
    import datasets
    from PIL import Image

    assert ds.features["image"] == datasets.Image()
    assert ds.features["skin_tone"] == datasets.ClassLabel(names=ATTRIBUTES["skin_tone"])
    assert ds.features["age_group"] == datasets.ClassLabel(names=ATTRIBUTES["age_group"])
    assert ds.features["label_age_group"] == datasets.ClassLabel(names=ATTRIBUTES["age_group"])
    assert ds.features["label_age_group_confidence"] == datasets.Value("float32")
    assert ds.features["seed"] == datasets.Value("int64") and ds.features["conditions"] == datasets.Value("string")
    got = sorted(ds, key=lambda r: r["face_id"])
    assert [r["face_id"] for r in got] == [r["face_id"] for r in expected] == list(range(12))
    for row, want in zip(got, expected):
        assert isinstance(row["image"], Image.Image) and row["image"].size == (32, 32)
        assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(io.BytesIO(want["image"]))))
        assert ds.features["skin_tone"].int2str(row["skin_tone"]) == want["skin_tone"]
        assert ds.features["age_group"].int2str(row["age_group"]) == want["age_group"]
        assert row["seed"] == want["seed"]


def test_a_parquet_output_folder_loads_in_datasets_as_images_and_class_labels(parquet_out, tmp_path):
    import datasets

    loaded = datasets.load_dataset("parquet", data_dir=str(parquet_out))  # the output's folder, as it is
    assert list(loaded) == ["train"]
    ds = loaded["train"]
    expected = rows(parquet_out)
    assert [r["face_id"] for r in ds] == list(range(12))  # every face once, in face order
    _check_hf_dataset(ds, expected)
    assert ds.cast_column("image", datasets.Image(decode=False))["image"] == [
        {"bytes": r["image"], "path": None} for r in expected]  # the very PNG bytes ganray reads
    manifest = json.loads((parquet_out / "manifest.json").read_text())
    assert manifest["table_layout"] == manifest["parameters"]["table_layout"] == HF_LAYOUT
    assert manifest["parameters"]["parquet_files"] == HUB_FILES
    assert sorted(p.name for p in (parquet_out / "data").iterdir()) == [
        f"train-0000{k}-of-00003.parquet" for k in range(3)]
    # Other files in an output (evaluation results the studio shows, files named like splits, PNG
    # folders) are not read: the shards' names are the first pattern datasets looks for.
    kept = tmp_path / "faces"
    shutil.copytree(parquet_out, kept)
    for extra in ("eval.json", "eval-closest-pairs.png", "test/notes.json", "validation.json"):
        (kept / extra).parent.mkdir(exist_ok=True)
        (kept / extra).write_text("{}")
    (kept / "png" / "shard-00000").mkdir(parents=True)  # format both: a PNG folder's rows
    shutil.copy(next((kept / "data").iterdir()), kept / "png" / "shard-00000" / "metadata.parquet")
    assert datasets.load_dataset("parquet", data_dir=str(kept), split="train")["face_id"] == list(range(12))


def test_a_shard_without_faces_has_no_row_group_and_loads_in_datasets(parquet_out, tmp_path):
    """A closed-loop stratum that got no face writes an empty shard; datasets fails on a 0-row row group."""
    import datasets

    from ganray.generate.pipeline import _parquet_bytes

    kept = tmp_path / "faces"
    shutil.copytree(parquet_out, kept)
    last = sorted((kept / "data").iterdir())[-1]
    schema = pq.read_schema(last)
    names = {c: f["names"] for c, f in features_of(schema).items() if f.get("_type") == "ClassLabel"}
    last.write_bytes(_parquet_bytes({c: [] for c in schema.names}, OutputLayout(str(kept), "parquet"), names))
    empty = pq.ParquetFile(last)
    assert empty.metadata.num_row_groups == 0 and empty.schema_arrow.names == schema.names
    assert datasets.load_dataset("parquet", data_dir=str(kept), split="train")["face_id"] == list(range(8))


def test_a_parquet_output_on_s3_loads_in_datasets(parquet_out, s3_server, s3_bucket):
    import datasets

    for shard in sorted((parquet_out / "data").iterdir()):  # the shards' bytes, as the job wrote them
        storage.atomic_write(f"s3://{s3_bucket}/faces/data/{shard.name}", shard.read_bytes())
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server}}
    ds = datasets.load_dataset("parquet", data_files=f"s3://{s3_bucket}/faces/data/*.parquet", split="train",
                               storage_options=options)
    _check_hf_dataset(ds, rows(parquet_out))
    # datasets resolves `data_dir` as a local folder (docs/consuming.md: on S3, name the files)
    with pytest.raises(datasets.data_files.EmptyDatasetError, match="doesn't contain any data files"):
        datasets.load_dataset("parquet", data_dir=f"s3://{s3_bucket}/faces", split="train", storage_options=options)


# -- the one reader, and an output of the older layout ---------------------------------------------


@pytest.fixture(scope="module")
def older_layout_out(ray_session, registry_url, tmp_path_factory) -> Path:
    """JOB's output as ganray wrote it before table layouts and shard naming (plain/1 in
    parquet/shard-NNNNN.parquet, neither key in job.json), with its last shard's commit and the
    manifest gone: a run killed before it finished."""
    out = tmp_path_factory.mktemp("older") / "faces"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate_job, "output_parameters", lambda layout: {})
        mp.setattr(generate_job, "OutputLayout",
                   functools.partial(OutputLayout, table_layout=PLAIN_LAYOUT, parquet_files=SHARD_FILES))
        generate(registry_url, str(out), **JOB)
    (out / "_manifest" / "shard-00002.json").unlink()
    (out / "manifest.json").unlink()
    return out


def test_resuming_an_older_layout_output_keeps_its_layout_and_reads_as_the_same_rows(
        older_layout_out, parquet_out, registry_url):
    out = older_layout_out
    job_before = (out / "job.json").read_bytes()
    shard_before = (out / "parquet" / "shard-00002.parquet").read_bytes()
    summary = generate(registry_url, str(out), **JOB)  # this ganray, the same job
    assert summary["resumed"] and summary["shards_this_run"] == 1 and summary["faces"] == 12
    assert (out / "job.json").read_bytes() == job_before  # the same job id: not refused as another job
    assert (out / "parquet" / "shard-00002.parquet").read_bytes() == shard_before  # rewritten in plain/1
    assert json.loads((out / "manifest.json").read_text())["table_layout"] == PLAIN_LAYOUT
    assert all(features_of(pq.read_schema(p)) is None for p in (out / "parquet").iterdir())
    assert verify_output(str(out))["damaged"] == {}
    # One reader, both layouts: the same rows (PNG bytes, label strings); only the job ids differ.
    old, new = rows(out, "parquet"), rows(parquet_out)
    assert [r.pop("job_id") for r in old] != [r.pop("job_id") for r in new]
    assert old == new and isinstance(new[0]["image"], bytes) and new[0]["age_group"] in ATTRIBUTES["age_group"]
    # Its shards keep their names, and its card points at them.
    assert sorted(p.name for p in (out / "parquet").iterdir()) == [f"shard-0000{k}.parquet" for k in range(3)]
    assert not (out / "data").exists()
    card = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert card["configs"][0]["data_files"] == [{"split": "train", "path": "parquet/*.parquet"}]
    assert build_card(str(out), splits={"train": 0.5, "test": 0.5})["splits"] == {
        "train": {"shards": ["parquet/shard-00000.parquet", "parquet/shard-00001.parquet"], "faces": 8},
        "test": {"shards": ["parquet/shard-00002.parquet"], "faces": 4}}


def test_an_output_started_before_shard_naming_keeps_its_names_and_identity(tmp_path):
    parameters = {"format": "parquet", "count": 12, "table_layout": HF_LAYOUT}
    theirs = {"job_id": "0123456789abcdef", "parameters": parameters}
    (tmp_path / "job.json").write_text(json.dumps(theirs))
    layout = OutputLayout(str(tmp_path), "parquet", shard_count=3)
    mine = {"job_id": "fedcba9876543210", "parameters": {**parameters, "parquet_files": HUB_FILES}}
    kept, identity = keep_existing_layout(layout, mine)
    assert (kept.parquet_files, kept.table_layout, identity) == (SHARD_FILES, HF_LAYOUT, theirs)
    assert kept.parquet_relpath(ShardRange(2, 8, 12)) == "parquet/shard-00002.parquet"
    for other in ({**parameters, "count": 13}, mine["parameters"]):  # another job, or one that has the key
        (tmp_path / "job.json").write_text(json.dumps({"job_id": "0123456789abcdef", "parameters": other}))
        assert keep_existing_layout(layout, mine) == (layout, mine)


def test_datasets_takes_every_shard_by_its_name_or_past_99999_shards_none(tmp_path):
    from datasets.data_files import SPLIT_PATTERN_SHARDED, get_data_patterns

    few = OutputLayout(str(tmp_path), "parquet", shard_count=3).parquet_relpath
    many = OutputLayout(str(tmp_path), "parquet", shard_count=100_000).parquet_relpath
    names = [few(ShardRange(2, 8, 12)), many(ShardRange(7, 7, 8)), many(ShardRange(99_999, 0, 1))]
    assert names[:2] == ["data/train-00002-of-00003.parquet", "data/train-000007-of-100000.parquet"]
    sharded = SPLIT_PATTERN_SHARDED.replace("{split}", "*")
    assert [fnmatch.fnmatch(name, sharded) for name in names] == [True, False, False]
    (tmp_path / "data").mkdir()
    (tmp_path / names[1]).write_bytes(b"")
    (tmp_path / "job.json").write_text("{}")
    patterns = get_data_patterns(str(tmp_path))  # past 99,999 shards: found by the word "train"
    assert list(patterns) == ["train"] and fnmatch.fnmatch(names[1], patterns["train"][0])


# -- WebDataset ---------------------------------------------------------------------------------


def test_webdataset_shards_read_through_a_dataloader_hold_the_parquet_bytes(webdataset_out, parquet_out):
    import webdataset as wds
    from torch.utils.data import DataLoader

    urls = [str(p) for p in sorted((webdataset_out / "webdataset").iterdir())]
    assert [Path(u).name for u in urls] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    samples = list(DataLoader(wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "png", "json", "cls"),
                              batch_size=None))
    parquet = {r["face_id"]: r for r in rows(parquet_out)}
    assert [key for key, *_ in samples] == [f"{i:09d}" for i in range(12)]
    for key, png, row_json, cls in samples:
        want = dict(parquet[int(key)])
        assert png == want.pop("image")  # same seeds, same PNG bytes
        row = json.loads(row_json)
        assert row["label_age_group_confidence"] == pytest.approx(want.pop("label_age_group_confidence"))
        del row["label_age_group_confidence"], row["job_id"], want["job_id"]
        assert row == want  # every label (strings) and every other column
        assert int(cls) == ATTRIBUTES["age_group"].index(row["label_age_group"])
    fs, _ = storage.url_to_fs(str(webdataset_out))
    assert rows(webdataset_out, "webdataset")[5]["seed"] == 105  # ganray's reader reads tar shards too
    reports = [json.loads((out / "balance_report.json").read_text()) for out in (webdataset_out, parquet_out)]
    assert [r.pop("job_id") for r in reports] and reports[0] == reports[1]  # the same counts from tar rows


def test_webdataset_shards_are_verified_and_resumed_like_parquet(webdataset_out, registry_url):
    out = webdataset_out
    manifest = json.loads((out / "manifest.json").read_text())
    tar = out / "webdataset" / "shard-00001.tar"
    intact = tar.read_bytes()
    entry = manifest["shards"][1]["files"]["webdataset/shard-00001.tar"]
    assert entry["sha256"] == storage.sha256_hex(intact) and entry["bytes"] == len(intact)
    tar.write_bytes(intact[:5000] + bytes([intact[5000] ^ 1]) + intact[5001:])  # one flipped bit
    assert verify_output(str(out))["damaged"] == {"shard-00001": "webdataset/shard-00001.tar does not match its sha256"}
    summary = generate(registry_url, str(out), **{**JOB, "format": "webdataset", "class_attribute": "age_group"})
    assert summary["resumed"] and summary["shards_this_run"] == 1
    assert tar.read_bytes() == intact and verify_output(str(out))["damaged"] == {}


# -- docs/consuming.md ----------------------------------------------------------------------------


def test_every_recipe_in_consuming_md_runs_on_a_generated_output(parquet_out, webdataset_out, tmp_path,
                                                                 monkeypatch):
    page = (REPO / "docs" / "consuming.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 4, "one recipe each: Ray Data, datasets, WebDataset, pyarrow"
    out = tmp_path / "out"
    out.mkdir()
    (out / "demo-faces-v1").symlink_to(parquet_out)
    (out / "demo-faces-wds").symlink_to(webdataset_out)
    monkeypatch.chdir(tmp_path)
    results = []
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, "docs/consuming.md", "exec"), namespace)
        results.append(namespace)
    ray_data, hf, webdataset, arrow = results
    assert tuple(ray_data["images"].shape) == (12, 3, 32, 32) and sorted(ray_data["labels"].tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert -1 <= float(ray_data["images"].min()) < float(ray_data["images"].max()) <= 1
    assert hf["face"]["image"].size == (32, 32) and hf["name"] in ATTRIBUTES["age_group"]
    torch_face = hf["torch_faces"][0]
    assert tuple(torch_face["image"].shape) == (3, 32, 32) and torch_face["image"].dtype == torch.uint8
    assert torch_face["age_group"].dtype == torch.int64
    assert tuple(webdataset["images"].shape) == (12, 3, 32, 32) and webdataset["classes"].tolist() == [0, 1, 2] * 4
    assert arrow["names"] == ATTRIBUTES["age_group"] and arrow["children"].num_rows == 4
