"""`ganray serve` exactly as a user first types it: the built-in defaults (configs/serve_local.yaml's
values: layout single, HAProxy in front) and ./registry, in a subprocess that starts a Ray of its own.

Only the HTTP port is changed. The subprocess gets its own Ray temp dir ($RAY_TMPDIR) and no
RAY_ADDRESS, so its Ray cannot meet the session's; every process it starts inherits MARKER in its
environment or descends from it, and exactly those are checked (and, if left over, stopped) at the
end: never `ray stop`. HAProxy's fixed paths and ports allow one such Serve per machine, which the
Ray lock (docs/DEVELOPING.md) gives the test suite.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
from conftest import free_port
from test_serve import assert_422_names, expected_pngs
from tiny_generators import push_random_model

from ganray.config import FaceServiceConfig
from ganray.registry import Registry

GANRAY = str(Path(sys.executable).parent / "ganray")
STARTUP_TIMEOUT_S = 240  # generous: a cold Ray, Serve and HAProxy on a busy 2-core machine


def processes_of(marker: str, root: int, seen: dict[int, psutil.Process]) -> list[psutil.Process]:
    """Live processes with MARKER in their environment, or below `root` or one of those; `seen`
    keeps every one found so far (a process that renamed itself or lost its parent is still caught)."""
    for proc in psutil.process_iter():
        try:
            if proc.pid not in seen and proc.environ().get("GANRAY_TEST_SERVE") == marker:
                seen[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    for proc in [psutil.Process(root)] if psutil.pid_exists(root) else []:
        seen.setdefault(proc.pid, proc)
    for proc in list(seen.values()):
        try:
            seen.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.Error:
            continue
    seen.pop(os.getpid(), None)
    return [p for p in seen.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def test_ganray_serve_as_typed_answers_through_haproxy(tmp_path):
    registry = Registry(str(tmp_path / "registry"))  # ./registry of the command's working directory
    version = push_random_model(registry, init_seed=5)
    registry.promote(version, "production")
    ray_tmp = tempfile.mkdtemp(prefix="grs", dir="/tmp")  # short: Ray's socket paths must stay short
    marker, port = uuid.uuid4().hex, free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "GANRAY_", "AWS_")) and k != "PYTHONPATH"}
    env.update(RAY_TMPDIR=ray_tmp, GANRAY_TEST_SERVE=marker, RAY_USAGE_STATS_ENABLED="0")
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([GANRAY, "serve", "--set", f"http.port={port}"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(base_url=base, timeout=30) as client:
            while True:
                assert proc.poll() is None, f"ganray serve exited {proc.returncode}:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no answer on {base}/healthz:\n{log_path.read_text()}"
                processes_of(marker, proc.pid, seen)  # while they live: their parents are known
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)

            face = client.get("/v1/faces/42.png")
            assert face.status_code == 200, face.text
            assert face.headers["content-type"] == "image/png" and face.headers["x-model-version"] == version
            psi = FaceServiceConfig().api.default_psi
            assert face.content == expected_pngs(registry, version, [42], psi)[0]
            assert_422_names(client.get("/v1/faces/1.png", params={"age": "ancient"}), "age")
            assert_422_names(client.get("/v1/faces/-1.png"), "seed")

        # HAProxy answered: the socket on the HTTP port is the haproxy process's, one of this command's,
        # and the replica that rendered runs with Serve's HAProxy setting.
        procs = processes_of(marker, proc.pid, seen)
        listeners = {c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        (listener,) = listeners
        assert psutil.Process(listener).name() == "haproxy" and listener in {p.pid for p in procs}
        (replica,) = [p for p in procs if p.cmdline()[:1] == ["ray::ServeReplica:ganray:FaceService"]]
        assert replica.environ().get("RAY_SERVE_ENABLE_HA_PROXY") == "1"

        # How long Ctrl-C takes is not asserted: Serve's shutdown under HAProxy can outlast two minutes
        # on a loaded machine, so the finally block ends every process the command started, by PID.
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.terminate()
        stop_all(processes_of(marker, proc.pid, seen))
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
