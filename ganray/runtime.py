"""Joining a Ray cluster, or starting a local one when none is given."""
from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None, **local_kwargs) -> None:
    """Connect to `address` (or $RAY_ADDRESS); with neither, start a local Ray owned by this process.

    Under `ray job submit` the driver already runs inside the cluster and RAY_ADDRESS is set, so
    the same entry point works on a laptop and on a GPU cluster.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        local_kwargs.setdefault("include_dashboard", False)
        ray.init(**local_kwargs)
