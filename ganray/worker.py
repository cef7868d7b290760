"""What both training loops (the GAN's, ganray/train/loop.py, and the attribute classifier's,
ganray/labels/train.py) do the same way inside a Ray Train worker, so that a fix to one is a fix to
both: the worker's device and kernels, resuming from the newest complete checkpoint, RNG states,
collectives over the ranks, and reporting a checkpoint.

Two rules for GPU workers live here. A checkpoint is loaded to CPU, never to the worker's device:
torch.set_rng_state takes only CPU ByteTensors, and Optimizer.load_state_dict moves each state
tensor where torch wants it (moments to their parameter's device, Adam's `step` kept on CPU unless
the optimizer is capturable or fused); model weights reach the device through load_state_dict's copy.
And every tensor a collective is handed is on the worker's device (NCCL takes only CUDA tensors).
"""
from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ganray import checkpoints


@dataclass(frozen=True)
class TrainWorker:
    """One rank of a training run: its place in the worker group and its device. The collectives
    take the device from here, so a loop cannot hand them a tensor on another one."""
    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def start(cls, threads_per_worker: int, deterministic: bool) -> TrainWorker:
        """This Ray Train worker, its torch threads set (CPU) and, with `deterministic`, kernels
        that give the same bits every run."""
        context = ray.train.get_context()
        device = ray.train.torch.get_device()
        if device.type == "cpu":
            torch.set_num_threads(threads_per_worker)
        if deterministic:
            use_deterministic_kernels(device.type == "cuda")
        return cls(context.get_world_rank(), context.get_world_size(), device)

    def resume(self, offered, run_url: str, say: Callable[[str], None]) -> dict[str, Any] | None:
        """The state to resume from, on CPU (`checkpoints.restore`: the offered checkpoint,
        `ray.train.get_checkpoint()`, when it is complete in storage, else the newest complete one
        before it; None on a fresh run), with this rank's RNG states already restored."""
        state = checkpoints.restore(offered, run_url, say)
        if state is not None:
            self.restore_rng(state["rng"])
        return state

    def restore_rng(self, saved: list[dict[str, Any]]) -> None:
        """This rank's saved RNG states (`rng_state()` of every rank, in rank order). With another
        worker count the old streams do not map onto the new ranks: the fresh per-rank seeds stand."""
        if len(saved) == self.world_size:
            set_rng_state(saved[self.rank])

    def gather(self, obj: Any) -> list[Any]:
        return gather_from_all(obj, self.device)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        return mean_over_workers(values, self.device)

    def report(self, metrics: dict[str, Any], checkpoint_step: int | None,
               write: Callable[[str], None]) -> None:
        """`ray.train.report` (a barrier: every rank calls it together). With `checkpoint_step`,
        rank 0 first has `write(folder)` fill a temporary folder with the checkpoint's files, which
        Ray Train stores as `checkpoint_{step:08d}` under the run."""
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if checkpoint_step is not None and self.rank == 0:
                write(tmp)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            name = checkpoints.checkpoint_dir_name(checkpoint_step) if checkpoint_step is not None else None
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def use_deterministic_kernels(use_gpu: bool) -> None:
    """Make every kernel bit-reproducible run to run (train.deterministic).

    On CPU, with a fixed torch thread count, the kernels these models use already are; the flag makes
    torch raise on any op that has no deterministic version instead of silently varying. On GPU it
    also needs cuBLAS's fixed workspace (the variable must be set before cuBLAS starts) and turns
    off cuDNN's autotuner, which may pick different algorithms in different runs.
    """
    if use_gpu:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as CPU ByteTensors (torch draws the noise z and dropout; python's
    is saved for code that uses it; CUDA's is the current device's, which Ray Train sets)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """`rng_state()` restored; its tensors must be on CPU (torch refuses any other)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x: Any) -> Any:
    # random.setstate wants tuples all the way down; serialisation may hand back lists.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_from_all(obj: Any, device: torch.device) -> list[Any]:
    """Every rank's `obj`, in rank order (one item when not distributed). torch pickles it into a
    tensor on the current CUDA device under NCCL: `device`'s, whoever set the current one."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    if device.type == "cuda":
        with torch.cuda.device(device):
            dist.all_gather_object(out, obj)
    else:
        dist.all_gather_object(out, obj)
    return out


def mean_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all ranks (the values themselves when not distributed), reduced
    in a tensor on `device`, the worker's (NCCL reduces only CUDA tensors)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))
