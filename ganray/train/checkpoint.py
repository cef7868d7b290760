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

`state.pt` contains only tensors and plain containers, so it loads with `weights_only=True`. The
folder layout, completeness and which checkpoint a restarted run resumes from: ganray.checkpoints,
shared with the attribute classifier's runs (its names are this module's too).
"""
from __future__ import annotations

from typing import Any

from ganray import checkpoints
from ganray.checkpoints import (  # noqa: F401  (this module's public names: docs/CONTRACTS.md)
    CHECKPOINT_PREFIX, FILES_KEY, META_FILE, STATE_FILE, checkpoint_dir_name, is_complete, latest_checkpoint,
    list_checkpoints, load_state, read_meta, restore, resumable_checkpoint, run_url, write_meta)

SAMPLES_FILE = "samples.png"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss_curves.png"


# The entries of state.pt that make up the training state: every tensor of a checkpoint is under one
# of them. The rest (config, manifest_hash, attributes, history) is bookkeeping, which legitimately
# differs between an uninterrupted run and a resumed one (a resumed run's history notes the resume).
TRAINING_STATE_KEYS = ("G", "D", "G_ema", "opt_G", "opt_D", "scaler", "ada", "pl_mean", "rng", "data_position",
                       "step", "images_seen")


def state_digest(state: dict[str, Any], keys: tuple[str, ...] = TRAINING_STATE_KEYS) -> str:
    """SHA-256 over the training state: equal digests mean a bit-identical training state."""
    return checkpoints.state_digest(state, keys)
