"""The face API on Ray Serve against a plain uvicorn + FastAPI app on the same model and render path.

    .venv/bin/python benchmarks/serve_vs_plain.py [--requests 600] [--layouts single,split,...] [--quick]

The anchor is one uvicorn process with FastAPI routes over ganray's own FaceGenerator (the Serve
deployment's class, instantiated in process: the same prepared generator, @serve.batch batching,
encoder threads and PNG bytes). Each Serve layout runs in a fresh local Ray (in a subprocess, so
that the RAY_SERVE_* variables it is tried with reach every Ray process: the environment of the
process that starts Ray, which its raylet and workers inherit, plus runtime_env env_vars).

For every layout the anchor is measured again just before it (interleaved: the machine is shared),
then both are loaded by the same aiohttp client at 1 / 8 / 32 / 128 concurrent clients with GETs of
one face and POSTs of 64 (format=base64). It checks that both sides answer identical PNG bytes,
counts errors (a 503 with Retry-After is counted apart: it is the stated overload answer), and
records faces/s, p50/p95/p99, CPU ms per request by process (psutil: every process of the server
side, by role), the variables each Serve process actually had in its environment, and every ratio
to the anchor. Clients and servers share the machine's cores: on 2 cores the numbers are a floor.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _result import BenchmarkRun
from ganray.config import ServeJob
from ganray.serve.schemas import FacesRequest, FacesResponse  # module level: FastAPI resolves the route's annotations here

RESULT_NAME = "serve_vs_plain"
BENCH = Path(__file__).resolve()

# name -> (FaceServiceConfig overrides, RAY_SERVE_* environment). ganray's own REPLICA_ENV is in
# every replica's runtime_env already (ganray/serve/app.py).
LAYOUTS: dict[str, tuple[dict, dict[str, str]]] = {
    "split": ({"layout": "split"}, {}),
    "split+throughput": ({"layout": "split"}, {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}),
    "split+haproxy": ({"layout": "split"}, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}),
    "single": ({"layout": "single"}, {}),
    "single+throughput": ({"layout": "single"}, {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}),
    "single+haproxy": ({"layout": "single"}, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}),
    "single+haproxy+throughput": ({"layout": "single"}, {"RAY_SERVE_ENABLE_HA_PROXY": "1",
                                                          "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}),
    # ganray's defaults: FaceServiceConfig's layout, and what `ganray serve` puts in its Ray's environment.
    "default": ({}, ServeJob().http.ray_serve_env()),
}
WATCHED_ENV = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_ENABLE_DIRECT_INGRESS",
               "RAY_SERVE_HAPROXY_RETRY_ON",
               "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP")
LEVELS = (1, 8, 32, 128)
CHECK_SEEDS = list(range(7, 12))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The server side (run in a subprocess: `serve_vs_plain.py --server LAYOUT ...`)


def plain_app(registry: str, max_batch_size: int):
    """The anchor: FastAPI over an in-process FaceGenerator (ganray's deployment class, not a copy)."""
    import ray.serve.batching
    from fastapi import FastAPI, Response

    from ganray.config import FaceServiceConfig
    from ganray.serve.generator import FaceGenerator, LiveSettings
    from ganray.serve.schemas import Face, RenderRequest, RenderResult

    # Outside a replica, @serve.batch's check of the replica's max_ongoing_requests has nothing to read.
    ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    config = FaceServiceConfig.model_validate({"model": {"registry": registry}})
    gen = config.generator
    live = LiveSettings(model=config.model, max_batch_size=max_batch_size, batch_wait_timeout_s=gen.batch_wait_timeout_s,
                        max_gather_s=gen.max_gather_s).model_dump(mode="json")
    generator = FaceGenerator.func_or_class("cpu")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await generator.reconfigure(live)
        yield

    api = FastAPI(lifespan=lifespan)

    @api.get("/v1/faces/{seed}.png")
    async def face_png(seed: int) -> Response:
        result: RenderResult = await generator.render(RenderRequest((seed,), 1.0))
        return Response(result.pngs[0], media_type="image/png",
                        headers={"X-Model-Version": result.model_version, "X-Seed": str(seed)})

    @api.post("/v1/faces")
    async def faces(body: FacesRequest) -> FacesResponse:
        result: RenderResult = await generator.render(RenderRequest(tuple(body.seeds), 1.0))
        return FacesResponse(model_version=result.model_version, format="base64", faces=[
            Face(seed=s, psi=1.0, conditions=c, model_version=result.model_version,
                 image_base64=base64.b64encode(png).decode("ascii"))
            for s, c, png in zip(body.seeds, result.conditions, result.pngs)])

    return api


def process_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs if k.decode() in WATCHED_ENV}


def serve_side(layout: str, registry: str, port: int, work: str, config: dict | None = None) -> None:
    """Start Ray and Serve with the layout's environment (and `config` merged into the application's
    config), print READY and what each Serve process saw in its environment, wait for SIGTERM."""
    import psutil
    import ray
    from ray import serve

    from ganray.config import FaceServiceConfig
    from ganray.serve.app import build_app

    overrides, env = LAYOUTS[layout]
    os.environ.update(env)  # the raylet and every worker inherit the environment of the process that starts Ray
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=work, log_to_driver=False,
             runtime_env={"env_vars": env})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    sections = {**overrides, **(config or {})}
    sections["model"] = {**sections.get("model", {}), "registry": registry}
    serve.run(build_app(FaceServiceConfig.model_validate(sections)), name="bench", route_prefix="/")
    seen = {}
    for proc in psutil.Process().children(recursive=True):
        title = " ".join(proc.cmdline())
        for role in ("ServeController", "ProxyActor", "ServeReplica"):
            if f"ray::{role}" in title:
                seen[title.split()[0]] = process_env(proc.pid)
    print("READY " + json.dumps(seen), flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for proc in psutil.Process().children(recursive=True):  # HAProxy runs beside Ray's workers, not as one
        if proc.name() == "haproxy":
            proc.kill()
    ray.shutdown()  # everything this Ray ran goes with it (serve.shutdown would drain the replicas first)


def plain_side(registry: str, port: int) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(1)  # as a replica renders: one thread per forward pass (FaceGenerator's docstring)

    class Ready(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            print("READY {}", flush=True)

    Ready(uvicorn.Config(plain_app(registry, 64), host="127.0.0.1", port=port, log_level="warning",
                         access_log=False)).run()


# ---------------------------------------------------------------------------------------------
# The client side


def role_of(title: str, root_pid: int, pid: int) -> str:
    if pid == root_pid:
        return "server process"
    for marker, role in (("ray::ProxyActor", "proxy"), ("ray::ServeController", "controller"),
                         ("haproxy", "haproxy")):
        if marker in title:
            return role
    if "ray::ServeReplica" in title:
        return "replica " + title.split()[0].split(":")[-1]
    return "ray other"


class CpuMeter:
    """CPU seconds of every process of the server side (its process tree) by role, and of this client."""

    def __init__(self, root_pid: int) -> None:
        import psutil

        self.psutil, self.root = psutil, psutil.Process(root_pid)
        self.me = psutil.Process()

    def snapshot(self) -> dict[tuple[int, str], float]:
        times = {}
        procs = [(self.me, "client")] + [(self.root, "server process")] + [
            (p, None) for p in self.root.children(recursive=True)]
        for proc, role in procs:
            try:
                t = proc.cpu_times()
                role = role or role_of(" ".join(proc.cmdline()), self.root.pid, proc.pid)
                times[proc.pid, role] = t.user + t.system
            except self.psutil.Error:
                pass
        return times

    @staticmethod
    def spent(before: dict, after: dict) -> dict[str, float]:
        by_role: dict[str, float] = {}
        for (pid, role), seconds in after.items():
            by_role[role] = by_role.get(role, 0.0) + seconds - before.get((pid, role), seconds)
        return by_role


class Server:
    """One server side in a subprocess; stopped with SIGTERM."""

    def __init__(self, layout: str, registry: str, work: Path, config: dict | None = None) -> None:
        self.layout, self.port = layout, free_port()
        args = [sys.executable, str(BENCH), "--server", layout, "--registry", registry, "--port", str(self.port),
                "--work", tempfile.mkdtemp(prefix="r", dir=work), "--config-json", json.dumps(config or {})]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        line = ""
        while not line.startswith("READY"):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"{layout}: the server side exited with {self.proc.returncode}")
        self.env_seen = json.loads(line.split(" ", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load(base: str, clients: int, requests: int, faces: int, seed0: int) -> dict:
    """`requests` requests from `clients` concurrent clients: faces/s, latencies, outcomes."""
    import aiohttp

    latencies: list[float] = []
    outcomes = {"ok": 0, "503": 0, "503 without Retry-After": 0, "other": 0, "timeout": 0}
    next_index = 0
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = next_index
                next_index += 1
                seed = seed0 + i * faces
                start = time.perf_counter()
                try:
                    if faces == 1:
                        response = session.get(f"/v1/faces/{seed}.png")
                    else:
                        response = session.post("/v1/faces", json={"seeds": list(range(seed, seed + faces)),
                                                                   "format": "base64"})
                    async with response as r:
                        await r.read()
                        status, retry_after = r.status, r.headers.get("Retry-After")
                except asyncio.TimeoutError:
                    outcomes["timeout"] += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                if status == 200:
                    outcomes["ok"] += 1
                elif status == 503:
                    outcomes["503" if retry_after else "503 without Retry-After"] += 1
                else:
                    outcomes["other"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies or [float("nan")])
    return {"faces_per_s": outcomes["ok"] * faces / elapsed, "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)), "outcomes": outcomes}


async def faces_of(base: str) -> list[bytes]:
    """PNG bytes of the check seeds: by GET, then by one POST (base64)."""
    import aiohttp

    async with aiohttp.ClientSession(base) as session:
        pngs = []
        for seed in CHECK_SEEDS:
            async with session.get(f"/v1/faces/{seed}.png") as r:
                pngs.append(await r.read())
        async with session.post("/v1/faces", json={"seeds": CHECK_SEEDS, "format": "base64"}) as r:
            body = await r.json()
    return pngs + [base64.b64decode(face["image_base64"]) for face in body["faces"]]


def measure(server_pid: int, base: str, requests: int, post_requests: int) -> dict:
    """Every level on one server: {(method, clients): result with cpu ms per request by role}."""
    meter = CpuMeter(server_pid)
    asyncio.run(load(base, 8, 100, 1, seed0=10**9))  # warm every path
    asyncio.run(load(base, 8, 8, 64, seed0=10**9))
    results = {}
    for method, faces in (("GET", 1), ("POST", 64)):
        for clients in LEVELS:
            n = requests if faces == 1 else max(post_requests, clients)
            before = meter.snapshot()
            result = asyncio.run(load(base, clients, n, faces, seed0=clients * 10**7))
            spent = meter.spent(before, meter.snapshot())
            result["cpu_ms_per_request"] = {role: s * 1000 / n for role, s in sorted(spent.items()) if s > 0.0005 * n}
            results[method, clients] = result
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600, help="GETs per level")
    parser.add_argument("--post-requests", type=int, default=40, help="POSTs of 64 faces per level (at least "
                        "one per client)")
    parser.add_argument("--layouts", default=",".join(n for n in LAYOUTS if n != "default"), help="comma-separated: " + ", ".join(LAYOUTS))
    parser.add_argument("--quick", action="store_true", help="200 GETs and 16 POSTs per level")
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--config-json", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server == "plain":
        plain_side(args.registry, args.port)
        return 0
    if args.server:
        serve_side(args.server, args.registry, args.port, args.work, json.loads(args.config_json))
        return 0
    if args.quick:
        args.requests, args.post_requests = 200, 16
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        parser.error(f"unknown layouts {unknown}: choose from {', '.join(LAYOUTS)}")
    run = BenchmarkRun(RESULT_NAME, mode="quick" if args.quick else "full")

    from ganray.config import DCGANConfig
    from ganray.models import build_generator
    from ganray.registry import Registry

    work = Path(tempfile.mkdtemp(prefix="ganray-bench-"))
    registry = str(work / "registry")
    model_config = DCGANConfig()
    reg = Registry(registry)
    version = reg.push(build_generator(model_config, 64).state_dict(), model_config.model_dump(), 64, {},
                       {"source": "benchmarks/serve_vs_plain.py"})
    reg.promote(version, "production")

    table, cpu_rows, by_layout = [], [], {}
    try:
        for layout in layouts:
            plain = Server("plain", registry, work)
            try:
                expected = asyncio.run(faces_of(plain.base))
                anchor = measure(plain.proc.pid, plain.base, args.requests, args.post_requests)
            finally:
                plain.stop()
            served = Server(layout, registry, work)
            try:
                same_bytes = asyncio.run(faces_of(served.base)) == expected
                results = measure(served.proc.pid, served.base, args.requests, args.post_requests)
            finally:
                served.stop()
            by_layout[layout] = (anchor, results, same_bytes, served.env_seen)
            print(f"\n{layout}: bytes identical to the plain app: {same_bytes}; RAY_SERVE_* seen: {served.env_seen}")
            for (method, clients), r in results.items():
                a = anchor[method, clients]
                errors = sum(v for k, v in r["outcomes"].items() if k != "ok")
                table.append([layout, f"{method} {'1 face' if method == 'GET' else '64 faces'}", clients,
                              a["faces_per_s"], r["faces_per_s"], r["faces_per_s"] / a["faces_per_s"],
                              a["p50"], r["p50"], r["p95"], r["p99"], errors])
                cpu = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items())  # noqa: E731
                cpu_rows.append([layout, f"{method} {clients}", cpu(a["cpu_ms_per_request"]),
                                 cpu(r["cpu_ms_per_request"])])
                print(f"  {method} {clients:>3} clients: plain {a['faces_per_s']:.0f} faces/s p50 {a['p50']:.1f} | "
                      f"serve {r['faces_per_s']:.0f} faces/s p50 {r['p50']:.1f} p95 {r['p95']:.1f} "
                      f"p99 {r['p99']:.1f} = {r['faces_per_s'] / a['faces_per_s']:.2f}x; outcomes {r['outcomes']}"
                      f"\n      cpu ms/request plain: {cpu(a['cpu_ms_per_request'])}\n"
                      f"      cpu ms/request serve: {cpu(r['cpu_ms_per_request'])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for layout, (anchor, results, same_bytes, env_seen) in by_layout.items():
        ratio = lambda m, c: results[m, c]["faces_per_s"] / anchor[m, c]["faces_per_s"]  # noqa: E731
        run.figure(f"{layout}: GET 32 clients ÷ plain", ratio("GET", 32), note="goal >= 1.0")
        run.figure(f"{layout}: POST 64, 32 clients ÷ plain", ratio("POST", 32), note="goal >= 0.95")
        run.figure(f"{layout}: GET p50 at 1 client − plain's", results["GET", 1]["p50"] - anchor["GET", 1]["p50"],
                   "ms", "goal <= 5 ms")
        errors = {m: results[m, 128]["outcomes"] for m in ("GET", "POST")}
        run.figure(f"{layout}: outcomes at 128 clients", json.dumps(errors), note="goal: no errors; 503 + "
                   "Retry-After is the stated overload answer")
        run.figure(f"{layout}: bytes identical to the plain app", str(same_bytes))
        run.figure(f"{layout}: RAY_SERVE_* in each Serve process's environment", json.dumps(env_seen))
    run.table("Faces/s and latency (ms) by layout and load, each against the plain app measured just before it",
              ["layout", "request", "clients", "plain faces/s", "serve faces/s", "÷ plain", "plain p50",
               "serve p50", "serve p95", "serve p99", "errors"], table)
    run.table("CPU ms per request by process", ["layout", "request, clients", "plain app", "serve"], cpu_rows)
    run.settings = {"model": f"DCGAN-64 {version}, random weights", "get_requests_per_level": args.requests,
                    "post_requests_per_level": args.post_requests, "post_faces": 64, "levels": list(LEVELS),
                    "layouts": {name: {"config": LAYOUTS[name][0], "env": LAYOUTS[name][1]} for name in layouts}}
    run.note("The plain app: one uvicorn process, FastAPI routes over ganray's FaceGenerator class in process "
             "(same prepared generator, @serve.batch batching, encoder threads, bytes). Each Serve layout: a fresh "
             "local Ray (num_cpus=2) in its own process, the layout's RAY_SERVE_* variables in the environment "
             "that starts Ray and in runtime_env. Each layout is compared with a plain-app run just before it; "
             "the same aiohttp client loads both; clients and servers share the machine's cores.")
    run.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
