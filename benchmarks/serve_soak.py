"""A bounded soak of the face API: steady load, one replica killed midway, one model hot-reload.

    .venv/bin/python benchmarks/serve_soak.py [--minutes 5] [--rate FACES_PER_S] [--layout default]

It serves a DCGAN-64 with random weights with ganray's default application config (two model
replicas, so that one can die while the other answers; the alias polled every 2 s) in a fresh local
Ray, in a subprocess started like benchmarks/serve_vs_plain.py's. The load is single-face GETs from
32 clients held to a steady rate: by default the rate the plain uvicorn + FastAPI app reaches with
32 clients, measured first. At a third of the run one replica's process is killed (SIGKILL); at two
thirds a second version is promoted to the served alias (hot reload).

The clients follow the API's backoff policy: a 503 is retried after its Retry-After. Anything else
that is not a 200 (a 5xx, a dropped connection, a timeout) is a lost response and is counted, by
kind and by when it happened; a GET is retried once after one (it is idempotent: same bytes), and
a request still without a 200 after that is counted as failed for good. It reports requests, 503s,
lost responses, p50/p99, the rate reached, the per-second p50 around each event, and the latency
recovery time: from the event until the per-second p50 is back under 1.5x its level before the
first event and stays there (within the next 60 s).
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from _result import BenchmarkRun
from serve_vs_plain import LAYOUTS, Server, load

RESULT_NAME = "serve_soak"
CLIENTS = 32
RECOVERED_BELOW = 1.5  # x the p50 before the first event


class Soak:
    """Steady GET load at `rate`: outcomes and latencies by second since the start."""

    def __init__(self, base: str, rate: float, seconds: float) -> None:
        self.base, self.rate, self.seconds = base, rate, seconds
        self.latencies: list[tuple[float, float]] = []  # (second since start, ms) of each 200
        self.lost: list[tuple[float, str]] = []  # (second, kind) of each non-200 other than a 503
        self.failed = self.sent = self.rejected = 0
        self.versions: dict[str, int] = {}

    async def one(self, session, seed: int) -> None:
        import aiohttp

        retried_loss = False
        while True:
            start = time.perf_counter()
            second = start - self.t0
            try:
                async with session.get(f"/v1/faces/{seed}.png") as r:
                    await r.read()
                    status, retry_after = r.status, r.headers.get("Retry-After")
                    version = r.headers.get("X-Model-Version", "?")
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                status, retry_after, kind = None, None, type(e).__name__
            else:
                kind = str(status)
            if status == 200:
                self.latencies.append((second, (time.perf_counter() - start) * 1000))
                self.versions[version] = self.versions.get(version, 0) + 1
                return
            if status == 503 and retry_after is not None:
                self.rejected += 1
                await asyncio.sleep(float(retry_after))
                continue
            self.lost.append((second, kind))
            if retried_loss:
                self.failed += 1
                return
            retried_loss = True

    async def run(self, events: list[tuple[float, object]]) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=CLIENTS)
        async with aiohttp.ClientSession(self.base, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            self.t0 = time.perf_counter()
            interval = 1 / self.rate

            async def client(k: int) -> None:
                # Each client sends every CLIENTS/rate seconds, staggered: together, `rate` requests/s.
                next_at = self.t0 + k * interval
                while next_at - self.t0 < self.seconds:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    self.sent += 1
                    await self.one(session, self.sent)
                    next_at = max(next_at + CLIENTS * interval, time.perf_counter() - CLIENTS * interval)

            async def scheduler() -> None:
                for at, action in events:
                    await asyncio.sleep(max(0.0, self.t0 + at - time.perf_counter()))
                    await asyncio.to_thread(action)

            await asyncio.gather(scheduler(), *(client(k) for k in range(CLIENTS)))
        self.elapsed = time.perf_counter() - self.t0

    def p50_by_second(self) -> dict[int, float]:
        by: dict[int, list[float]] = {}
        for second, ms in self.latencies:
            by.setdefault(int(second), []).append(ms)
        return {s: float(np.median(v)) for s, v in sorted(by.items())}

    def recovery_s(self, at: float, baseline: float, window_s: float = 60) -> float:
        """Seconds from `at` until the per-second p50 is back under RECOVERED_BELOW x baseline for good
        (within `window_s`): one past the last second above it (or without a 200)."""
        p50 = self.p50_by_second()
        late = [s for s in range(int(at), min(int(at + window_s), int(self.seconds)))
                if p50.get(s, float("inf")) >= RECOVERED_BELOW * baseline]
        return float(max(late) + 1 - int(at)) if late else 0.0


def kill_one_replica(server_pid: int) -> str:
    """SIGKILL the first model replica's process in the server's process tree."""
    for proc in psutil.Process(server_pid).children(recursive=True):
        title = " ".join(proc.cmdline())
        if "ray::ServeReplica" in title and ("FaceService" in title or "FaceGenerator" in title):
            proc.kill()
            return title.split()[0]
    raise RuntimeError("no replica to kill")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the soak")
    parser.add_argument("--rate", type=float, default=None, help="faces/s to hold (default: the plain app's "
                        "rate with 32 clients, measured first)")
    parser.add_argument("--layout", default="default", choices=sorted(LAYOUTS),
                        help="the Serve layout and proxy (benchmarks/serve_vs_plain.py's names; default: ganray's "
                        "default config)")
    args = parser.parse_args()
    seconds = args.minutes * 60
    run = BenchmarkRun(RESULT_NAME, mode="full" if args.minutes >= 5 else "short")

    from ganray.config import DCGANConfig
    from ganray.models import build_generator
    from ganray.registry import Registry

    work = Path(tempfile.mkdtemp(prefix="ganray-soak-"))
    registry = str(work / "registry")
    reg, model_config = Registry(registry), DCGANConfig()
    v1, v2 = (reg.push(build_generator(model_config, 64).state_dict(), model_config.model_dump(), 64, {},
                       {"source": "benchmarks/serve_soak.py"}) for _ in range(2))
    reg.promote(v1, "production")
    try:
        if args.rate is None:
            plain = Server("plain", registry, work)
            try:
                asyncio.run(load(plain.base, 8, 100, 1, seed0=10**9))
                args.rate = asyncio.run(load(plain.base, CLIENTS, 600, 1, seed0=0))["faces_per_s"]
            finally:
                plain.stop()
        config = {"generator": {"min_replicas": 2, "max_replicas": 2}, "model": {"poll_interval_s": 2}}
        server = Server(args.layout, registry, work, config)
        killed: list[str] = []
        kill_at, reload_at = seconds / 3, 2 * seconds / 3
        try:
            asyncio.run(load(server.base, 8, 200, 1, seed0=10**9))  # warm both replicas
            soak = Soak(server.base, args.rate, seconds)
            asyncio.run(soak.run([(kill_at, lambda: killed.append(kill_one_replica(server.proc.pid))),
                                  (reload_at, lambda: reg.promote(v2, "production"))]))
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    p50 = soak.p50_by_second()
    baseline = float(np.median([v for s, v in p50.items() if 10 <= s < kill_at] or list(p50.values())))
    lat = np.asarray([ms for _, ms in soak.latencies])
    kinds: dict[str, int] = {}
    for _, kind in soak.lost:
        kinds[kind] = kinds.get(kind, 0) + 1
    around = lambda at: {s - int(at): round(p50[s], 1) for s in range(int(at) - 3, int(at) + 20) if s in p50}  # noqa: E731
    kill_recovery, reload_recovery = soak.recovery_s(kill_at, baseline), soak.recovery_s(reload_at, baseline)
    run.settings = {"minutes": args.minutes, "target_rate": round(args.rate, 1), "clients": CLIENTS,
                    "layout": args.layout, "layout_env": LAYOUTS[args.layout][1], "server_config": config,
                    "kill_at_s": round(kill_at), "reload_at_s": round(reload_at)}
    run.note(f"DCGAN-64 random weights, {args.layout} layout, two model replicas on a 2-core local Ray; GETs of one "
             f"face from {CLIENTS} clients held to {args.rate:.0f}/s (the plain app's 32-client rate unless --rate). "
             f"One replica killed with SIGKILL at {kill_at:.0f} s, {v2} promoted over {v1} at {reload_at:.0f} s. "
             "Backoff policy: a 503 is retried after its Retry-After; any other failure is a lost response, retried "
             "once (GETs are idempotent).")
    run.figure("requests answered 200", len(soak.latencies))
    run.figure("rate reached", len(soak.latencies) / soak.elapsed, "faces/s", f"target {args.rate:.0f}")
    run.figure("503 + Retry-After (retried by policy)", soak.rejected)
    run.figure("lost responses (not 200, not 503)", len(soak.lost), note=", ".join(f"{k}: {v}" for k, v in kinds.items())
               or "none")
    run.figure("requests failed for good (after the retry)", soak.failed)
    run.figure("p50 / p99 over the run", f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f}", "ms")
    run.figure("p50 before the events (median per-second p50)", baseline, "ms")
    run.figure("latency recovery after the replica kill", kill_recovery, "s",
               f"killed {killed[0] if killed else '?'}; p50 ms by second from the kill: {around(kill_at)}")
    run.figure("latency recovery after the hot reload", reload_recovery, "s",
               f"p50 ms by second from the promotion: {around(reload_at)}")
    run.figure("responses by model version", ", ".join(f"{k}: {v}" for k, v in sorted(soak.versions.items())))
    for figure in run.figures:
        print(f"  {figure['name']}: {figure['value']} {figure.get('unit', '')}  {figure.get('note', '')}")
    run.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
