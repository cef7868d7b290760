"""Joining a Ray cluster (or starting a local one when none is given), and what every distributed
training loop (the GAN's and the labeler's) shares inside its workers: RNG states, gathering and
averaging over ranks, and the digest that proves two training states bit-identical."""
from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import ray
import torch
import torch.distributed as dist

from ganray import console


def init_ray(address: str | None = None, **local_kwargs) -> None:
    """Connect to `address` (or $RAY_ADDRESS); with neither, start a local Ray owned by this process.

    Under `ray job submit` the driver already runs inside the cluster and RAY_ADDRESS is set, so
    the same entry point works on a laptop and on a GPU cluster. Unless the command runs with
    --verbose, worker output and Ray's own log lines stay in the session's log files (see
    ganray/console.py); the console gets one line saying where they are.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    options = console.ray_init_options()
    if address:
        ray.init(address=address, **options)
    else:
        local_kwargs.setdefault("include_dashboard", False)
        ray.init(**options, **local_kwargs)
    log = console.route_driver_logs(_session_logs_dir())
    if log:
        print(f"[ganray] Ray logs: {os.path.dirname(log)} (--verbose shows them here)", flush=True)


def _session_logs_dir() -> str | None:
    try:  # not a public API; the message above is all that depends on it
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001
        return None


# --- inside a Ray Train worker --------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch draws the noise z; python's is saved for code that uses it)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
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


def mean_over_workers(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """The mean of each value over all ranks (the values themselves when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def state_digest(state: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A SHA-256 over the training state under `keys` (every tensor's dtype, shape and bytes, every
    other value's repr, every key): equal digests mean bit-identical models, optimizers, scalers,
    RNGs and data position."""
    h = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                visit(obj[k])
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)
        else:
            h.update(repr(obj).encode())

    for key in keys:
        h.update(key.encode())
        visit(state[key])
    return h.hexdigest()
