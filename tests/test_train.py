"""Ray Train on a real local Ray: a 2-worker DDP run, a worker killed mid-run, and a re-run that resumes."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

from ganray.config import ConfigError, TrainJob, load_config
from ganray.train import checkpoint as ckpt
from ganray.train.trainer import run_training

REPO = Path(__file__).resolve().parents[1]


def tiny_job(storage: Path, name: str, *overrides: str) -> TrainJob:
    """The demo config shrunk to seconds: 32 px, narrow nets, a small built-in dataset."""
    return load_config(TrainJob, REPO / "configs" / "demo.yaml", [
        f"run.storage_path={storage}", f"run.name={name}",
        "data.resolution=32", "data.synthetic.count=256",
        "model.g_width=8", "model.d_width=8", "model.z_dim=16",
        "train.batch_size=16", "train.num_workers=2", "train.log_every=2",
        *overrides,
    ])


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]


def test_two_worker_ddp_run_writes_full_state(ray_session, tmp_path):
    job = tiny_job(tmp_path, "ddp", "train.max_steps=6", "train.checkpoint_every=3")
    outcome = run_training(job)

    assert outcome.step == 6
    assert [Path(c).name for c in ckpt.list_checkpoints(str(tmp_path), "ddp")] == \
        ["checkpoint_00000003", "checkpoint_00000006"]
    state = ckpt.load_state(outcome.checkpoint)
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "scaler", "step", "images_seen", "rng",
            "config", "manifest_hash", "attributes"} <= set(state)
    assert state["step"] == 6 and state["images_seen"] == 6 * 16
    assert len(state["rng"]) == 2  # one RNG/augmentation state per worker
    assert state["rng"][0]["aug"].shape == state["rng"][1]["aug"].shape
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert state["opt_G"]["state"], "optimizer moments were saved"
    # EMA copy differs from G after training (it lags behind).
    assert any(not torch.equal(state["G"][k], state["G_ema"][k]) for k in state["G"] if "weight" in k)
    assert state["config"]["model"]["conditional"] is True and "skin_tone" in state["attributes"]

    rows = [r for r in history(tmp_path / "ddp") if "loss_D" in r]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]  # every log_every steps, and at each checkpoint
    for r in rows:
        assert {"loss_D", "loss_G", "D_real", "D_fake", "images_per_s"} <= set(r)
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss_D", "loss_G"))
    grid = Image.open(outcome.samples_png)
    assert grid.size == (8 * 32, 8 * 32)  # 64 fixed seeds at 32 px
    assert Image.open(outcome.loss_png).size[0] > 0


def test_rerun_resumes_with_the_saved_state(ray_session, tmp_path):
    run_training(tiny_job(tmp_path, "resume", "train.max_steps=4", "train.checkpoint_every=4"))
    saved = ckpt.read_meta(ckpt.latest_checkpoint(str(tmp_path), "resume"))

    outcome = run_training(tiny_job(tmp_path, "resume", "train.max_steps=6", "train.checkpoint_every=4"))

    assert outcome.step == 6
    events = [r for r in history(tmp_path / "resume") if r.get("event") == "resume"]
    assert len(events) == 1
    assert events[0]["step"] == 4
    # Models and both optimizers restored bit for bit: the digest taken right after loading the
    # checkpoint equals the one taken when it was written.
    assert events[0]["state_digest"] == saved["state_digest"]
    assert ckpt.load_state(outcome.checkpoint)["images_seen"] == 6 * 16


def test_rerun_with_another_model_is_refused(ray_session, tmp_path):
    run_training(tiny_job(tmp_path, "guarded", "train.max_steps=2", "train.checkpoint_every=2"))
    with pytest.raises(ConfigError, match=r"model.g_width: 8 -> 16"):
        run_training(tiny_job(tmp_path, "guarded", "train.max_steps=4", "model.g_width=16"))


def _train_worker_pids() -> list[int]:
    """PIDs of Ray Train workers that this test session's Ray started (descendants of this process)."""
    me = psutil.Process()
    return [p.pid for p in me.children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline() or [])]


def test_killed_worker_resumes_from_latest_checkpoint(ray_session, tmp_path):
    job = tiny_job(tmp_path, "killed", "train.max_steps=24", "train.checkpoint_every=4", "train.max_failures=2",
                   "train.num_to_keep=20")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_training(job)), daemon=True)
    thread.start()

    # Wait for the second checkpoint: by then Ray Train has surely registered the first.
    first = tmp_path / "killed" / "checkpoint_00000008" / ckpt.META_FILE
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and thread.is_alive():
        time.sleep(0.2)
    assert first.exists(), "no checkpoint was written"
    pids = _train_worker_pids()
    assert pids, "no train worker process found"
    psutil.Process(pids[-1]).kill()
    thread.join(timeout=600)

    assert outcome["result"].step == 24
    events = [r for r in history(tmp_path / "killed") if r.get("event") == "resume"]
    assert events, "training did not restart from a checkpoint"
    assert events[0]["step"] >= 4
    restored = tmp_path / "killed" / ckpt.checkpoint_dir_name(events[0]["step"])
    # The restarted workers picked up exactly what the checkpoint holds.
    assert events[0]["state_digest"] == ckpt.read_meta(str(restored))["state_digest"]


def test_checkpoints_to_s3_and_resume_from_there(ray_session, s3_bucket):
    storage = f"s3://{s3_bucket}/runs"
    run_training(tiny_job(storage, "s3run", "train.max_steps=2", "train.checkpoint_every=2"))
    outcome = run_training(tiny_job(storage, "s3run", "train.max_steps=4", "train.checkpoint_every=2"))

    assert outcome.step == 4
    assert [c.rsplit("/", 1)[-1] for c in ckpt.list_checkpoints(storage, "s3run")] == \
        ["checkpoint_00000002", "checkpoint_00000004"]
    state = ckpt.load_state(outcome.checkpoint)
    assert state["step"] == 4 and state["opt_D"]["state"]
    resumed = [r for r in ckpt.load_state(outcome.checkpoint)["history"] if r.get("event") == "resume"]
    assert resumed and resumed[0]["state_digest"] == \
        ckpt.read_meta(ckpt.list_checkpoints(storage, "s3run")[0])["state_digest"]
    assert outcome.samples_png.startswith("s3://")
