"""The per-worker training loop of the attribute classifier (Ray Train, DDP on gloo / NCCL).

Reproducible and resumable like the GAN's loop (ganray/train/loop.py): the data order and flips
come from `EpochSampler` (a pure function of seed and position, saved in each checkpoint), every
rank's RNG state is saved, kernels are deterministic; a run that is stopped and re-run, or whose
worker is killed and restarted by Ray Train from the latest checkpoint, ends bit-identical to one
that was never interrupted. Loss: the sum over attributes of each head's cross-entropy. The worker's
device, resuming, RNG states, collectives and checkpoint reports are the GAN loop's (ganray.worker).
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from datetime import datetime, timezone
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F

from ganray.config import LabelerTrainJob
from ganray.data.batches import BatchPrefetcher
from ganray.data.dataset import EpochSampler, IndexedRows
from ganray.labels import checkpoint as ckpt
from ganray.models.classifier import build_classifier
from ganray.models.face import resolve_precision
from ganray.worker import TrainWorker, rng_state


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    job = LabelerTrainJob.model_validate(loop_config["job"])
    attributes: dict[str, list[str]] = loop_config["attributes"]
    rows: IndexedRows = loop_config["rows"]
    cfg = job.train

    worker = TrainWorker.start(cfg.threads_per_worker, cfg.deterministic)
    rank, world_size, device = worker.rank, worker.world_size, worker.device

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    random.seed(cfg.seed)
    model = build_classifier(job.model, job.data.resolution, attributes).to(device)
    torch.manual_seed(cfg.seed * 1000 + rank + 1)  # each rank's own dropout stream from here on
    sampler = EpochSampler(rows.num_rows, cfg.batch_size, cfg.seed, rank=rank, world_size=world_size,
                           hflip=job.data.hflip)
    step, history = 0, []

    def say(message: str) -> None:  # rank 0 only: one line, however many workers
        if rank == 0:
            print(message, flush=True)

    # Only a complete checkpoint: Ray can offer one whose upload failed. On CPU, RNGs restored.
    state = worker.resume(ray.train.get_checkpoint(), loop_config["run_url"], say)
    if state is not None:
        model.load_state_dict(state["model"])  # copies onto the device
        step, history = state["step"], list(state["history"])
        sampler.load_state_dict(state["data_position"])

    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        opt.load_state_dict(state["opt"])  # moments to the parameters' device, `step` stays on CPU
        history.append({"event": "resume", "step": step})
        say(f"[ganray labeler] resumed at step {step}")
        del state

    names = list(attributes)
    # "auto": bf16 where this worker's device computes it, else fp32 (this loop has no fp16 loss scaling).
    bf16 = resolve_precision(cfg.precision, device, fp16=False) == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    window, started = StepMetrics(), time.perf_counter()
    # From the restored position on; its state_dict is the position of the batch not yet trained on.
    batches = BatchPrefetcher(rows, sampler, None, device)
    while step < cfg.max_steps:
        x, labels = batches.next()  # the batch after it is read while this step computes
        window.add(classifier_step(model, opt, x, labels, names, autocast))
        step += 1

        at_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        if step % cfg.log_every == 0 or at_checkpoint:
            count = window.count
            metrics = worker.mean(window.means())
            metrics.update(step=step, images_per_s=count * cfg.batch_size / max(time.perf_counter() - started, 1e-9))
            history.append(dict(metrics))
            rngs = worker.gather(rng_state())  # a collective: every rank, every report

            def write(folder: str) -> None:  # rank 0, at a checkpoint
                training = {"model": _unwrap(model).state_dict(), "opt": opt.state_dict(), "rng": rngs,
                            "data_position": batches.state_dict(), "step": step}
                _write_checkpoint(folder, job, attributes, loop_config["manifest_hash"], history, metrics, training)

            worker.report(metrics, step if at_checkpoint else None, write)
            if rank == 0 and loop_config.get("progress") is not None:
                loop_config["progress"].post.remote(metrics)  # the driver's console line; fire and forget
            started = time.perf_counter()
    batches.close()


def classifier_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
                    names: list[str], autocast) -> dict[str, torch.Tensor]:
    """One update on (x, labels); the loss and each head's batch accuracy as 0-d tensors on the
    device, so that a step that does not log never waits for the device."""
    model.train()
    with autocast:
        logits = model(x)
    loss = sum(F.cross_entropy(logits[n].float(), labels[:, j]) for j, n in enumerate(names))
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
                      history: list, metrics: dict, training: dict[str, Any]) -> None:
    config = job.model_dump(mode="json")
    state = {**training, "history": history, "config": config, "manifest_hash": manifest_hash,
             "attributes": attributes}
    torch.save(state, os.path.join(directory, ckpt.STATE_FILE))
    meta = {"step": training["step"], "config": config, "manifest_hash": manifest_hash, "attributes": attributes,
            "metrics": metrics, "run_name": job.run.name, "created_at": datetime.now(timezone.utc).isoformat(),
            "state_digest": ckpt.state_digest(state)}
    ckpt.write_meta(directory, meta)  # last: it names state.pt and its size (checkpoints.is_complete)
