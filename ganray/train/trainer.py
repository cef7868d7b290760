"""Driver side of training: check the run, build the dataset, hand the loop to Ray Train's TorchTrainer."""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import ray.data
import ray.train
from pydantic import ValidationError
from ray.train.torch import TorchConfig, TorchTrainer

from ganray.config import ConfigError, TrainJob
from ganray.console import ProgressLine
from ganray.data.dataset import build_indexed_rows, dataset_attributes, dataset_manifest_hash
from ganray.data.versions import training_data_version
from ganray.runtime import init_ray
from ganray.storage import check_reachable, normalize_url, url_to_fs
from ganray.train import checkpoint as ckpt
from ganray.train.loop import GeneratorEvaluator, train_loop_per_worker
from ganray.train.progress import ProgressBoard, run_with_progress

# Settings a resumed run may change; anything else must match the run's checkpoints.
RESUMABLE_CHANGES = {
    "ray_address", "train.max_steps", "train.num_workers", "train.use_gpu", "train.threads_per_worker",
    "train.log_every", "train.checkpoint_every", "train.num_to_keep", "train.max_failures",
    "train.sample_seeds", "train.precision", "train.deterministic",
}


@dataclass
class TrainOutcome:
    run_url: str
    checkpoint: str | None
    samples_png: str | None
    loss_png: str | None
    metrics_jsonl: str | None
    step: int


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def storage_root(job: TrainJob) -> str:
    """Ray Train wants absolute local paths; URLs (s3://...) pass through. Relative paths follow the
    path policy (ganray/storage.py: refused in a `ray job submit` driver unless $GANRAY_SUBMIT_DIR)."""
    return normalize_url(job.run.storage_path)


def check_resumable(job: TrainJob, manifest_hash: str) -> str | None:
    """Refuse to continue a run that was started with another model, data or optimiser."""
    latest = ckpt.latest_checkpoint(storage_root(job), job.run.name)
    if latest is None:
        return None
    meta = ckpt.read_meta(latest)
    try:
        # Read through today's config: keys added since the run started count at their defaults
        # (a run from before train.augment existed ran without augmentation: augment none).
        before = _flatten(TrainJob.model_validate(meta["config"]).model_dump(mode="json"))
    except ValidationError:
        before = _flatten(meta["config"])  # a key since removed: it shows as a change below
    now = _flatten(job.model_dump(mode="json"))
    changed = sorted(k for k in set(before) | set(now)
                     if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)
                     and not k.startswith(("run.", "eval.")))  # evaluation settings never change training
    if meta["manifest_hash"] != manifest_hash:
        changed.append("dataset (manifest hash)")
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" if k in before or k in now else k
                            for k in changed)
        raise ConfigError(
            f"run '{job.run.name}' in {storage_root(job)} was trained with a different setup ({details}); "
            f"resume it with its own config or choose another run.name")
    return latest


def run_training(job: TrainJob, evaluator: GeneratorEvaluator | None = None,
                 init_generator: dict | None = None) -> TrainOutcome:
    """Train (or resume) `job`'s run. With `job.eval.every_images`, `evaluator` evaluates G_ema then
    (`ganray train` passes ganray.eval.training.TrainingEvaluator; its `prepare()` runs here once Ray is up).
    `init_generator`: a generator state dict G and G_ema start from (a warm start; D starts fresh); a
    run that resumes from its own checkpoint ignores it."""
    if (job.eval.every_images is None) != (evaluator is None):
        raise ConfigError("eval.every_images and an evaluator go together: `ganray train` builds the evaluator "
                          "(ganray.eval.training.TrainingEvaluator) when eval.every_images is set")
    # Credentials, buckets and the endpoint checked before anything (StorageAccessError, exit 2).
    check_reachable(storage_root(job), "run.storage_path")
    if job.data.url:
        check_reachable(normalize_url(job.data.url), "data.url")
    attributes = dataset_attributes(job.data)
    if job.model.conditional and not attributes:
        raise ConfigError("model.conditional is true but the dataset has no label columns")
    manifest_hash = dataset_manifest_hash(job.data)
    resume_from = check_resumable(job, manifest_hash)
    if resume_from:
        print(f"[ganray] resuming run '{job.run.name}' from {resume_from}", flush=True)
    data_version = training_data_version(job.data.model_dump(mode="json"), manifest_hash)["version"]
    print(f"[ganray] training run '{job.run.name}': {job.train.max_steps} steps, {job.train.num_workers} workers, "
          f"data version {data_version}, checkpoints in {ckpt.run_url(storage_root(job), job.run.name)}", flush=True)
    init_ray(job.ray_address)  # only once the run is known to be valid
    if evaluator is not None:
        evaluator.prepare()  # reference features, on the driver (Ray Data; cached beside the dataset)

    # Progress bars of the one-off read are noise in a training log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Decoded images live in the object store once, in a fixed row order; every epoch re-reads
    # them without decoding, in the order each epoch's seeded permutation gives (a global shuffle
    # per epoch: imported shards are in file-name order, UTKFace's sorted by age).
    rows = build_indexed_rows(job.data)
    if rows.num_rows < job.train.batch_size:
        raise ConfigError(f"train.batch_size ({job.train.batch_size}) is larger than the dataset "
                          f"({rows.num_rows} rows)")
    board = ProgressBoard.remote()
    cpu_per_worker = 0 if job.train.use_gpu else job.train.threads_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "attributes": attributes,
                           "manifest_hash": manifest_hash, "rows": rows, "progress_board": board,
                           "run_url": ckpt.run_url(storage_root(job), job.run.name),
                           "evaluator": evaluator, "init_generator": init_generator},
        torch_config=TorchConfig(backend="nccl" if job.train.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.train.num_workers, use_gpu=job.train.use_gpu,
            resources_per_worker={"CPU": cpu_per_worker, **({"GPU": 1} if job.train.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=job.run.name, storage_path=storage_root(job),
            failure_config=ray.train.FailureConfig(max_failures=job.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.train.num_to_keep)),
    )
    line = ProgressLine(f"train {job.run.name}:", job.train.max_steps, "steps", show_rate=False)
    result = run_with_progress(trainer.fit, board, line)
    if result.error:
        raise result.error
    return publish_run_outputs(job)


def publish_run_outputs(job: TrainJob) -> TrainOutcome:
    """Copy the latest checkpoint's grid, plot and metrics to the run folder, where people look."""
    root = storage_root(job)
    run = ckpt.run_url(root, job.run.name)
    latest = ckpt.latest_checkpoint(root, job.run.name)
    if latest is None:
        return TrainOutcome(run, None, None, None, None, 0)
    fs, latest_path = url_to_fs(latest)
    _, run_path = url_to_fs(run)
    published = {}
    for name in (ckpt.SAMPLES_FILE, ckpt.LOSS_PLOT_FILE, ckpt.METRICS_FILE):
        src = posixpath.join(latest_path, name)
        if fs.exists(src):
            fs.copy(src, posixpath.join(run_path, name))
            published[name] = posixpath.join(run, name)
    step = json.loads(fs.cat_file(posixpath.join(latest_path, ckpt.META_FILE)))["step"]
    return TrainOutcome(run, latest, published.get(ckpt.SAMPLES_FILE), published.get(ckpt.LOSS_PLOT_FILE),
                        published.get(ckpt.METRICS_FILE), step)
