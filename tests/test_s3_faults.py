"""S3 faults, through the commands a user runs, against a real S3-protocol server on loopback:
wrong credentials, a missing bucket, and the endpoint going away in the middle of a write of an
import shard, a training checkpoint, a generation shard and a registry push.

Each must end with a clear error that names the location (never a credential) and a non-zero
exit; no manifest may list a shard or checkpoint that is not complete; and the same command,
re-run once the endpoint is back, must finish the job exactly once: the same bytes as a run that
was never interrupted. The endpoint is made to go away for real (tests/s3_fault_proxy.py: the
connection carrying the write is reset part way through the request, and new connections are
refused); nothing inside ganray, s3fs or botocore is patched.
"""
from __future__ import annotations

import io
import json
import re
import urllib.request

import pyarrow.parquet as pq
import pytest

from conftest import REPO
from ganray import storage
from ganray.data.hf_features import to_ganray_table
from ganray.cli import main as cli
from ganray.data.synthetic import render_face
from ganray.images import encode_png
from ganray.registry import Registry
from ganray.train import checkpoint as ckpt

RES = 32
SECRET = "wRoNg+SeCrEt/0123456789abcdefghijklmnopqrs"  # must never be printed
TRAIN = ["data.source=shards", f"data.resolution={RES}", "model.conditional=false", "model.g_width=8",
         "model.d_width=8", "model.z_dim=16", "train.batch_size=8", "train.num_workers=2", "train.max_steps=8",
         "train.checkpoint_every=4", "train.log_every=4", "train.num_to_keep=5", "train.max_failures=0",
         "train.precision=fp32"]
GENERATE = {"generate.model": "v1", "generate.count": 12, "generate.shard_size": 4, "generate.format": "parquet",
            "generate.psi": 0.7, "generate.batch_size": 4, "generate.lease_expiry_s": 0.5}


def sets(pairs) -> list[str]:
    return [a for k, v in pairs for a in ("--set", f"{k}={v}")]


def train_args(base: str, run: str) -> list[str]:
    return ["train", "-c", str(REPO / "configs" / "demo.yaml"), *sets(o.split("=", 1) for o in TRAIN),
            *sets([("data.url", f"{base}/faces"), ("run.storage_path", f"{base}/runs"), ("run.name", run)])]


def generate_args(registry: str, output: str) -> list[str]:
    return ["generate", *sets([("registry.url", registry), ("generate.output", output), *GENERATE.items()])]


def import_args(base: str, dst: str) -> list[str]:
    return ["data", "import", f"{base}/raw", dst, "--resolution", str(RES), "--set", "import.shard_rows=8"]


def files_under(url: str) -> dict[str, bytes]:
    """Every object under `url`, by key relative to it (leases and the run's timings left out)."""
    fs, root = storage.url_to_fs(url)
    return {rel: fs.cat_file(path) for path in fs.find(root)
            if not (rel := path[len(root):].lstrip("/")).endswith(("summary.json", "card.json", "README.md")) and not rel.startswith("_lease/")}


def assert_clear_failure(capsys, *must_name: str) -> str:
    """ganray's own error message (what aiohttp may log about its reset connections before it is
    not ganray's), which names each of `must_name` and never the secret key."""
    full = capsys.readouterr().err
    assert SECRET not in full, full
    start = re.search(r"ganray [a-z]+: error:", full)
    assert start, full
    err = full[start.start():]
    assert "Traceback" not in err, full
    for words in must_name:
        assert words in err, f"{words!r} not in: {err}"
    return err


@pytest.fixture(scope="module")
def base(ray_session, s3_server) -> str:
    """A bucket with raw images, their import, a trained run and a registry holding it: the
    uninterrupted runs that the interrupted ones must equal."""
    import boto3

    bucket = "ganray-faults"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    base = f"s3://{bucket}"
    fs, _ = storage.url_to_fs(base)
    fs.pipe({f"{bucket}/raw/face-{i:04d}.png": encode_png(render_face(i, 64)[0]) for i in range(20)})
    assert cli(import_args(base, f"{base}/faces")) == 0
    assert cli(train_args(base, "reference")) == 0
    assert cli(["registry", "push", "--registry", f"{base}/registry", "--from-run", f"{base}/runs", "reference"]) == 0
    return base


def moto_auth(endpoint: str, on: bool) -> None:
    """Turn the S3 server's credential checks on (every request must be signed by a key it knows:
    none here, so any key is wrong) or off (the default: any key is accepted)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture
def wrong_credentials(base, s3_server, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still hold the right keys
    moto_auth(s3_server, on=True)
    yield
    moto_auth(s3_server, on=False)
    s3fs.S3FileSystem.clear_instance_cache()


def every_command(base: str) -> dict[str, list[str]]:
    """Each command, writing under `base` (a bucket that may not exist)."""
    return {
        "import.dst": import_args(base, f"{base}/faces-again"),
        "run.storage_path": train_args(base, "again"),
        "--registry": ["registry", "push", "--registry", f"{base}/registry", "--from-run", f"{base}/runs", "reference"],
        "registry.url": generate_args(f"{base}/registry", f"{base}/generated-again"),
    }


def test_wrong_credentials_are_refused_naming_the_location_and_never_the_secret(base, wrong_credentials, capsys):
    for what, args in every_command(base).items():
        assert cli(args) == 2, what
        err = assert_clear_failure(capsys, base, "credentials were refused", "InvalidAccessKeyId", "AWS_PROFILE")
        assert re.search(rf"(import\.src|{re.escape(what)}): cannot use s3://", err), err


def test_a_missing_bucket_is_refused_naming_it(base, capsys):
    missing = "s3://ganray-no-such-bucket"
    for what, args in every_command(missing).items():
        if what == "run.storage_path":  # data.url must exist: point only the run at the missing bucket
            args = train_args(base, "again") + ["--set", f"run.storage_path={missing}/runs"]
        if what == "registry.url":  # the registry must exist to get as far as the output
            args = generate_args(f"{base}/registry", f"{missing}/generated")
            what = "generate.output"
        assert cli(args) == 2, what
        err = assert_clear_failure(capsys, "bucket 'ganray-no-such-bucket' does not exist", missing)
        assert re.search(rf"(import\.src|{re.escape(what)}): cannot use {missing}", err), err


def test_import_cut_mid_shard_lists_nothing_and_a_rerun_equals_the_uninterrupted(base, s3_proxy, capsys):
    bucket = base.removeprefix("s3://")
    dst = f"{base}/faces-cut"
    s3_proxy.cut_at(rf"PUT /{bucket}/faces-cut/imports/[^ ]*/shard-00001\.parquet".encode())
    assert cli(import_args(base, dst)) == 1
    assert s3_proxy.cuts and not s3_proxy.is_up
    assert_clear_failure(capsys, s3_proxy.endpoint, f"/{bucket}/faces-cut/", "run the same command again")
    s3_proxy.up()
    assert not storage.exists(f"{dst}/manifest.json")  # nothing lists the shards of the failed import

    assert cli(import_args(base, dst)) == 0
    reference, again = (json.loads(storage.read_bytes(f"{url}/manifest.json")) for url in (f"{base}/faces", dst))
    assert again["manifest_hash"] == reference["manifest_hash"] and again["counts"] == reference["counts"]
    shard_bytes = [[storage.read_bytes(f"{url}/{s['file']}") for s in m["shards"]]
                   for url, m in ((f"{base}/faces", reference), (dst, again))]
    assert shard_bytes[0] == shard_bytes[1]
    # Exactly once: the manifest and its shards, and nothing the cut import left behind.
    assert sorted(files_under(dst)) == sorted(["manifest.json"] + [s["file"] for s in again["shards"]])


def test_checkpoint_cut_mid_upload_is_never_listed_and_a_rerun_equals_the_uninterrupted(base, s3_proxy, capsys):
    bucket = base.removeprefix("s3://")
    s3_proxy.cut_at(rf"PUT /{bucket}/runs/cut/checkpoint_00000008/state\.pt".encode())
    assert cli(train_args(base, "cut")) == 1
    assert s3_proxy.cuts and not s3_proxy.is_up
    assert_clear_failure(capsys, "storage request failed", s3_proxy.endpoint.split("//")[1])
    s3_proxy.up()
    listed = ckpt.list_checkpoints(f"{base}/runs", "cut")
    assert [c.rsplit("/", 1)[1] for c in listed] == [ckpt.checkpoint_dir_name(4)], s3_proxy.cuts

    assert cli(train_args(base, "cut")) == 0
    cut, reference = (ckpt.list_checkpoints(f"{base}/runs", run) for run in ("cut", "reference"))
    assert [c.rsplit("/", 1)[1] for c in cut] == [ckpt.checkpoint_dir_name(4), ckpt.checkpoint_dir_name(8)]
    history = [json.loads(line) for line in storage.read_bytes(f"{cut[-1]}/{ckpt.METRICS_FILE}").splitlines()]
    assert [r["step"] for r in history if r.get("event") == "resume"] == [4]  # resumed from the S3 checkpoint
    assert ckpt.read_meta(cut[-1])["state_digest"] == ckpt.read_meta(reference[-1])["state_digest"]
    # The run's grid, plot and metrics are published beside its checkpoints on S3, from the last one.
    for name in (ckpt.SAMPLES_FILE, ckpt.LOSS_PLOT_FILE, ckpt.METRICS_FILE):
        assert storage.read_bytes(f"{base}/runs/cut/{name}") == storage.read_bytes(f"{cut[-1]}/{name}")


def test_generation_cut_mid_shard_commits_nothing_partial_and_a_rerun_equals_the_uninterrupted(base, s3_proxy, capsys):
    bucket = base.removeprefix("s3://")
    assert cli(generate_args(f"{base}/registry", f"{base}/generated")) == 0
    output = f"{base}/generated-cut"
    s3_proxy.cut_at(rf"PUT /{bucket}/generated-cut/data/train-00001-of-00003\.parquet".encode())
    assert cli(generate_args(f"{base}/registry", output)) == 1
    assert s3_proxy.cuts and not s3_proxy.is_up
    assert_clear_failure(capsys, "storage request failed", s3_proxy.endpoint.split("//")[1])
    s3_proxy.up()
    stored = files_under(output)
    assert "manifest.json" not in stored and "_manifest/shard-00001.json" not in stored
    for name in stored:  # every committed shard is whole
        if name.startswith("_manifest/"):
            entry = json.loads(stored[name])
            for relpath, expected in entry["files"].items():
                assert storage.sha256_hex(stored[relpath]) == expected["sha256"]

    assert cli(generate_args(f"{base}/registry", output)) == 0
    assert files_under(output) == files_under(f"{base}/generated")
    rows = to_ganray_table(pq.read_table(io.BytesIO(storage.read_bytes(f"{output}/data/train-00001-of-00003.parquet")))).to_pylist()
    assert [r["face_id"] for r in rows] == [4, 5, 6, 7]


def test_registry_push_cut_mid_upload_is_invisible_and_a_rerun_pushes_once(base, s3_proxy, capsys):
    bucket = base.removeprefix("s3://")
    registry = f"{base}/registry-cut"
    push = ["registry", "push", "--registry", registry, "--from-run", f"{base}/runs", "reference"]
    s3_proxy.cut_at(rf"PUT /{bucket}/registry-cut/versions/v1/generator\.safetensors".encode())
    assert cli(push) == 1
    assert s3_proxy.cuts and not s3_proxy.is_up
    assert_clear_failure(capsys, "storage request failed", f"/{bucket}/registry-cut/versions/v1/")
    s3_proxy.up()
    assert Registry(registry).versions() == []

    assert cli(push) == 0
    cut, reference = Registry(registry), Registry(f"{base}/registry")
    assert cut.versions() == ["v2"]  # v1's claim stays taken: a version id is never reused
    assert cut.show("latest").content_hash == reference.show("v1").content_hash


def test_an_endpoint_that_never_answers_gives_up_after_the_attempts_it_is_given(base, s3_proxy, monkeypatch):
    """No hanging: a read that gets no answer ends after the read timeout, each call tried
    AWS_MAX_ATTEMPTS times (s3fs's own 5 retries would multiply botocore's). (A PUT to such an
    endpoint hangs regardless of the read timeout: aiohttp waits for "100 Continue" without one.)"""
    monkeypatch.setenv("GANRAY_S3_READ_TIMEOUT_S", "0.5")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    s3_proxy.stall()
    with pytest.raises(Exception) as failure:
        storage.read_bytes(f"{base}/faces/manifest.json")
    s3_proxy.up()
    asked = [line for line in s3_proxy.stalled_requests if b"/faces/manifest.json" in line]
    # 2 attempts of the HEAD s3fs makes first (3 were seen: s3fs asks once more on a timeout), not
    # the 2 x 5 = 10 that s3fs's own retry loop on top of botocore's would make.
    assert 2 <= len(asked) <= 3, s3_proxy.stalled_requests
    found = storage.storage_error_in(failure.value)
    assert found is not None and "timeout" in type(found).__name__.lower() + str(found).lower(), failure.value
    assert f"{base.removeprefix('s3://')}/faces/manifest.json" in storage.describe_failure(failure.value)


@pytest.mark.parametrize("name, value", [("GANRAY_S3_READ_TIMEOUT_S", "soon"), ("GANRAY_S3_CONNECT_TIMEOUT_S", "0"),
                                         ("AWS_MAX_ATTEMPTS", "-1")])
def test_a_bad_s3_setting_is_a_usage_error_naming_it(base, monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    assert cli(["registry", "list", "--registry", f"{base}/registry"]) == 2
    assert f"${name} must be" in capsys.readouterr().err
