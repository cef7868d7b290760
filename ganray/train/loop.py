"""The per-worker GAN training loop that Ray Train runs on every worker.

Read top to bottom: set up (models, optimizers, restore), then the loop: D step(s), G step, EMA,
metrics, checkpoints. Parallelism is Ray Train's: `prepare_model` wraps G and D in DDP (gloo on
CPU, NCCL on GPU), `get_dataset_shard` gives this worker its slice of the data, and
`ray.train.report` carries metrics and checkpoints to storage. Nothing here knows how many nodes
there are.
"""
from __future__ import annotations

import copy
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ganray.config import TrainJob
from ganray.data.dataset import to_training_batch
from ganray.models.dcgan import build_models
from ganray.models.losses import get_loss, gradient_penalty, r1_penalty
from ganray.train import checkpoint as ckpt
from ganray.train.report import save_loss_plot, save_sample_grid


@dataclass
class Progress:
    step: int = 0           # G optimisation steps done
    images_seen: int = 0    # real images shown to D, over all workers
    history: list[dict[str, Any]] = field(default_factory=list)  # reported metrics, in order


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G; buffers (BatchNorm statistics) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def rng_state(aug_generator: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "aug": aug_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], aug_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    aug_generator.set_state(state["aug"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x: Any) -> Any:
    # random.setstate wants tuples all the way down; serialisation may hand back lists.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_from_all(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (one item when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def epochs(shard, batch_size: int) -> Iterator[dict]:
    """This worker's batches, epoch after epoch, forever (the step budget ends training)."""
    while True:
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                                        local_shuffle_buffer_size=batch_size * 8):
            yield batch


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    job = TrainJob.model_validate(loop_config["job"])
    attributes: dict[str, list[str]] = loop_config["attributes"]
    manifest_hash: str = loop_config["manifest_hash"]
    cfg, resolution = job.train, job.data.resolution

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads_per_worker)

    # Same seed on every rank: G and D start identical everywhere (DDP also broadcasts them).
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    G, D = build_models(job.model, resolution, attributes if job.model.conditional else None)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=cfg.betas)
    use_scaler = cfg.precision == "fp16"
    scaler_G = torch.amp.GradScaler(device.type, enabled=use_scaler)
    scaler_D = torch.amp.GradScaler(device.type, enabled=use_scaler)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    # Each rank draws its own noise and flips from here on.
    torch.manual_seed(cfg.seed * 1000 + rank + 1)
    aug_generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 1)
    progress = Progress()

    # --- Restore the full state from the latest checkpoint (worker restart or re-run).
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = torch.load(os.path.join(directory, ckpt.STATE_FILE), map_location=device,
                               weights_only=True)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        scaler_G.load_state_dict(state["scaler"]["G"])
        scaler_D.load_state_dict(state["scaler"]["D"])
        progress = Progress(state["step"], state["images_seen"], list(state["history"]))
        rngs = state["rng"]
        if len(rngs) == world_size:
            set_rng_state(rngs[rank], aug_generator)
        # With another worker count the old streams do not map onto the new ranks: the
        # fresh per-rank seeds above stand, and everything else is restored exactly.
        if rank == 0:
            print(f"[ganray] resumed at step {progress.step} ({progress.images_seen} images seen); "
                  f"state digest {ckpt.state_digest(state)}", flush=True)
        progress.history.append({"event": "resume", "step": progress.step,
                                 "state_digest": ckpt.state_digest(state)})
        del state

    G, D = ray.train.torch.prepare_model(G), ray.train.torch.prepare_model(D)
    loss = get_loss(cfg.loss)
    local_batch = cfg.batch_size // world_size
    z_dim = job.model.z_dim
    conditional = job.model.conditional

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                              enabled=autocast_dtype is not None)

    shard = ray.train.get_dataset_shard("train")
    batches = epochs(shard, local_batch)
    window_start, window_images = time.perf_counter(), 0
    sums = {"loss_D": 0.0, "loss_G": 0.0, "D_real": 0.0, "D_fake": 0.0}
    window_steps = 0
    probabilities = cfg.loss in ("minimax", "non_saturating")  # D outputs read as P(real)

    while progress.step < cfg.max_steps:
        # --- Discriminator: d_steps_per_g_step updates, each on a fresh real batch.
        for _ in range(cfg.d_steps_per_g_step):
            real, labels = to_training_batch(next(batches), hflip=job.data.hflip, generator=aug_generator)
            real = real.to(device, non_blocking=True)
            labels = labels.to(device) if conditional else None
            z = torch.randn(local_batch, z_dim, device=device)
            with torch.no_grad(), autocast():
                fake = G(z, labels)
            with autocast():
                real_logits = D(real, labels)
                fake_logits = D(fake.float(), labels)
                loss_D = loss.d_loss(real_logits.float(), fake_logits.float())
            # Penalties run in fp32: their double backward is where low precision hurts.
            if loss.uses_gradient_penalty and cfg.gp_lambda > 0:
                loss_D = loss_D + cfg.gp_lambda * gradient_penalty(D, real, fake.float(), labels)
            if cfg.r1_gamma > 0:
                loss_D = loss_D + (cfg.r1_gamma / 2) * r1_penalty(D, real, labels)
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(opt_D)
            scaler_D.update()
            progress.images_seen += cfg.batch_size
            window_images += cfg.batch_size

        # --- Generator: one update against the just-updated D.
        z = torch.randn(local_batch, z_dim, device=device)
        with autocast():
            fake = G(z, labels)
            fake_logits_G = D(fake, labels)
            loss_G = loss.g_loss(fake_logits_G.float())
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(opt_G)
        scaler_G.update()
        update_ema(G_ema, _unwrap(G), cfg.ema_beta)
        progress.step += 1

        with torch.no_grad():
            to_score = torch.sigmoid if probabilities else (lambda t: t)
            sums["loss_D"] += loss_D.item()
            sums["loss_G"] += loss_G.item()
            sums["D_real"] += to_score(real_logits.float()).mean().item()
            sums["D_fake"] += to_score(fake_logits.float()).mean().item()
            window_steps += 1

        # --- Metrics and checkpoints. ray.train.report is a barrier: every rank calls it together.
        at_checkpoint = progress.step % cfg.checkpoint_every == 0 or progress.step == cfg.max_steps
        if progress.step % cfg.log_every == 0 or at_checkpoint:
            elapsed = time.perf_counter() - window_start
            metrics = mean_over_workers({k: v / window_steps for k, v in sums.items()}, device)
            metrics.update(step=progress.step, images_seen=progress.images_seen,
                           images_per_s=window_images / max(elapsed, 1e-9))
            progress.history.append(dict(metrics))
            checkpoint = None
            rngs = gather_from_all(rng_state(aug_generator))  # collective: all ranks, every report
            with tempfile.TemporaryDirectory() as tmp:
                if at_checkpoint and rank == 0:
                    write_checkpoint(tmp, job, attributes, manifest_hash, progress, rngs, metrics,
                                     G=_unwrap(G), D=_unwrap(D), G_ema=G_ema, opt_G=opt_G, opt_D=opt_D,
                                     scalers={"G": scaler_G.state_dict(), "D": scaler_D.state_dict()})
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=checkpoint,
                                 checkpoint_dir_name=ckpt.checkpoint_dir_name(progress.step) if at_checkpoint else None)
            sums = dict.fromkeys(sums, 0.0)
            window_steps, window_images, window_start = 0, 0, time.perf_counter()


def write_checkpoint(directory: str, job: TrainJob, attributes: dict, manifest_hash: str,
                     progress: Progress, rngs: list[dict], metrics: dict, *, G, D, G_ema, opt_G, opt_D,
                     scalers: dict) -> None:
    state = {
        "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
        "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "scaler": scalers,
        "step": progress.step, "images_seen": progress.images_seen,
        "rng": rngs, "history": progress.history,
        "config": job.model_dump(mode="json"), "manifest_hash": manifest_hash, "attributes": attributes,
    }
    torch.save(state, os.path.join(directory, ckpt.STATE_FILE))
    meta = {
        "step": progress.step, "images_seen": progress.images_seen, "config": state["config"],
        "manifest_hash": manifest_hash, "attributes": attributes, "metrics": metrics,
        "run_name": job.run.name, "created_at": datetime.now(timezone.utc).isoformat(),
        "state_digest": ckpt.state_digest(state),
    }
    with open(os.path.join(directory, ckpt.METRICS_FILE), "w") as f:
        for row in progress.history:
            f.write(json.dumps(row) + "\n")
    save_sample_grid(G_ema, job, attributes, os.path.join(directory, ckpt.SAMPLES_FILE))
    save_loss_plot(progress.history, os.path.join(directory, ckpt.LOSS_PLOT_FILE))
    # meta.json last: its presence marks the checkpoint complete (see checkpoint.list_checkpoints).
    with open(os.path.join(directory, ckpt.META_FILE), "w") as f:
        json.dump(meta, f, indent=1)
