"""The whole flow on S3, end to end, through the entry points a user runs (a real S3-protocol server
on 127.0.0.1, real local Ray, real HTTP): `ganray data import` from s3:// to s3:// -> `ganray train`
with run.storage_path on s3:// (a train worker process killed mid-run; the run resumes from its S3
checkpoint) -> `ganray registry push` to a registry on s3:// -> `ganray generate` of shards to s3://
-> the face API serving the model loaded from the S3 registry, whose bytes for a seed are the bytes
of the S3 shard's row for that seed.
"""
from __future__ import annotations

import io
import json
import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port, newest_train_worker, wait_for_registered_checkpoint
from ganray import storage
from ganray.data.hf_features import to_ganray_table
from ganray.cli import main as cli
from ganray.data.synthetic import render_face
from ganray.images import encode_png
from ganray.registry import Registry
from ganray.train import checkpoint as ckpt

RES = 32
FACES = 48
# The tiny run: 2 workers, narrow nets, a checkpoint every 4 steps; the killed run restarts from one.
TRAIN = ["run.name=flow", "data.source=shards", f"data.resolution={RES}", "model.conditional=false",
         "model.g_width=8", "model.d_width=8", "model.z_dim=16", "train.batch_size=8", "train.num_workers=2",
         "train.max_steps=24", "train.checkpoint_every=4", "train.log_every=4", "train.num_to_keep=10",
         "train.max_failures=2", "train.precision=fp32"]


def test_whole_flow_on_s3(ray_session, s3_bucket, capsys):
    base = f"s3://{s3_bucket}"
    # The user's raw images already live in S3 (built-in procedural faces stand in for photos).
    fs, _ = storage.url_to_fs(base)
    fs.pipe({f"{s3_bucket}/raw/face-{i:04d}.png": encode_png(render_face(i, 64)[0]) for i in range(FACES)})

    # 1. Import s3:// -> s3://.
    assert cli(["data", "import", f"{base}/raw", f"{base}/faces", "--resolution", str(RES),
                "--set", "import.shard_rows=20"]) == 0
    manifest = json.loads(storage.read_bytes(f"{base}/faces/manifest.json"))
    assert manifest["counts"]["kept"] == FACES and [s["rows"] for s in manifest["shards"]] == [20, 20, 8]

    # 2. Train with checkpoints on S3; a worker process is killed once the first checkpoint is there.
    train_args = ["train", "-c", str(REPO / "configs" / "demo.yaml"), *(a for o in TRAIN for a in ("--set", o)),
                  "--set", f"data.url={base}/faces", "--set", f"run.storage_path={base}/runs"]
    status: dict = {}
    thread = threading.Thread(target=lambda: status.setdefault("exit", cli(train_args)), daemon=True)
    started = time.time()
    thread.start()
    wait_for_registered_checkpoint(f"{base}/runs/flow", thread)  # registered: its files are on S3 too
    newest_train_worker(started).kill()
    thread.join(timeout=600)
    assert status.get("exit") == 0
    checkpoints = ckpt.list_checkpoints(f"{base}/runs", "flow")
    assert checkpoints[-1].endswith(ckpt.checkpoint_dir_name(24))
    history = [json.loads(line) for line in storage.read_bytes(f"{base}/runs/flow/{ckpt.METRICS_FILE}").splitlines()]
    resumes = [row for row in history if row.get("event") == "resume"]
    assert resumes, "training did not restart from an S3 checkpoint"
    restored = f"{base}/runs/flow/{ckpt.checkpoint_dir_name(resumes[0]['step'])}"
    assert restored in checkpoints  # the restarted workers read exactly that S3 checkpoint's state
    assert resumes[0]["state_digest"] == ckpt.read_meta(restored)["state_digest"]

    # 3. Push the run to a registry on S3, and promote it.
    registry = f"{base}/registry"
    assert cli(["registry", "push", "--registry", registry, "--from-run", f"{base}/runs", "flow",
                "--promote", "production", "--force"]) == 0  # unevaluated: past production's built-in gate
    info = Registry(registry).show("production")
    assert info.version == "v1" and info.provenance["checkpoint"] == checkpoints[-1]

    # 4. Generate shards to S3 from the S3 registry.
    output = f"{base}/generated"
    assert cli(["generate", "--set", f"registry.url={registry}", "--set", f"generate.output={output}",
                "--set", "generate.model=production", "--set", "generate.count=8", "--set", "generate.shard_size=4",
                "--set", "generate.format=parquet", "--set", "generate.psi=0.7", "--set", "generate.seed_offset=500",
                "--set", "generate.batch_size=4"]) == 0
    generated = json.loads(storage.read_bytes(f"{output}/manifest.json"))
    assert generated["faces"] == 8 and len(generated["shards"]) == 2
    rows = [row for shard in generated["shards"] for file in shard["files"]
            for row in to_ganray_table(pq.read_table(io.BytesIO(storage.read_bytes(f"{output}/{file}")))).to_pylist()]
    assert sorted(row["seed"] for row in rows) == list(range(500, 508))

    # 5. Serve the model loaded from the S3 registry: the served bytes are the S3 shard's bytes.
    from ray import serve

    from ganray.config import FaceServiceConfig
    from ganray.serve.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = serve.context._get_global_client().http_config.port  # an earlier module's Serve keeps its port
    app = build_app(FaceServiceConfig.model_validate({
        "model": {"registry": registry, "alias": "production"},
        "generator": {"num_cpus": 0.2, "max_batch_size": 8}, "ingress": {"num_cpus": 0.1},
        "api": {"max_count": 8}}))
    serve.run(app, name="test-s3-flow", route_prefix="/s3flow")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/s3flow", timeout=60) as client:
            assert client.get("/v1/model").json()["version"] == "v1"
            for row in rows:
                r = client.get(f"/v1/faces/{row['seed']}.png", params={"psi": row["psi"]})
                assert r.status_code == 200, r.text
                assert r.headers["x-model-version"] == row["model_version"] == "v1"
                assert r.content == row["image"]
    finally:
        serve.delete("test-s3-flow")
