"""The per-worker GAN training loop that Ray Train runs on every worker.

Read top to bottom: set up (models, optimizers, restore), then the loop: D step(s) (with lazy R1
and ADA's adjustments of p on their schedules), G step (with path length on its schedule), EMA,
metrics, checkpoints. Parallelism is Ray Train's: `prepare_model` wraps G and D in DDP (gloo on
CPU, NCCL on GPU) and `ray.train.report` carries metrics and checkpoints to storage. Nothing here
knows how many nodes there are.

A run is reproducible: with the same seed, worker count and threads_per_worker (and
train.deterministic on) two runs end bit-identical, and so does a run that was interrupted and
resumed. That takes every source of randomness to be seeded and saved: the models' init (the seed),
each worker's noise and ADA augmentations (torch's RNG, saved per rank), ADA's p and the statistics
that steer it, the running path-length mean, the data order and flips (`EpochSampler`: a pure
function of seed and position; the position is saved), and deterministic kernels. This is why the
loop reads rows by index (`IndexedRows`) rather than through `get_dataset_shard`, whose streaming
split hands out blocks in finishing order.
"""
from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import ray.train
import ray.train.torch
import torch

from ganray.config import TrainJob
from ganray.data.batches import BatchPrefetcher
from ganray.data.dataset import EpochSampler, IndexedRows
from ganray.models import build_models
from ganray.train import checkpoint as ckpt
from ganray.train.report import save_loss_plot, save_sample_grid
from ganray.train.steps import DStepResult, GANSteps, unwrap
from ganray.worker import TrainWorker, gather_from_all, rng_state


class GeneratorEvaluator(Protocol):
    """What the loop calls to evaluate G_ema (rank 0 only): generator -> {metric: value}.

    Handed in through the loop config by whoever starts training (`ganray train` gives
    ganray.eval.training.TrainingEvaluator; train does not import eval). It must draw nothing from
    the global RNGs and leave the generator as it was: training continues bit-identically.
    """

    def prepare(self) -> None:
        """On the driver, once Ray is up, before the workers start (e.g. reference features)."""

    def __call__(self, generator: torch.nn.Module) -> dict[str, float]: ...


def evaluation_due(images_before: int, images_seen: int, every: int | None) -> bool:
    """Whether this step's images passed a multiple of `every` (None: never)."""
    return every is not None and images_seen // every > images_before // every


def evaluate_on_rank_zero(evaluator: GeneratorEvaluator, generator: torch.nn.Module,
                          worker: TrainWorker) -> dict[str, float]:
    """Rank 0 evaluates while the others wait; every rank gets its numbers (one collective)."""
    result = None
    if worker.rank == 0:
        started = time.perf_counter()
        result = dict(evaluator(generator))
        result["eval_s"] = time.perf_counter() - started
    return worker.gather(result)[0]


@dataclass
class Progress:
    step: int = 0           # G optimisation steps done
    images_seen: int = 0    # real images shown to D, over all workers
    history: list[dict[str, Any]] = field(default_factory=list)  # reported metrics, in order


def gather_per_rank_state(steps: GANSteps) -> tuple[list[dict], list[tuple[float, int]]]:
    """Every rank's RNG states and ADA statistics since p was last adjusted: one collective."""
    gathered = gather_from_all((rng_state(), steps.ada_pending()), steps.device)
    return [rng for rng, _ in gathered], [tuple(pending) for _, pending in gathered]


def training_state(steps: GANSteps, progress: Progress, per_rank: tuple[list[dict], list[tuple[float, int]]],
                   sampler: EpochSampler | BatchPrefetcher) -> dict[str, Any]:
    """Everything `ckpt.TRAINING_STATE_KEYS` names: what must be equal for two runs to be the same.
    `per_rank`: `gather_per_rank_state(steps)`."""
    rngs, ada_pending = per_rank
    return {
        "G": unwrap(steps.G).state_dict(), "D": unwrap(steps.D).state_dict(), "G_ema": steps.G_ema.state_dict(),
        **steps.optimizer_state(ada_pending),
        "rng": rngs, "data_position": sampler.state_dict(),
        "step": progress.step, "images_seen": progress.images_seen,
    }


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    job = TrainJob.model_validate(loop_config["job"])
    attributes: dict[str, list[str]] = loop_config["attributes"]
    manifest_hash: str = loop_config["manifest_hash"]
    progress_board = loop_config.get("progress_board")  # the driver's console line (train/progress.py)
    evaluator: GeneratorEvaluator | None = loop_config.get("evaluator")  # job.eval.every_images
    cfg, resolution = job.train, job.data.resolution

    # Device, threads and deterministic kernels, resuming, RNG states, collectives and checkpoint
    # reports: the labeler's loop does them the same way (ganray.worker).
    worker = TrainWorker.start(cfg.threads_per_worker, cfg.deterministic)
    rank, world_size, device = worker.rank, worker.world_size, worker.device

    # Same seed on every rank: G and D start identical everywhere (DDP also broadcasts them).
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    G, D = build_models(job.model, resolution, attributes if job.model.conditional else None)
    # The label columns G and D are called with: the attributes they condition on, in their order
    # (`model.condition_on` may pick and reorder the dataset's attributes).
    label_columns = list(G.condition_names)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Each rank draws its own noise from here on.
    torch.manual_seed(cfg.seed * 1000 + rank + 1)
    rows: IndexedRows = loop_config["rows"]
    sampler = EpochSampler(rows.num_rows, cfg.batch_size, cfg.seed, rank=rank, world_size=world_size,
                           hflip=job.data.hflip, weights=rows.weights)  # weights: a balance-weighted import

    # --- Restore the full state from the latest checkpoint (worker restart or re-run).
    progress = Progress()

    def say(message: str) -> None:  # rank 0 only: one line, however many workers
        if rank == 0:
            print(message, flush=True)
            if progress_board is not None:
                progress_board.say.remote(message)

    # Only a complete checkpoint: Ray can offer one whose upload failed. Loaded on CPU; this rank's
    # RNG states restored (with another worker count the fresh per-rank seeds above stand instead).
    state = worker.resume(ray.train.get_checkpoint(), loop_config["run_url"], say)
    if state is not None:
        G.load_state_dict(state["G"])  # load_state_dict copies onto the device
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        progress = Progress(state["step"], state["images_seen"], list(state["history"]))
        # The data stream continues at the saved position, whatever the worker count now: its
        # global batches do not depend on it.
        sampler.load_state_dict(state["data_position"])
    elif loop_config.get("init_generator") is not None:  # a warm start: a fresh run from given weights
        G.load_state_dict(loop_config["init_generator"])
        G_ema.load_state_dict(loop_config["init_generator"])
        progress.history.append({"event": "warm_start", "state_digest": ckpt.state_digest(
            {"G_ema": G_ema.state_dict()}, keys=("G_ema",))})

    steps = GANSteps(ray.train.torch.prepare_model(G), ray.train.torch.prepare_model(D), G_ema, cfg,
                     job.model.z_dim, device)
    if state is not None:
        steps.load_optimizer_state(state, rank)  # Adam: moments to the device, `step` stays on CPU
        # A collective (all ranks gather the RNG states), like the one at every report.
        digest = ckpt.state_digest(training_state(steps, progress, gather_per_rank_state(steps), sampler))
        progress.history.append({"event": "resume", "step": progress.step, "state_digest": digest})
        say(f"[ganray] resumed at step {progress.step} ({progress.images_seen} images seen); state digest {digest}")
        del state

    local_batch = cfg.batch_size // world_size
    probabilities = cfg.loss in ("minimax", "non_saturating")  # D outputs read as P(real)
    window = MetricsWindow()
    # From the restored position on; its state_dict is the position of the batch not yet trained on.
    batches = BatchPrefetcher(rows, sampler, label_columns, device)

    while progress.step < cfg.max_steps:
        images_before = progress.images_seen
        # --- Discriminator: d_steps_per_g_step updates, each on a fresh real batch.
        for k in range(cfg.d_steps_per_g_step):
            real, labels = batches.next()  # the batch after it is read while this step computes
            labels = labels if job.model.conditional else None
            # The D minibatch's index schedules lazy R1 and ADA's adjustments of p.
            d = steps.discriminator_step(real, labels, d_index=progress.step * cfg.d_steps_per_g_step + k)
            progress.images_seen += cfg.batch_size
            window.images += cfg.batch_size
        # --- Generator: one update against the just-updated D, then the EMA.
        loss_G = steps.generator_step(local_batch, labels, progress.step)
        progress.step += 1
        window.add(d, loss_G, probabilities)

        # --- Metrics and checkpoints. ray.train.report is a barrier: every rank calls it together.
        at_checkpoint = progress.step % cfg.checkpoint_every == 0 or progress.step == cfg.max_steps
        # Evaluation reports at its own step, whatever log_every says (the same decision on every rank).
        eval_due = evaluator is not None and evaluation_due(images_before, progress.images_seen,
                                                            job.eval.every_images)
        if progress.step % cfg.log_every == 0 or at_checkpoint or eval_due:
            metrics = worker.mean(window.means())
            metrics.update(step=progress.step, images_seen=progress.images_seen, images_per_s=window.rate())
            if steps.augment.enabled:  # the same on every rank
                metrics.update(ada_p=steps.augment.p, ada_rt=steps.augment.rt)
            if eval_due:
                metrics.update(evaluate_on_rank_zero(evaluator, steps.G_ema, worker))
            progress.history.append(dict(metrics))
            per_rank = gather_per_rank_state(steps)  # a collective: all ranks, every report

            def write(folder: str) -> None:  # rank 0, at a checkpoint
                write_checkpoint(folder, job, attributes, manifest_hash, progress, metrics,
                                 training_state(steps, progress, per_rank, batches), steps.G_ema)

            worker.report(metrics, progress.step if at_checkpoint else None, write)
            if rank == 0 and progress_board is not None:
                progress_board.post.remote(metrics)
            window = MetricsWindow()
    batches.close()


class MetricsWindow:
    """Running sums of the metrics between two reports, kept on the training device: adding a
    step's metrics does not wait for the GPU; `means` (at a report) reads them once."""

    KEYS = ("loss_D", "loss_G", "D_real", "D_fake")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.images = 0
        self.steps = 0
        self.sums: torch.Tensor | None = None  # float64, in KEYS order

    def add(self, d: DStepResult, loss_G: torch.Tensor, probabilities: bool) -> None:
        score = torch.sigmoid if probabilities else (lambda t: t)
        # float64 sums of the float32 values: the same numbers as summing them as Python floats.
        values = torch.stack([d.loss.float(), loss_G.float(), score(d.real_logits).mean(),
                              score(d.fake_logits).mean()]).double()
        self.sums = values if self.sums is None else self.sums + values
        self.steps += 1

    def means(self) -> dict[str, float]:
        sums = [0.0] * len(self.KEYS) if self.sums is None else self.sums.tolist()
        return {k: v / max(self.steps, 1) for k, v in zip(self.KEYS, sums)}

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)


def write_checkpoint(directory: str, job: TrainJob, attributes: dict, manifest_hash: str,
                     progress: Progress, metrics: dict, training: dict[str, Any], G_ema: torch.nn.Module) -> None:
    state = {
        **training, "history": progress.history,
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
    ckpt.write_meta(directory, meta)  # last: it names every other file (checkpoints.is_complete)
