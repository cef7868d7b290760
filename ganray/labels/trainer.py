"""Driver of `ganray labeler train`: check, split, train on Ray Train, evaluate on the held-out split,
push a labeler version (weights, config, provenance, held-out evaluation) to the registry.

    dataset (built-in faces or an import) -> decode once, split by content hash (ganray.labels.dataset)
      training rows -> Ray's object store -> TorchTrainer (ganray.labels.train), full-state checkpoints
      held-out rows -> driver -> the final classifier's report (ganray.labels.evaluate)
    -> LabelerRegistry.push (+ alias)

Re-running the same run (run.name, run.storage_path) resumes from its latest checkpoint; a worker
that dies is restarted by Ray Train from there (train.max_failures).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.data
import ray.train
from pydantic import ValidationError
from ray.train.torch import TorchConfig, TorchTrainer

from ganray import storage as st
from ganray.config import ConfigError, LabelerEvalJob, LabelerTrainJob
from ganray.console import ProgressLine
from ganray.data.dataset import dataset_manifest_hash
from ganray.data.versions import training_data_version
from ganray.labels import checkpoint as ckpt
from ganray.labels.dataset import choose_attributes, heldout_arrays, split_rows
from ganray.labels.evaluate import heldout_report
from ganray.labels.train import run_loop, train_loop_per_worker
from ganray.models.classifier import build_classifier
from ganray.registry import LabelerRegistry, RegistryError
from ganray.registry_events import LABELER, append_event
from ganray.runtime import init_ray

# Settings a resumed run may change; anything else must match the run's checkpoints.
RESUMABLE_CHANGES = {"ray_address", "train.max_steps", "train.num_workers", "train.use_gpu", "train.runner",
                     "train.threads_per_worker", "train.log_every", "train.checkpoint_every", "train.num_to_keep",
                     "train.max_failures", "train.precision", "train.deterministic", "heldout.max_images"}


@dataclass
class LabelerOutcome:
    run_url: str
    checkpoint: str
    step: int
    version: str | None   # the labeler version pushed
    alias: str | None
    heldout: dict[str, Any]


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Rank 0 posts its latest metrics here; the driver reads them for its console line (Ray Train V2
    routes reports through its controller, so the driver has no hook of its own)."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] | None = None

    def post(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def read(self) -> dict[str, Any] | None:
        return self.metrics


def fit_with_progress(trainer: TorchTrainer, board, line: ProgressLine, poll_s: float = 1.0):
    """trainer.fit() in a thread while the driver draws the posted metrics on `line`."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=target, name="ganray-labeler-fit", daemon=True)
    thread.start()
    last_step = None
    while thread.is_alive():
        thread.join(poll_s)
        metrics = ray.get(board.read.remote())
        if metrics and metrics["step"] != last_step:
            last_step = metrics["step"]
            draw_progress(line, metrics)
    if last_step is not None:
        line.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def class_weights(rows, attributes: dict[str, list[str]], cfg) -> dict[str, list[float]] | None:
    """train.class_balance 'loss': per attribute, each class's weight (its share of the training
    labels) ^ -balance_power, scaled so the mean weight over the training images is 1."""
    if cfg.class_balance == "none":
        return None
    counts = {name: np.zeros(len(values), np.int64) for name, values in attributes.items()}
    blocks = [rows.arrays] if hasattr(rows, "arrays") else (ray.get(ref) for ref in rows.block_refs)
    for block in blocks:
        for name in attributes:
            counts[name] += np.bincount(np.asarray(block[name], np.int64), minlength=len(attributes[name]))
    out = {}
    for name, n in counts.items():
        share = n / max(n.sum(), 1)
        w = np.where(share > 0, np.power(np.maximum(share, 1e-12), -cfg.balance_power), 0.0)
        out[name] = [float(x) for x in w / max(float((share * w).sum()), 1e-12)]
    return out


def draw_progress(line: ProgressLine, metrics: dict[str, Any]) -> None:
    line.update(int(metrics["step"]), extra=f"loss {metrics['loss']:.3f}  " + "  ".join(
        f"{k.removeprefix('train_acc_')} {v:.2f}" for k, v in metrics.items() if k.startswith("train_acc_")))


def check_resumable(job: LabelerTrainJob, storage: str, manifest_hash: str) -> str | None:
    latest = ckpt.latest_checkpoint(storage, job.run.name)
    if latest is None:
        return None
    meta = ckpt.read_meta(latest)
    try:
        before = _flatten(LabelerTrainJob.model_validate(meta["config"]).model_dump(mode="json"))
    except ValidationError:
        before = _flatten(meta["config"])
    now = _flatten(job.model_dump(mode="json"))
    changed = sorted(k for k in set(before) | set(now) if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)
                     and not k.startswith(("run.", "publish.")))
    if meta["manifest_hash"] != manifest_hash:
        changed.append("dataset (manifest hash)")
    if changed:
        raise ConfigError(f"run '{job.run.name}' in {storage} was trained with a different setup ("
                          + ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" if k in now else k for k in changed)
                          + "); resume it with its own config or choose another run.name")
    return latest


def run_labeler_training(job: LabelerTrainJob) -> LabelerOutcome:
    attributes = choose_attributes(job.data, job.attributes)
    manifest_hash = dataset_manifest_hash(job.data)
    storage = st.normalize_url(job.run.storage_path)
    registry = LabelerRegistry(job.publish.registry)
    if job.publish.alias is not None:
        try:
            registry._check_alias(job.publish.alias)  # a bad alias fails now, not after training
        except RegistryError as e:
            raise ConfigError(f"publish.alias: {e}") from None
    resume_from = check_resumable(job, storage, manifest_hash)
    if resume_from:
        print(f"[ganray labeler] resuming run '{job.run.name}' from {resume_from}", flush=True)
    local = job.train.runner == "local"
    if local:
        from ganray.labels.local import local_split

        split = local_split(job.data, attributes, job.heldout)
    else:
        init_ray(job.ray_address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        split = split_rows(job.data, attributes, job.heldout, job.source)
    if split.train.num_rows < job.train.batch_size:
        raise ConfigError(f"train.batch_size ({job.train.batch_size}) is larger than the training split "
                          f"({split.train.num_rows} rows)")
    validation = {k: v for k, v in split.validation.items() if k != "content_hash"} \
        if split.validation is not None else None
    print(f"[ganray labeler] run '{job.run.name}': {split.train.num_rows} training images, "
          f"{len(validation['image']) if validation else 0} for validation, {len(split.heldout['image'])} held out; "
          f"{job.train.max_steps} steps on {'this process' if local else f'{job.train.num_workers} workers'}; "
          f"attributes {list(attributes)}", flush=True)
    loop_config = {"job": job.model_dump(mode="json"), "attributes": attributes, "manifest_hash": manifest_hash,
                   "rows": split.train, "validation": validation,
                   "class_weights": class_weights(split.train, attributes, job.train),
                   "run_url": ckpt.run_url(storage, job.run.name)}
    line = ProgressLine(f"labeler {job.run.name}:", job.train.max_steps, "steps", show_rate=False)
    started = time.perf_counter()
    if local:
        from ganray.labels.local import LocalWorker

        worker = LocalWorker(storage, job.run.name, job.train.threads_per_worker, job.train.deterministic,
                             job.train.num_to_keep)
        run_loop({**loop_config, "progress": lambda m: draw_progress(line, m)}, worker, None, distributed=False)
        line.close()
    else:
        board = ProgressBoard.remote()
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={**loop_config, "progress": board},
            torch_config=TorchConfig(backend="nccl" if job.train.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=job.train.num_workers, use_gpu=job.train.use_gpu,
                resources_per_worker={"CPU": 0 if job.train.use_gpu else job.train.threads_per_worker,
                                      **({"GPU": 1} if job.train.use_gpu else {})}),
            run_config=ray.train.RunConfig(
                name=job.run.name, storage_path=storage,
                failure_config=ray.train.FailureConfig(max_failures=job.train.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.train.num_to_keep)),
        )
        result = fit_with_progress(trainer, board, line)
        if result.error:
            raise result.error
    train_s = time.perf_counter() - started
    latest = ckpt.latest_checkpoint(storage, job.run.name)
    state = ckpt.load_state(latest)
    best = state.get("best")
    weights = best["model"] if best else state["model"]  # the validation's best, else the last
    classifier = build_classifier(job.model, job.data.resolution, attributes)
    classifier.load_state_dict(weights)
    classifier.eval()
    report = heldout_report(classifier, split.heldout, job.heldout.fraction, manifest_hash, validation)
    for name, result_ in report["attributes"].items():
        print(f"[ganray labeler] held-out accuracy {name}: {result_['accuracy']:.3f} "
              f"(majority class {result_['majority_class_accuracy']:.3f})", flush=True)
    for name, result_ in report["attributes"].items():
        cal = result_["calibration"]
        print(f"[ganray labeler] {name}: balanced accuracy {result_['balanced_accuracy']:.3f}, lowest class recall "
              f"{result_['min_class_recall']:.3f}; ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} "
              f"(temperature {cal['temperature']:.3f})", flush=True)
    provenance = {"run": job.run.name, "run_url": ckpt.run_url(storage, job.run.name), "checkpoint": latest,
                  "step": state["step"], "weights_step": best["step"] if best else state["step"],
                  "stopped_early": bool(state.get("stopped_early")),
                  "train_seconds_this_run": round(train_s, 1), "dataset_manifest_hash": manifest_hash,
                  "data_version": training_data_version(job.data.model_dump(mode="json"), manifest_hash),
                  "data": job.data.model_dump(mode="json"), "heldout": job.heldout.model_dump(mode="json"),
                  "train": job.train.model_dump(mode="json"),
                  "metrics": next((h for h in reversed(state["history"]) if "loss" in h), {})}
    version = registry.push(weights, job.model.model_dump(mode="json"), job.data.resolution, attributes,
                            provenance, report)
    append_event(registry, LABELER, "training_run", {"run_name": job.run.name, "step": int(state["step"]),
                                                     "data_version": provenance["data_version"]["version"]},
                 version=version)
    if job.publish.alias:
        registry.promote(version, job.publish.alias)
    print(f"[ganray labeler] labeler {version}" + (f" (alias {job.publish.alias})" if job.publish.alias else "")
          + f" in {registry.registry_url}", flush=True)
    return LabelerOutcome(ckpt.run_url(storage, job.run.name), latest, int(state["step"]), version,
                          job.publish.alias, report)


def run_labeler_eval(job: LabelerEvalJob) -> dict[str, Any]:
    """`ganray labeler eval`: a labeler version on a dataset's held-out split; recorded in its entry."""
    registry = LabelerRegistry(job.registry.url)
    loaded = registry.load_classifier(job.eval.model)
    attributes = choose_attributes(job.data, list(loaded.info.attributes), key="eval.model's attributes")
    for name, values in loaded.info.attributes.items():
        if attributes[name] != values:
            raise ConfigError(f"data: the dataset's {name} values {attributes[name]} are not labeler "
                              f"{loaded.version}'s {values}")
    if job.data.resolution != loaded.info.resolution:
        print(f"[ganray labeler] note: images read at {job.data.resolution} px, resized to the classifier's "
              f"{loaded.info.resolution} px", flush=True)
    manifest_hash = dataset_manifest_hash(job.data)
    init_ray(job.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    context = ray.data.DataContext.get_current()
    preserve_order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    low, high = job.heldout.fraction, job.heldout.fraction + job.heldout.validation_fraction
    try:
        held = heldout_arrays(job.data, attributes, job.heldout)
        # The calibration is refitted on the same validation band as in training.
        validation = heldout_arrays(job.data, attributes, job.heldout, band=(low, high)) if high > low else None
    finally:
        context.execution_options.preserve_order = preserve_order
    report = heldout_report(loaded.classifier, held, job.heldout.fraction, manifest_hash, validation)
    report["labeler_version"] = loaded.version
    registry.record(loaded.version, job.eval.record_as, report)
    if job.eval.output:
        st.atomic_write(job.eval.output, (json.dumps(report, indent=2) + "\n").encode())
    for name, result_ in report["attributes"].items():
        print(f"[ganray labeler] {loaded.version} held-out accuracy {name}: {result_['accuracy']:.3f} "
              f"on {report['images']} images", flush=True)
    return report

