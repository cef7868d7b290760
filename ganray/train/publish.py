"""Publishing a training run to the model registry: a checkpoint's G_ema (the newest by default) becomes a version.

This lives beside training, not in the registry: the registry stores generators and knows nothing
of how they were trained; training knows its checkpoint format and hands the registry plain
weights, config and provenance.
"""
from __future__ import annotations

from ganray.data.versions import training_data_version
from ganray.registry import Registry, RegistryError
from ganray.registry_events import GENERATOR, append_event
from ganray.train.checkpoint import list_checkpoints, load_state, read_meta


def push_run(registry: Registry, storage_path: str, run_name: str, step: int | None = None,
             cause: str | None = None) -> str:
    """Push G_ema of run `run_name`'s checkpoint at `step` (None: the newest); returns the version id.

    The version's provenance names the data version it was trained on, and a `training_run` event
    in the registry's log ties it to `cause` (the id of the event that started the run, if any)."""
    checkpoints = list_checkpoints(storage_path, run_name)
    if not checkpoints:
        raise RegistryError(f"no checkpoint found for run {run_name!r} under {storage_path}")
    if step is None:
        checkpoint = checkpoints[-1]
    else:
        by_step = {read_meta(c)["step"]: c for c in checkpoints}
        if step not in by_step:
            raise RegistryError(f"no checkpoint at step {step} of run {run_name!r} "
                                f"(steps: {', '.join(str(s) for s in sorted(by_step))})")
        checkpoint = by_step[step]
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
        "data_version": training_data_version(config["data"], state["manifest_hash"]),
        "metrics": meta.get("metrics", {}),
        "trained_at": meta.get("created_at"),
        "train_config": config,
    }
    version = registry.push(state["G_ema"], config["model"], config["data"]["resolution"], state["attributes"],
                            provenance)
    append_event(registry, GENERATOR, "training_run", {
        "run_name": run_name, "storage_path": storage_path, "checkpoint": checkpoint, "step": state["step"],
        "data_version": provenance["data_version"]["version"]}, cause=cause, version=version)
    return version
