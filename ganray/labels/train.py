"""The per-worker training loop of the attribute classifier (Ray Train, DDP on gloo / NCCL).

Reproducible and resumable like the GAN's loop (ganray/train/loop.py): the data order and flips
come from `EpochSampler` (a pure function of seed and position, saved in each checkpoint), every
rank's RNG state is saved, kernels are deterministic; a run that is stopped and re-run, or whose
worker is killed and restarted by Ray Train from the latest checkpoint, ends bit-identical to one
that was never interrupted. Loss: the sum over attributes of each head's cross-entropy (optionally
class-weighted); learning rate: a pure function of the step (warmup, cosine); augmentation: a pure
function of (seed, step, rank) (ganray.labels.augment). At each checkpoint rank 0 scores the
validation split; the best weights and the early-stopping verdict travel in the checkpoint. The
worker's device, resuming, RNG states, collectives and checkpoint reports are the GAN loop's
(ganray.worker); `run_loop` also runs in-process without Ray (ganray.labels.local).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from datetime import datetime, timezone
from typing import Any

import ray.train
import ray.train.torch
import numpy as np
import torch
import torch.nn.functional as F

from ganray.config import LabelerTrainJob
from ganray.data.batches import BatchPrefetcher
from ganray.data.dataset import EpochSampler, IndexedRows
from ganray.labels import checkpoint as ckpt
from ganray.labels.augment import augment_batch
from ganray.labels.evaluate import predict_probabilities
from ganray.models.classifier import build_classifier
from ganray.models.face import resolve_precision
from ganray.worker import TrainWorker, rng_state


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train entry: this worker's rank of the run (DDP over the worker group)."""
    cfg = LabelerTrainJob.model_validate(loop_config["job"]).train
    worker = TrainWorker.start(cfg.threads_per_worker, cfg.deterministic)
    run_loop(loop_config, worker, ray.train.get_checkpoint(), distributed=True)


def learning_rate(cfg, step: int) -> float:
    """The learning rate of update `step` (0-based): linear warmup, then constant or a half cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    done = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done)))


def validation_scores(model: torch.nn.Module, validation: dict[str, Any]) -> dict[str, float]:
    """Balanced accuracy (mean recall over the classes present) per attribute, and their mean (`val_score`)."""
    model.eval()
    probabilities = predict_probabilities(model, validation["image"])
    model.train()
    scores = {}
    for name, p in probabilities.items():
        truth, predicted = np.asarray(validation[name]), p.argmax(axis=1)
        recalls = [float((predicted[truth == c] == c).mean()) for c in np.unique(truth)]
        scores[f"val_balanced_acc_{name}"] = float(np.mean(recalls))
    scores["val_score"] = float(np.mean(list(scores.values())))
    return scores


def run_loop(loop_config: dict[str, Any], worker, offered_checkpoint, distributed: bool) -> None:
    job = LabelerTrainJob.model_validate(loop_config["job"])
    attributes: dict[str, list[str]] = loop_config["attributes"]
    rows: IndexedRows = loop_config["rows"]
    validation = loop_config.get("validation")
    cfg = job.train
    rank, world_size, device = worker.rank, worker.world_size, worker.device

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    random.seed(cfg.seed)
    model = build_classifier(job.model, job.data.resolution, attributes).to(device)
    torch.manual_seed(cfg.seed * 1000 + rank + 1)  # each rank's own dropout stream from here on
    sampler = EpochSampler(rows.num_rows, cfg.batch_size, cfg.seed, rank=rank, world_size=world_size,
                           hflip=job.data.hflip)
    step, history, best, stopped = 0, [], None, False

    def say(message: str) -> None:  # rank 0 only: one line, however many workers
        if rank == 0:
            print(message, flush=True)

    # Only a complete checkpoint: Ray can offer one whose upload failed. On CPU, RNGs restored.
    state = worker.resume(offered_checkpoint, loop_config["run_url"], say)
    if state is not None:
        model.load_state_dict(state["model"])  # copies onto the device
        step, history = state["step"], list(state["history"])
        best, stopped = state.get("best"), bool(state.get("stopped_early", False))
        sampler.load_state_dict(state["data_position"])

    if distributed:
        model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        opt.load_state_dict(state["opt"])  # moments to the parameters' device, `step` stays on CPU
        history.append({"event": "resume", "step": step})
        say(f"[ganray labeler] resumed at step {step}")
        del state

    names = list(attributes)
    weights = {n: torch.tensor(w, dtype=torch.float32, device=device)
               for n, w in (loop_config.get("class_weights") or {}).items()}
    # "auto": bf16 where this worker's device computes it, else fp32 (this loop has no fp16 loss scaling).
    bf16 = resolve_precision(cfg.precision, device, fp16=False) == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    window, started = StepMetrics(), time.perf_counter()
    # From the restored position on; its state_dict is the position of the batch not yet trained on.
    batches = BatchPrefetcher(rows, sampler, None, device)
    while step < cfg.max_steps and not stopped:
        x, labels = batches.next()  # the batch after it is read while this step computes
        x = augment_batch(x, seed=cfg.seed, step=step, rank=rank, shift=cfg.augment_shift, color=cfg.augment_color)
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        window.add(classifier_step(model, opt, x, labels, names, autocast, weights))
        step += 1

        at_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        if step % cfg.log_every == 0 or at_checkpoint:
            count = window.count
            metrics = worker.mean(window.means())
            metrics.update(step=step, lr=learning_rate(cfg, step - 1),
                           images_per_s=count * cfg.batch_size / max(time.perf_counter() - started, 1e-9))
            if at_checkpoint and validation is not None:
                # Rank 0 scores; every rank takes its verdict (the same weights on every rank).
                scores = worker.gather(validation_scores(_unwrap(model), validation) if rank == 0 else None)[0]
                metrics.update(scores)
                if best is None or scores["val_score"] > best["score"]:
                    best = {"step": step, "score": scores["val_score"],
                            "model": {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}}
                patience = cfg.early_stopping_patience
                if patience and step - best["step"] >= patience * cfg.checkpoint_every and step < cfg.max_steps:
                    stopped = True
                    say(f"[ganray labeler] early stop at step {step}: no better validation score since "
                        f"step {best['step']} ({best['score']:.4f})")
                    history.append({"event": "early_stop", "step": step, "best_step": best["step"]})
            history.append(dict(metrics))
            rngs = worker.gather(rng_state())  # a collective: every rank, every report

            def write(folder: str) -> None:  # rank 0, at a checkpoint
                training = {"model": _unwrap(model).state_dict(), "opt": opt.state_dict(), "rng": rngs,
                            "data_position": batches.state_dict(), "step": step}
                extra = {"best": best, "stopped_early": stopped}
                _write_checkpoint(folder, job, attributes, loop_config["manifest_hash"], history, metrics,
                                  training, extra)

            worker.report(metrics, step if at_checkpoint else None, write)
            progress = loop_config.get("progress")
            if rank == 0 and progress is not None:
                # The driver's console line: a Ray actor (fire and forget) or, in-process, a function.
                progress(metrics) if callable(progress) else progress.post.remote(metrics)
            started = time.perf_counter()
    batches.close()


def classifier_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
                    names: list[str], autocast, class_weights: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
    """One update on (x, labels); the loss and each head's batch accuracy as 0-d tensors on the
    device, so that a step that does not log never waits for the device."""
    model.train()
    with autocast:
        logits = model(x)
    class_weights = class_weights or {}
    loss = sum(F.cross_entropy(logits[n].float(), labels[:, j], weight=class_weights.get(n))
               for j, n in enumerate(names))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return {"loss": loss.detach(), **{f"train_acc_{n}": (logits[n].argmax(1) == labels[:, j]).float().mean()
                                          for j, n in enumerate(names)}}


class StepMetrics:
    """Sums of the steps' metrics since the last report, on the device (float64, as Python floats
    would sum them); `means` reads them back once and starts a new window."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v.double() if k in self.sums else v.double()
        self.count += 1

    def means(self) -> dict[str, float]:
        keys = list(self.sums)
        values = (torch.stack([self.sums[k] for k in keys]) / self.count).tolist() if keys else []
        self.sums, self.count = {}, 0
        return dict(zip(keys, values))


def _write_checkpoint(directory: str, job: LabelerTrainJob, attributes: dict, manifest_hash: str,
                      history: list, metrics: dict, training: dict[str, Any], extra: dict[str, Any]) -> None:
    config = job.model_dump(mode="json")
    state = {**training, **extra, "history": history, "config": config, "manifest_hash": manifest_hash,
             "attributes": attributes}
    torch.save(state, os.path.join(directory, ckpt.STATE_FILE))
    meta = {"step": training["step"], "config": config, "manifest_hash": manifest_hash, "attributes": attributes,
            "metrics": metrics, "run_name": job.run.name, "created_at": datetime.now(timezone.utc).isoformat(),
            "state_digest": ckpt.state_digest(state)}
    ckpt.write_meta(directory, meta)  # last: it names state.pt and its size (checkpoints.is_complete)
