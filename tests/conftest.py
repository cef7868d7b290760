"""Shared fixtures: one real local Ray per test session, and a real S3-protocol server on loopback."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from s3_fault_proxy import FaultProxy

# Quieter, faster Ray in tests (see ../shared/notes/ray-on-this-machine.md).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
UTKFACE_ZIP = REPO.parent / "shared" / "datasets" / "utkface" / "utkface-200px.zip"


S3_PROXY: FaultProxy | None = None  # set by the s3_server fixture
S3_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, avoid: set[int] = frozenset()) -> list[int]:
    """`count` distinct free ports (none in `avoid`): the sockets stay bound until all are chosen, so
    the kernel cannot hand out one port twice (separate free_port() calls can, and did: `ray start`
    then refused two components on one port)."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in avoid:
                s.close()
                continue
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def newest_train_worker(started: float) -> psutil.Process:
    """A live Ray Train worker process of the run started at `started` (time.time()): a descendant of
    this test process created since then, the newest first. Picking by PID order is not enough: PIDs
    wrap (pid_max is 32768 here), and a previous run's worker may still be exiting; killing one of
    those leaves the run under test untouched."""
    workers = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline() or []) and p.create_time() >= started - 1 \
                    and p.status() != psutil.STATUS_ZOMBIE:
                workers.append((p.create_time(), p))
        except psutil.NoSuchProcess:
            continue
    assert workers, "no train worker process of this run found"
    return max(workers, key=lambda w: w[0])[1]


def registered_checkpoints(run_url: str | Path) -> list[str]:
    """The checkpoints Ray Train's controller has registered for a run (what a restarted worker group
    resumes from), read from the snapshot the controller writes beside them (local or s3://). A
    checkpoint's files in storage are not enough: a worker uploads them in `ray.train.report`, and
    the controller registers them only when it next polls the workers; a worker killed in between
    restarts the group from the checkpoint before, or from nothing."""
    from ganray import storage

    try:
        snapshot = json.loads(storage.read_bytes(f"{run_url}/checkpoint_manager_snapshot.json"))
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return []
    return [c["checkpoint_dir_name"] for c in snapshot.get("checkpoint_results", [])]


def wait_for_registered_checkpoint(run_url: str | Path, fit: threading.Thread, timeout_s: float = 300) -> None:
    """Block until Ray Train has registered a checkpoint of the run that `fit` is training."""
    deadline = time.time() + timeout_s
    while not registered_checkpoints(run_url) and time.time() < deadline and fit.is_alive():
        time.sleep(0.05)
    assert registered_checkpoints(run_url), f"Ray Train registered no checkpoint in {run_url}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole session (2 CPUs, no dashboard, its own temp dir).

    It depends on `s3_server` so that the S3 endpoint and credentials are in the environment
    before Ray starts: its workers inherit them.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ganray-ray-")
    ctx = ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=int(1.5e9),
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {k: os.environ[k] for k in S3_ENV_KEYS}},
        log_to_driver=False,
        # Test speed only: keep up to 6 idle worker processes for a minute instead of 2 for a second.
        # Most tests start a Ray Data pipeline or a training run soon after the last one ended; a
        # kept worker has Python, Ray and the modules it imported loaded already. In one A/B run it
        # cut test_train, test_generate and test_closed_loop together from 179 s to 169 s (2 cores).
        # (Ray Train's own actors get a runtime env of their own and still start fresh processes.)
        # Metrics reach the Prometheus endpoint every second instead of every 10 s (tests/test_serve.py
        # scrapes them).
        _system_config={"num_workers_soft_limit": 6, "idle_worker_killing_time_threshold_ms": 60_000,
                        "metrics_report_interval_ms": 1000},
    )
    yield ctx
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto_server) on 127.0.0.1; yields the endpoint URL every client
    uses: a loopback proxy in front of it that passes bytes through untouched unless a test cuts it
    (the `s3_proxy` fixture, tests/s3_fault_proxy.py).

    Credentials and endpoint go into the environment so that s3fs, pyarrow and Ray workers
    started afterwards all talk to it.
    """
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    # Every client reaches the server through a proxy that tests can cut (tests/s3_fault_proxy.py).
    global S3_PROXY
    S3_PROXY = FaultProxy(port)
    endpoint = S3_PROXY.endpoint
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    S3_PROXY.down()
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_proxy(s3_server) -> FaultProxy:
    """The proxy between every S3 client and the server: up at the start and the end of each test."""
    S3_PROXY.up()
    yield S3_PROXY
    S3_PROXY.up()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the loopback S3 server; yields its name."""
    import uuid

    import boto3

    name = f"ganray-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
