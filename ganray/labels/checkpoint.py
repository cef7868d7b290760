"""Full-state checkpoints of an attribute-classifier run (the GAN's layout, ganray/train/checkpoint.py,
with the classifier's state):

    {run.storage_path}/{run.name}/checkpoint_{step:08d}/
        state.pt    torch.save of: model (state dict), opt (AdamW), rng (one {"torch", "python"} per
                    worker rank), data_position ({"epoch", "batch"} of EpochSampler), step; and
                    bookkeeping: history, config, manifest_hash, attributes. weights_only-loadable.
        meta.json   step, config, manifest_hash, attributes, metrics, state_digest, files: written
                    last, naming state.pt and its size (ganray.checkpoints.is_complete)

The folder layout, completeness and which checkpoint a restarted run resumes from: ganray.checkpoints,
shared with the GAN's runs (its names are this module's too).
"""
from __future__ import annotations

from typing import Any

from ganray import checkpoints
from ganray.checkpoints import (  # noqa: F401  (this module's public names: docs/CONTRACTS.md)
    CHECKPOINT_PREFIX, FILES_KEY, META_FILE, STATE_FILE, checkpoint_dir_name, is_complete, latest_checkpoint,
    list_checkpoints, load_state, read_meta, restore, resumable_checkpoint, run_url, write_meta)

TRAINING_STATE_KEYS = ("model", "opt", "rng", "data_position", "step")


def state_digest(state: dict[str, Any], keys: tuple[str, ...] = TRAINING_STATE_KEYS) -> str:
    """SHA-256 over the training state: equal digests mean a bit-identical training state."""
    return checkpoints.state_digest(state, keys)
