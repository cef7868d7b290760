"""Full-state training checkpoints.

A checkpoint is a Ray Train checkpoint directory named `checkpoint_{step:08d}` (so names sort by
step) under `{run.storage_path}/{run.name}/`. It holds everything needed to resume exactly where
training stopped (see docs/CONTRACTS.md):

    state.pt     G, D, G_ema, both optimizers, grad scalers, ADA's p and r_t statistics, the running
                 path-length mean, step, images seen, every rank's RNG state, the position in the
                 data stream, the config, the dataset manifest hash
    meta.json    the same bookkeeping without tensors, readable by anyone
    samples.png  a grid drawn by G_ema from fixed seeds
    metrics.jsonl, loss_curves.png   the run's metric history so far, and its plot

`state.pt` contains only tensors and plain containers, so it loads with `weights_only=True`.
"""
from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import torch

from ganray import runtime
from ganray.storage import url_to_fs

STATE_FILE = "state.pt"
META_FILE = "meta.json"
SAMPLES_FILE = "samples.png"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss_curves.png"
CHECKPOINT_PREFIX = "checkpoint_"
FILES_KEY = "files"  # in meta.json: {file name: size in bytes} of every other file of the checkpoint


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def run_url(storage_path: str, run_name: str) -> str:
    return posixpath.join(storage_path.rstrip("/"), run_name)


def _checkpoint_names(fs, root: str) -> list[str]:
    """The checkpoint directory names under the run folder `root`, complete or not, oldest first."""
    if not fs.exists(root):
        return []
    names = (posixpath.basename(entry.rstrip("/")) for entry in fs.ls(root, detail=False))
    return sorted(name for name in names if name.startswith(CHECKPOINT_PREFIX))


def list_checkpoints(storage_path: str, run_name: str) -> list[str]:
    """URLs of the run's complete checkpoints, oldest first."""
    run = run_url(storage_path, run_name)
    fs, root = url_to_fs(run)
    return [posixpath.join(run, name) for name in _checkpoint_names(fs, root)
            if is_complete(fs, posixpath.join(root, name))]


def is_complete(fs, path: str) -> bool:
    """Whether the checkpoint directory `path` was stored whole: its meta.json is there and every
    file it names is there with the size it names. An upload that stopped part way (the endpoint
    went away, the worker died) lacks meta.json or one of the files, or holds a short one.
    (Checkpoints written before meta.json named its files count as complete with meta.json.)"""
    try:
        sizes = {posixpath.basename(info["name"].rstrip("/")): info.get("size")
                 for info in fs.ls(path, detail=True)}
        if META_FILE not in sizes:
            return False
        meta = json.loads(fs.cat_file(posixpath.join(path, META_FILE)))
    except (FileNotFoundError, ValueError):
        return False
    named = meta.get(FILES_KEY, {}) if isinstance(meta, dict) else None
    return isinstance(named, dict) and all(sizes.get(name) == size for name, size in named.items())


def resumable_checkpoint(run: str, offered: str) -> str | None:
    """The newest complete checkpoint of the run at `run` (its URL) that is not newer than `offered`,
    the checkpoint directory name Ray Train hands a restarted or re-run worker group; None if none.

    Ray Train registers a checkpoint once the worker's upload returns, but pyarrow can swallow a
    failed upload (it logs "Error ignored when destroying file" and Ray logs "Checkpoint successfully
    created"): if the storage recovers before the controller writes its snapshot, Ray offers a
    checkpoint whose state.pt is missing or short. The one before it resumes the same run."""
    fs, root = url_to_fs(run)
    for name in reversed(_checkpoint_names(fs, root)):  # newest first: usually the offered one
        if name <= offered and is_complete(fs, posixpath.join(root, name)):
            return posixpath.join(run, name)
    return None


def latest_checkpoint(storage_path: str, run_name: str) -> str | None:
    checkpoints = list_checkpoints(storage_path, run_name)
    return checkpoints[-1] if checkpoints else None


def load_state(checkpoint_url: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    fs, path = url_to_fs(checkpoint_url)
    with fs.open(posixpath.join(path, STATE_FILE), "rb") as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def read_meta(checkpoint_url: str) -> dict[str, Any]:
    fs, path = url_to_fs(checkpoint_url)
    with fs.open(posixpath.join(path, META_FILE), "r") as f:
        return json.load(f)


# The entries of state.pt that make up the training state: every tensor of a checkpoint is under one
# of them. The rest (config, manifest_hash, attributes, history) is bookkeeping, which legitimately
# differs between an uninterrupted run and a resumed one (a resumed run's history notes the resume).
TRAINING_STATE_KEYS = ("G", "D", "G_ema", "opt_G", "opt_D", "scaler", "ada", "pl_mean", "rng", "data_position",
                       "step", "images_seen")


def state_digest(state: dict[str, Any], keys: tuple[str, ...] = TRAINING_STATE_KEYS) -> str:
    """SHA-256 over the training state: equal digests mean a bit-identical training state."""
    return runtime.state_digest(state, keys)
