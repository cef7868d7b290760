"""Ray Train on a real local Ray: a 2-worker DDP run, a worker killed mid-run, and a re-run that resumes.

Resuming must give the same run: a run killed (or stopped) and resumed ends bit-identical, in every
tensor of its training state, to a run that was never interrupted.
"""
from __future__ import annotations

import copy
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import newest_train_worker, registered_checkpoints, wait_for_registered_checkpoint
from ganray.config import ConfigError, DCGANConfig, TrainConfig, TrainJob, load_config
from ganray.models import build_models
from ganray.models.face import cpu_has_native_bf16
from ganray.train import checkpoint as ckpt
from ganray.train.steps import GANSteps
from ganray.train.trainer import TrainOutcome, run_training

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


# The runs compared bit for bit: fp32 (bf16 autocast is deterministic too, but fp32 is the claim),
# 40 steps over 16-batch epochs (so a resume crosses epochs' reshuffles), a checkpoint every 8 and
# metrics every 3 (so some reports carry no checkpoint and some checkpoints fall between them). Steps
# take milliseconds here; the 40 leave the killed run time to be killed before it ends.
SAME_RUN = ("train.precision=fp32", "train.max_steps=40", "train.checkpoint_every=8", "train.log_every=3",
            "train.num_to_keep=20",
            # Some of the dataset's attributes, not in its order: the label columns must follow.
            "model.condition_on=[glasses,hair_color,skin_tone]")


def leaves(tree, prefix: str = ""):
    """(path, value) for every leaf of nested dicts/lists/tuples."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from leaves(v, f"{prefix}/{i}")
    else:
        yield prefix, tree


def assert_same_training_state(checkpoint_a: Path, checkpoint_b: Path) -> None:
    """Every leaf of the training state equal, tensors bitwise; and so the recorded digests."""
    a, b = ckpt.load_state(str(checkpoint_a)), ckpt.load_state(str(checkpoint_b))
    a_leaves = dict(leaves({k: a[k] for k in ckpt.TRAINING_STATE_KEYS}))
    b_leaves = dict(leaves({k: b[k] for k in ckpt.TRAINING_STATE_KEYS}))
    assert a_leaves.keys() == b_leaves.keys()
    tensors = [p for p, v in a_leaves.items() if isinstance(v, torch.Tensor)]
    assert len(tensors) > 100  # G, D, G_ema, both Adams' moments, each rank's RNG
    differing = [p for p, v in a_leaves.items()
                 if not (torch.equal(v, b_leaves[p]) and v.dtype == b_leaves[p].dtype
                         if isinstance(v, torch.Tensor) else v == b_leaves[p])]
    assert not differing, f"{len(differing)} of {len(a_leaves)} state entries differ, e.g. {differing[:5]}"
    assert ckpt.read_meta(str(checkpoint_a))["state_digest"] == ckpt.read_meta(str(checkpoint_b))["state_digest"]


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory) -> TrainOutcome:
    """SAME_RUN trained in one go, on 2 workers: the run the resumed ones must equal."""
    return run_training(tiny_job(tmp_path_factory.mktemp("uninterrupted"), "same", *SAME_RUN))


def test_two_worker_ddp_run_writes_full_state(uninterrupted):
    outcome, run_dir = uninterrupted, Path(uninterrupted.run_url)

    assert outcome.step == 40
    assert [Path(c).name for c in ckpt.list_checkpoints(str(run_dir.parent), "same")] == \
        [ckpt.checkpoint_dir_name(s) for s in (8, 16, 24, 32, 40)]
    state = ckpt.load_state(outcome.checkpoint)
    assert set(state) == {*ckpt.TRAINING_STATE_KEYS, "history", "config", "manifest_hash", "attributes"}
    assert state["step"] == 40 and state["images_seen"] == 40 * 16
    # 256 faces make 16 global batches of 16 per epoch: 40 steps (1 D step each) used 2.5 epochs.
    assert state["data_position"] == {"epoch": 2, "batch": 8}
    assert len(state["rng"]) == 2  # one RNG state per worker, each drawing its own noise
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert state["scaler"] == {"G": {}, "D": {}}  # fp32: GradScalers disabled
    # The digest covers every tensor: none lies outside the training state's entries.
    bookkeeping = {k: v for k, v in state.items() if k not in ckpt.TRAINING_STATE_KEYS}
    assert not [p for p, v in leaves(bookkeeping) if isinstance(v, torch.Tensor)]
    assert ckpt.read_meta(outcome.checkpoint)["state_digest"] == ckpt.state_digest(state)
    assert state["opt_G"]["state"], "optimizer moments were saved"
    # EMA copy differs from G after training (it lags behind).
    assert any(not torch.equal(state["G"][k], state["G_ema"][k]) for k in state["G"] if "weight" in k)
    assert state["config"]["model"]["conditional"] is True and "skin_tone" in state["attributes"]
    assert state["config"]["model"]["condition_on"] == ["glasses", "hair_color", "skin_tone"]

    rows = [r for r in history(run_dir) if "loss_D" in r]
    # Every log_every steps, and at each checkpoint.
    assert [r["step"] for r in rows] == sorted({*range(3, 41, 3), *range(8, 41, 8)})
    for r in rows:
        assert {"loss_D", "loss_G", "D_real", "D_fake", "images_per_s"} <= set(r)
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss_D", "loss_G"))
    grid = Image.open(outcome.samples_png)
    assert grid.size == (8 * 32, 8 * 32)  # 64 fixed seeds at 32 px
    assert Image.open(outcome.loss_png).size[0] > 0


def test_rerun_resumes_into_the_same_run(uninterrupted, tmp_path):
    """Stopped after step 8 (max_steps), re-run to 40: bit-identical to the run never stopped."""
    run_training(tiny_job(tmp_path, "same", *SAME_RUN, "train.max_steps=8"))
    saved = ckpt.read_meta(ckpt.latest_checkpoint(str(tmp_path), "same"))
    # Two uninterrupted runs so far: the same at step 8.
    assert_same_training_state(tmp_path / "same" / ckpt.checkpoint_dir_name(8),
                               Path(uninterrupted.run_url) / ckpt.checkpoint_dir_name(8))

    outcome = run_training(tiny_job(tmp_path, "same", *SAME_RUN))

    assert outcome.step == 40
    events = [r for r in history(tmp_path / "same") if r.get("event") == "resume"]
    assert [e["step"] for e in events] == [8]
    # The digest taken right after loading the checkpoint equals the one taken when it was written.
    assert events[0]["state_digest"] == saved["state_digest"]
    assert_same_training_state(Path(outcome.checkpoint),
                               Path(uninterrupted.run_url) / ckpt.checkpoint_dir_name(40))


def test_rerun_resumes_from_the_newest_complete_checkpoint_when_ray_offers_a_damaged_one(uninterrupted, tmp_path):
    """Ray Train can register a checkpoint whose upload failed (pyarrow swallows the error and Ray
    logs "Checkpoint successfully created"). Here the finished run's last checkpoint, which Ray's
    snapshot lists, has a short state.pt: a re-run resumes from the checkpoint before it, says so,
    and ends bit-identical to the run never interrupted."""
    run_dir = tmp_path / "same"
    shutil.copytree(uninterrupted.run_url, run_dir)
    damaged = run_dir / ckpt.checkpoint_dir_name(40) / ckpt.STATE_FILE
    damaged.write_bytes(damaged.read_bytes()[:1000])  # what an upload cut part way leaves
    assert registered_checkpoints(run_dir)[-1] == ckpt.checkpoint_dir_name(40)  # what Ray offers
    assert ckpt.latest_checkpoint(str(tmp_path), "same") == str(run_dir / ckpt.checkpoint_dir_name(32))

    outcome = run_training(tiny_job(tmp_path, "same", *SAME_RUN))

    assert outcome.step == 40
    events = [r for r in history(run_dir) if r.get("event") == "resume"]
    assert [e["step"] for e in events] == [32]
    assert events[0]["state_digest"] == ckpt.read_meta(str(run_dir / ckpt.checkpoint_dir_name(32)))["state_digest"]
    assert_same_training_state(Path(outcome.checkpoint), Path(uninterrupted.run_url) / ckpt.checkpoint_dir_name(40))


def test_rerun_with_another_model_is_refused(uninterrupted):
    """The finished run re-run with a wider G: refused before Ray is asked for anything, naming the change."""
    run_dir = Path(uninterrupted.run_url)
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(ConfigError, match=r"model.g_width: 8 -> 16"):
        run_training(tiny_job(run_dir.parent, "same", *SAME_RUN, "model.g_width=16"))
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_killed_worker_resumes_into_the_same_run(uninterrupted, tmp_path):
    """A train worker process killed mid-run: Ray Train restarts the group (max_failures) from the
    latest checkpoint, and the run ends bit-identical to the run never interrupted."""
    job = tiny_job(tmp_path, "same", *SAME_RUN, "train.max_failures=2")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_training(job)), daemon=True)
    started = time.time()
    thread.start()

    wait_for_registered_checkpoint(tmp_path / "same", thread)
    newest_train_worker(started).kill()
    thread.join(timeout=600)

    assert outcome["result"].step == 40
    events = [r for r in history(tmp_path / "same") if r.get("event") == "resume"]
    assert events, "training did not restart from a checkpoint"
    assert events[0]["step"] >= 8
    restored = tmp_path / "same" / ckpt.checkpoint_dir_name(events[0]["step"])
    # The restarted workers picked up exactly what the checkpoint holds.
    assert events[0]["state_digest"] == ckpt.read_meta(str(restored))["state_digest"]
    assert_same_training_state(Path(outcome["result"].checkpoint),
                               Path(uninterrupted.run_url) / ckpt.checkpoint_dir_name(40))


def _steps(precision: str) -> GANSteps:
    """GANSteps for a tiny unconditional DCGAN on CPU; fp16 gets enabled GradScalers (CPU ones)."""
    torch.manual_seed(0)
    G, D = build_models(DCGANConfig(g_width=8, d_width=8, z_dim=16), 32, None)
    cfg = TrainConfig(precision=precision, use_gpu=precision == "fp16")
    return GANSteps(G, D, copy.deepcopy(G), cfg, 16, torch.device("cpu"))


def test_auto_precision_trains_in_what_the_workers_device_computes_in_hardware():
    """auto on a CPU: bf16 autocast with AMX or AVX512-BF16, else fp32 (no autocast); never fp16 loss scaling."""
    steps = _steps("auto")
    native = cpu_has_native_bf16()
    assert steps.precision == ("bf16" if native else "fp32")
    assert steps.autocast_dtype == (torch.bfloat16 if native else None)
    assert not steps.scaler_G.is_enabled() and not steps.scaler_D.is_enabled()
    assert TrainConfig().precision == "auto"


def test_resume_may_switch_precision_between_bf16_and_fp16():
    bf16 = _steps("bf16")
    bf16.discriminator_step(torch.rand(4, 3, 32, 32) * 2 - 1, None)  # Adam moments to carry over
    saved_bf16 = bf16.optimizer_state()
    assert saved_bf16["scaler"] == {"G": {}, "D": {}}  # a disabled scaler saves nothing

    # bf16 -> fp16: the optimizers carry over; loss scaling starts at GradScaler's initial scale.
    fp16 = _steps("fp16")
    fp16.load_optimizer_state(saved_bf16)
    assert fp16.scaler_G.is_enabled() and fp16.scaler_G.get_scale() == fp16.scaler_D.get_scale() == 2.0 ** 16
    loaded, saved = dict(leaves(fp16.opt_D.state_dict()["state"])), dict(leaves(saved_bf16["opt_D"]["state"]))
    assert loaded.keys() == saved.keys() and loaded
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    # fp16 -> fp16 carries the scale; fp16 -> bf16 leaves the scalers disabled and empty.
    saved_fp16 = fp16.optimizer_state()
    saved_fp16["scaler"]["G"]["scale"] = saved_fp16["scaler"]["D"]["scale"] = 1024.0
    again = _steps("fp16")
    again.load_optimizer_state(saved_fp16)
    assert again.scaler_G.get_scale() == again.scaler_D.get_scale() == 1024.0
    back = _steps("bf16")
    back.load_optimizer_state(saved_fp16)
    assert not back.scaler_G.is_enabled() and back.optimizer_state()["scaler"] == {"G": {}, "D": {}}
    assert back.opt_D.state_dict()["state"][0]["step"] == saved_bf16["opt_D"]["state"][0]["step"]
