"""Joining a Ray cluster, or starting a local one when none is given. (What the training loops share
inside their Ray Train workers: ganray/worker.py.)"""
from __future__ import annotations

import os

import ray

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
    console.route_native_stderr(_session_logs_dir())
    if log:
        print(f"[ganray] Ray logs: {os.path.dirname(log)} (--verbose shows them here)", flush=True)


def _session_logs_dir() -> str | None:
    try:  # not a public API; the message above is all that depends on it
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001
        return None

