"""Full-state checkpoints of an attribute-classifier run (the GAN's layout, ganray/train/checkpoint.py,
with the classifier's state):

    {run.storage_path}/{run.name}/checkpoint_{step:08d}/
        state.pt    torch.save of: model (state dict), opt (AdamW), rng (one {"torch", "python"} per
                    worker rank), data_position ({"epoch", "batch"} of EpochSampler), step; and
                    bookkeeping: history, config, manifest_hash, attributes. weights_only-loadable.
        meta.json   step, config, manifest_hash, attributes, metrics, state_digest: written LAST (a
                    directory without it is an incomplete checkpoint)
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
CHECKPOINT_PREFIX = "checkpoint_"
TRAINING_STATE_KEYS = ("model", "opt", "rng", "data_position", "step")


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def run_url(storage_path: str, run_name: str) -> str:
    return posixpath.join(storage_path.rstrip("/"), run_name)


def latest_checkpoint(storage_path: str, run_name: str) -> str | None:
    """URL of the run's newest complete checkpoint, None if it has none."""
    fs, root = url_to_fs(run_url(storage_path, run_name))
    if not fs.exists(root):
        return None
    names = sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(root, detail=False)
                   if posixpath.basename(e.rstrip("/")).startswith(CHECKPOINT_PREFIX)
                   and fs.exists(posixpath.join(e, META_FILE)))
    return posixpath.join(run_url(storage_path, run_name), names[-1]) if names else None


def load_state(checkpoint_url: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    fs, path = url_to_fs(checkpoint_url)
    with fs.open(posixpath.join(path, STATE_FILE), "rb") as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def read_meta(checkpoint_url: str) -> dict[str, Any]:
    fs, path = url_to_fs(checkpoint_url)
    with fs.open(posixpath.join(path, META_FILE), "r") as f:
        return json.load(f)


def state_digest(state: dict[str, Any], keys: tuple[str, ...] = TRAINING_STATE_KEYS) -> str:
    """SHA-256 over the training state: equal digests mean a bit-identical training state."""
    return runtime.state_digest(state, keys)
