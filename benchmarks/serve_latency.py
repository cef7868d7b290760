"""Latency and throughput of the face API over real HTTP on loopback.

    .venv/bin/python benchmarks/serve_latency.py [--requests 1000] [--quick]

It starts its own local Ray and Serve, pushes a DCGAN-64 with random weights to a temp registry,
serves it with ganray's default serving config (except where flags say otherwise), and prints:

  - latency p50/p95/p99 of GET /v1/faces/{seed}.png with 1 client;
  - throughput (faces/s) with 1, 8 and 32 concurrent clients, each face its own GET, and how many
    faces the generator rendered per forward pass meanwhile (from GET /v1/model);
  - the same with POST /v1/faces of api.max_count faces (format=base64), where HTTP costs are
    shared by many faces;
  - served / offline: throughput at each client count over render_faces + encode_png batched in
    one process with the generator exactly as a replica holds it (prepare_for_render in the served
    model.precision, "auto" resolved on this CPU), same torch threads and PNG encoder (the ceiling
    for this model on these threads);
  - serving overhead: p50 at 1 client minus one image's forward + encode in process (same generator);
  - the same 32-client GET load on a Serve app with the same route that renders nothing: the
    ceiling of single-face GETs on this machine, whatever the model costs;
  - where the CPU goes: CPU ms per GET by process (this client, Serve's HTTP proxy, each
    deployment's replica, the rest of Ray), read from /proc around each level.

Every level sends a fixed number of requests, then everything this script started is shut down.
Clients, proxy, ingress and model share the machine's cores: on 2 cores the numbers are a floor.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ganray.config import FaceServiceConfig, DCGANConfig
from ganray.images import encode_png
from ganray.models.face import labels_for_conditions, prepare_for_render, render_faces, resolve_precision
from ganray.models import build_generator
from ganray.registry import Registry

from _result import BenchmarkRun

RESULT_NAME = "serve_latency"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def offline_throughput(generator: torch.nn.Module, precision: str, batch_size: int, batches: int) -> float:
    """Faces/s of render_faces + encode_png in this process, batch after batch."""
    seed = 0

    def one_batch() -> None:
        nonlocal seed
        seeds = list(range(seed, seed + batch_size))
        seed += batch_size
        labels = labels_for_conditions(generator, None, batch_size, seeds=seeds)
        for image in render_faces(generator, seeds, 1.0, labels, precision):
            encode_png(image)

    for _ in range(3):
        one_batch()
    start = time.perf_counter()
    for _ in range(batches):
        one_batch()
    return batch_size * batches / (time.perf_counter() - start)


def single_image_ms(generator: torch.nn.Module, precision: str, repeats: int) -> float:
    """Median ms of one face's forward + PNG encode (batch of 1): the part of a request that is the model."""
    times = []
    for seed in range(repeats + 10):
        start = time.perf_counter()
        labels = labels_for_conditions(generator, None, 1, seeds=[seed])
        encode_png(render_faces(generator, [seed], 1.0, labels, precision)[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times[10:]) * 1000


def process_roles() -> dict[int, str]:
    """This machine's Ray processes by role, from their titles (`ray::ServeReplica:app:FaceAPI`, ...)."""
    import psutil

    roles = {}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if "ray::ProxyActor" in title:
            roles[proc.pid] = "proxy"
        elif "ray::ServeReplica" in title:
            roles[proc.pid] = "replica " + title.split(":")[-1].split()[0]
        elif "ray::" in title or "raylet" in title or "gcs_server" in title:
            roles[proc.pid] = "ray other"
    return roles


class CpuMeter:
    """CPU seconds spent by role (client = this process, proxy, each deployment's replicas, the rest
    of Ray) while a load level runs: where the cores go."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.roles = process_roles()
        self.roles[psutil.Process().pid] = "client"

    def snapshot(self) -> dict[int, float]:
        times = {}
        for pid in self.roles:
            try:
                t = self.psutil.Process(pid).cpu_times()
                times[pid] = t.user + t.system
            except self.psutil.NoSuchProcess:
                pass
        return times

    def spent(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        by_role: dict[str, float] = {}
        for pid, seconds in after.items():
            role = self.roles[pid]
            by_role[role] = by_role.get(role, 0.0) + seconds - before.get(pid, seconds)
        return by_role


def no_model_app(png: bytes):
    """A Serve app with the face API's GET route and replica settings that returns a fixed PNG: what
    Serve's HTTP path alone costs here (the ceiling for single-face GETs, whatever the model)."""
    from fastapi import FastAPI, Response
    from ray import serve

    from ganray.serve.app import REPLICA_ENV

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5,
                                                                   "runtime_env": {"env_vars": REPLICA_ENV}})
    @serve.ingress(api)
    class NoModel:
        @api.get("/v1/faces/{seed}.png")
        async def face_png(self, seed: int) -> Response:
            return Response(png, media_type="image/png", headers={"X-Seed": str(seed)})

    return NoModel.bind()


def rendered(base: str) -> dict[str, int]:
    """What the generator replica has rendered so far (GET /v1/model): batches and faces."""
    import httpx

    return httpx.get(f"{base}/v1/model", timeout=30).json()["rendered"]


async def load(base: str, clients: int, requests: int, faces_per_request: int, seed0: int) -> tuple[float, list[float]]:
    """`requests` requests from `clients` concurrent clients; (faces/s, per-request latencies in ms)."""
    import httpx

    latencies: list[float] = []
    next_index = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = next_index
                next_index += 1
                seed = seed0 + i * faces_per_request
                start = time.perf_counter()
                if faces_per_request == 1:
                    r = await client.get(f"/v1/faces/{seed}.png")
                else:
                    seeds = list(range(seed, seed + faces_per_request))
                    r = await client.post("/v1/faces", json={"seeds": seeds, "format": "base64"})
                latencies.append((time.perf_counter() - start) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"request failed: {r.status_code} {r.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return requests * faces_per_request / elapsed, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per concurrency level")
    parser.add_argument("--latency-requests", type=int, default=300, help="sequential requests for 1-client latency")
    parser.add_argument("--post-faces", type=int, default=None, help="faces per POST in the batched rows "
                        "(default: the config's api.max_count, the most a POST may ask for)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="generator.max_batch_size "
                        "(default: the config's)")
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="generator.batch_wait_timeout_s in ms "
                        "(default: the config's)")
    parser.add_argument("--quick", action="store_true", help="200 requests per level, 100 for the latency "
                        "(unless given): a few minutes on 2 cores")
    args = parser.parse_args()
    if args.quick:
        args.requests = 200 if args.requests == parser.get_default("requests") else args.requests
        args.latency_requests = (100 if args.latency_requests == parser.get_default("latency_requests")
                                 else args.latency_requests)
    run = BenchmarkRun(RESULT_NAME, mode="quick" if args.quick else "full")

    import ray
    from ray import serve

    from ganray.serve.app import build_app

    overrides: dict = {}
    if args.max_batch_size is not None:
        overrides["max_batch_size"] = args.max_batch_size
    if args.batch_wait_ms is not None:
        overrides["batch_wait_timeout_s"] = args.batch_wait_ms / 1000
    work = Path(tempfile.mkdtemp(prefix="ganray-bench-"))
    config = FaceServiceConfig.model_validate({"model": {"registry": str(work / "registry")},
                                               "generator": overrides})

    # The model: a default DCGAN-64 with random weights, pushed and promoted like a trained one.
    model_config, resolution = DCGANConfig(), 64
    registry = Registry(config.model.registry)
    version = registry.push(build_generator(model_config, resolution).state_dict(), model_config.model_dump(),
                            resolution, {}, {"source": "benchmarks/serve_latency.py"})
    registry.promote(version, config.model.alias)

    # Offline baseline before Ray starts and again after it is shut down, averaged: on a shared
    # machine the free CPU drifts while the served levels run.
    torch.set_num_threads(1)  # the offline baseline renders as a replica does: one thread per forward pass
    # The generator exactly as a replica holds it (ganray/serve: registry.load_generator, then
    # prepare_for_render in model.precision as the replica's device resolves it).
    precision = resolve_precision(config.model.precision, "cpu")
    generator = prepare_for_render(registry.load_generator(version).generator, precision)
    offline_before = offline_throughput(generator, precision, config.generator.max_batch_size, batches=20)
    model_ms = single_image_ms(generator, precision, repeats=200)
    png_bytes = encode_png(render_faces(generator, [0], 1.0, labels_for_conditions(generator, None, 1, seeds=[0]),
                                        precision)[0])

    rows: list[tuple[str, str]] = []
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(work / "ray"), log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="bench", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        asyncio.run(load(base, 8, 200, 1, seed0=10**9))  # warm up every path

        _, latencies = asyncio.run(load(base, 1, args.latency_requests, 1, seed0=0))
        p50 = percentile(latencies, 50)
        rows += [("GET latency, 1 client: p50 / p95 / p99",
                  f"{p50:.1f} / {percentile(latencies, 95):.1f} / {percentile(latencies, 99):.1f} ms")]
        served: dict[tuple[str, int], float] = {}
        levels_table: list[list] = []
        meter = CpuMeter()
        cpu_rows: list[tuple[str, str]] = []
        post_faces = args.post_faces or config.api.max_count
        levels = [("GET", clients, args.requests, 1) for clients in (1, 8, 32)]
        # Enough POSTs that every client sends several.
        levels += [("POST", clients, max(args.requests // post_faces, 4 * clients), post_faces)
                   for clients in (1, 8, 32)]
        for method, clients, requests, faces in levels:
            before, rendered_before = meter.snapshot(), rendered(base)
            faces_per_s, latencies = asyncio.run(load(base, clients, requests, faces, seed0=clients * 10**7))
            spent, rendered_after = meter.spent(before, meter.snapshot()), rendered(base)
            served[method, clients] = faces_per_s
            batches = rendered_after["batches"] - rendered_before["batches"]
            per_batch = (rendered_after["faces"] - rendered_before["faces"]) / max(batches, 1)
            name = f"GET throughput, {clients} clients" if method == "GET" else \
                f"POST {faces} faces, {clients} clients"
            spread = f"p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms"
            rows.append((name, f"{faces_per_s:.0f} faces/s ({spread}; {per_batch:.1f} faces per forward pass)"))
            levels_table.append(["GET 1 face" if method == "GET" else f"POST {faces} faces", clients, faces_per_s,
                                 percentile(latencies, 50), percentile(latencies, 95), per_batch])
            if method == "GET":
                cpu_rows.append((f"CPU ms per GET, {clients} clients", ", ".join(
                    f"{role} {seconds * 1000 / requests:.2f}" for role, seconds in sorted(spent.items()))))
        # The ceiling of any single-face GET design here: an ingress that renders nothing.
        serve.delete("bench")
        serve.run(no_model_app(png_bytes), name="no-model", route_prefix="/")
        asyncio.run(load(base, 8, 200, 1, seed0=0))
        no_model, _ = asyncio.run(load(base, 32, args.requests, 1, seed0=0))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    offline_after = offline_throughput(generator, precision, config.generator.max_batch_size, batches=20)
    offline = (offline_before + offline_after) / 2
    for row in levels_table:
        row.append(row[2] / offline)
    rows += [
        (f"offline render_faces+encode_png, batch {config.generator.max_batch_size}",
         f"{offline:.0f} faces/s (before {offline_before:.0f}, after {offline_after:.0f})"),
        ("served (GET, 32 clients) / offline", f"{served['GET', 32] / offline:.2f}  (goal >= 0.8)"),
        (f"served (POST {post_faces}, 32 clients) / offline", f"{served['POST', 32] / offline:.2f}"),
        ("one face forward+encode in process", f"{model_ms:.1f} ms"),
        ("serving overhead: p50 at 1 client - that", f"{p50 - model_ms:.1f} ms  (goal <= 15 ms)"),
        ("GET, 32 clients, an ingress with no model", f"{no_model:.0f} requests/s = {no_model / offline:.2f} x offline"),
    ] + cpu_rows

    g = config.generator
    run.settings = {"model": f"DCGAN-64 {version}, random weights", "precision": precision,
                    "prepared_for_render": True, "torch_threads": torch.get_num_threads(),
                    "max_batch_size": g.max_batch_size, "batch_wait_timeout_s": g.batch_wait_timeout_s,
                    "requests_per_level": args.requests, "latency_requests": args.latency_requests,
                    "post_faces": post_faces}
    run.note(f"DCGAN-64 with random weights, {precision} prepared for render (as a replica holds it), "
             f"max_batch_size {g.max_batch_size}, batch_wait_timeout_s {g.batch_wait_timeout_s}; clients, "
             "HTTP proxy and replica share the machine's cores. Offline = render_faces + ganray.images.encode_png "
             "in one process with the same prepared generator and threads, measured in the same run just before "
             "and just after the served levels, averaged.")
    run.figure("served (GET, 32 clients) ÷ offline", served["GET", 32] / offline, note="goal >= 0.8")
    run.figure(f"served (POST {post_faces}, 32 clients) ÷ offline", served["POST", 32] / offline)
    run.figure("serving overhead: GET p50 at 1 client − one face forward+encode", p50 - model_ms, "ms",
               "goal <= 15 ms")
    run.figure(f"offline render_faces + encode_png, batch {g.max_batch_size}", offline, "faces/s",
               f"before {offline_before:.0f}, after {offline_after:.0f}")
    run.figure("one face forward + encode in process", model_ms, "ms")
    run.figure("GET latency, 1 client: p50", p50, "ms")
    run.figure("GET, 32 clients, an ingress with no model", no_model, "requests/s",
               f"{no_model / offline:.2f} x offline")
    run.table("Throughput and latency by load", ["request", "clients", "faces/s", "p50 ms", "p95 ms",
                                                 "faces per forward pass", "÷ offline"], levels_table)
    for name, value in cpu_rows:
        run.figure(name, value, note="CPU ms per GET by process")
    print(f"\nface API on {torch.get_num_threads()} torch thread(s); DCGAN-64 {version}, random weights; "
          f"max_batch_size {g.max_batch_size}, batch_wait_timeout_s {g.batch_wait_timeout_s}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    run.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
