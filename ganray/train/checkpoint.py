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

import hashlib
import io
import json
import posixpath
from typing import Any

import torch

from ganray.storage import url_to_fs

STATE_FILE = "state.pt"
META_FILE = "meta.json"
SAMPLES_FILE = "samples.png"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss_curves.png"
CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def run_url(storage_path: str, run_name: str) -> str:
    return posixpath.join(storage_path.rstrip("/"), run_name)


def list_checkpoints(storage_path: str, run_name: str) -> list[str]:
    """URLs of the run's complete checkpoints, oldest first."""
    fs, root = url_to_fs(run_url(storage_path, run_name))
    if not fs.exists(root):
        return []
    found = []
    for entry in fs.ls(root, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        # A directory without meta.json is a checkpoint whose upload did not finish.
        if name.startswith(CHECKPOINT_PREFIX) and fs.exists(posixpath.join(entry, META_FILE)):
            found.append(name)
    return [posixpath.join(run_url(storage_path, run_name), n) for n in sorted(found)]


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
    """A SHA-256 over the training state (every tensor's dtype and bytes, every other value's repr,
    every key): equal digests mean bit-identical models, optimizers, scalers, RNGs and data position."""
    h = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                visit(obj[k])
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)
        else:
            h.update(repr(obj).encode())

    for key in keys:
        h.update(key.encode())
        visit(state[key])
    return h.hexdigest()
