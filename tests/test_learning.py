"""Training learns, on the built-in procedural faces: the attribute classifier beats the majority
class on held-out faces it provably never trained on, and a short GAN run's samples come closer
to the built-in faces (offline FID, pixels extractor) from its first checkpoint to its last.

Determinism tests pass on a loop that trains on labels misaligned with their images; these do not.
Both run the product's own per-worker loops in Ray Train's local mode (`num_workers=0`: the loop
runs in this process), on rows held in the session's Ray object store."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ganray.config import DataConfig, ExtractorConfig, HeldoutConfig, LabelerTrainJob, TrainJob, load_config
from ganray.data.dataset import IndexedRows, build_indexed_rows, dataset_attributes, to_training_batch
from ganray.data.synthetic import render_batch
from ganray.eval.extractors import PixelExtractor
from ganray.eval.metrics import fid
from ganray.labels.dataset import split_rows
from ganray.labels.train import train_loop_per_worker as labeler_loop
from ganray.models import build_generator
from ganray.models.classifier import build_classifier
from ganray.models.face import render_faces
from ganray.train import checkpoint as ckpt
from ganray.train.loop import train_loop_per_worker as gan_loop

REPO = Path(__file__).resolve().parents[1]
RES = 32


class RecordingRows(IndexedRows):
    """The training rows, noting the sha256 of every image a training batch actually read."""

    read_hashes: list[str] = []  # class-level: local mode may hand the loop a copy of this object

    def read(self, indices):
        batch = super().read(indices)
        RecordingRows.read_hashes += [hashlib.sha256(image.tobytes()).hexdigest() for image in batch["image"]]
        return batch


def recording(rows: IndexedRows) -> RecordingRows:
    recorded = RecordingRows(rows.block_refs, np.diff(rows.block_starts).tolist(), rows.columns)
    recorded.weights = rows.weights
    return recorded


def fit_locally(loop, config: dict, storage: Path, name: str, monkeypatch) -> list[Path]:
    """Ray Train in local mode: the product's per-worker loop, in this process. Returns copies of
    the checkpoints it reported, in order (local mode keeps none of them)."""
    kept: list[Path] = []
    report = ray.train.report

    def keep_and_report(metrics, checkpoint=None, checkpoint_dir_name=None, **kwargs):
        if checkpoint is not None:
            kept.append(storage / "kept" / checkpoint_dir_name)
            shutil.copytree(checkpoint.path, kept[-1])
        return report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name, **kwargs)

    monkeypatch.setattr(ray.train, "report", keep_and_report)
    trainer = TorchTrainer(loop, train_loop_config=config, scaling_config=ScalingConfig(num_workers=0),
                           run_config=RunConfig(name=name, storage_path=str(storage)))
    trainer.fit()
    return kept


# ---------------------------------------------------------------------------------------------
# The attribute classifier

LABELED = ("glasses", "hair_length")  # visible at 32 px, with majority classes far from 100 %


def test_labeler_beats_the_majority_class_on_faces_it_never_trained_on(ray_session, tmp_path, monkeypatch):
    job = load_config(LabelerTrainJob, REPO / "configs" / "labeler_demo.yaml", [
        f"run.storage_path={tmp_path}", "run.name=learns", "data.synthetic.count=600", f"data.resolution={RES}",
        f"attributes=[{', '.join(LABELED)}]", "model.width=8", "model.feature_dim=32", "train.num_workers=1",
        "train.batch_size=32", "train.max_steps=120", "train.log_every=40", "train.checkpoint_every=120",
        "train.precision=fp32", "heldout.fraction=0.25"])
    attributes = {n: dataset_attributes(job.data)[n] for n in LABELED}
    split = split_rows(job.data, attributes, job.heldout)
    RecordingRows.read_hashes = []
    checkpoints = fit_locally(labeler_loop, {"job": job.model_dump(mode="json"), "attributes": attributes,
                                        "rows": recording(split.train), "manifest_hash": "test",
                                        "run_url": str(tmp_path / "learns")}, tmp_path, "learns", monkeypatch)

    # The held-out faces were never in a batch the loop read (what it read, not what the split says);
    # the loop reads one batch ahead, so the batch after the last step may have been read too.
    trained_on = set(RecordingRows.read_hashes)
    assert len(RecordingRows.read_hashes) in (120 * 32, 121 * 32) and len(trained_on) > 300
    assert trained_on.isdisjoint(split.heldout["content_hash"])

    state = torch.load(checkpoints[-1] / ckpt.STATE_FILE, map_location="cpu", weights_only=True)
    assert state["step"] == 120
    model = build_classifier(job.model, RES, attributes)
    model.load_state_dict(state["model"])
    images, labels = to_training_batch({"image": split.heldout["image"], **{n: split.heldout[n] for n in LABELED}},
                                       None, list(LABELED))
    with torch.no_grad():
        logits = model.eval()(images)
    train_labels = split.train.read(np.arange(split.train.num_rows))
    for j, name in enumerate(LABELED):
        majority = np.bincount(train_labels[name]).argmax()  # the best guess without looking at the image
        baseline = float((labels[:, j] == majority).float().mean())
        accuracy = float((logits[name].argmax(1) == labels[:, j]).float().mean())
        assert accuracy >= baseline + 0.15, f"{name}: held-out accuracy {accuracy:.3f}, majority class {baseline:.3f}"


# ---------------------------------------------------------------------------------------------
# The GAN

def test_a_short_gan_run_brings_its_samples_closer_to_the_faces(ray_session, tmp_path, monkeypatch):
    job = load_config(TrainJob, REPO / "configs" / "demo.yaml", [
        f"run.storage_path={tmp_path}", "run.name=learns", f"data.resolution={RES}", "data.synthetic.count=512",
        "model.g_width=16", "model.d_width=16", "model.z_dim=32", "model.conditional=false",
        "train.batch_size=32", "train.num_workers=1", "train.max_steps=300", "train.checkpoint_every=10",
        "train.log_every=50", "train.num_to_keep=20", "train.precision=fp32", "train.augment=none",
        "eval.every_images=null"])
    rows = build_indexed_rows(job.data)
    config = {"job": job.model_dump(mode="json"), "attributes": dataset_attributes(job.data), "manifest_hash": "test",
              "rows": rows, "run_url": str(tmp_path / "learns")}
    checkpoints = fit_locally(gan_loop, config, tmp_path, "learns", monkeypatch)
    assert len(checkpoints) == 30
    extractor = PixelExtractor(ExtractorConfig(name="pixels", pixels_side=8))
    reference = extractor(render_batch(np.arange(10_000, 10_256), RES, seed=1)["image"])["features"]

    def sample_fid(checkpoint: Path) -> float:
        state = torch.load(checkpoint / ckpt.STATE_FILE, map_location="cpu", weights_only=True)
        generator = build_generator(job.model, RES, None)
        generator.load_state_dict(state["G_ema"])
        faces = render_faces(generator.eval(), list(range(256)), precision="fp32")
        return fid(reference, extractor(faces)["features"])

    first, last = sample_fid(checkpoints[0]), sample_fid(checkpoints[-1])
    assert last < 0.75 * first, f"FID {first:.2f} at the first checkpoint, {last:.2f} at the last"
