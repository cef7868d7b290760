"""Publishing a training run to the model registry: the newest checkpoint's G_ema becomes a version.

This lives beside training, not in the registry: the registry stores generators and knows nothing
of how they were trained; training knows its checkpoint format and hands the registry plain
weights, config and provenance.
"""
from __future__ import annotations

from ganray.registry import Registry, RegistryError
from ganray.train.checkpoint import latest_checkpoint, load_state, read_meta


def push_run(registry: Registry, storage_path: str, run_name: str) -> str:
    """Push G_ema of the newest checkpoint of run `run_name` under `storage_path`; returns the version id."""
    checkpoint = latest_checkpoint(storage_path, run_name)
    if checkpoint is None:
        raise RegistryError(f"no checkpoint found for run {run_name!r} under {storage_path}")
    state = load_state(checkpoint)
    meta = read_meta(checkpoint)
    config = state["config"]
    provenance = {
        "run_name": run_name,
        "storage_path": storage_path,
        "checkpoint": checkpoint,
        "step": state["step"],
        "images_seen": state["images_seen"],
        "dataset_manifest_hash": state["manifest_hash"],
        "metrics": meta.get("metrics", {}),
        "trained_at": meta.get("created_at"),
        "train_config": config,
    }
    return registry.push(state["G_ema"], config["model"], config["data"]["resolution"], state["attributes"],
                         provenance)
