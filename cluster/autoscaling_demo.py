"""Autoscaling on one machine: a generation job that needs more CPUs than the head has makes Ray's
autoscaler add worker nodes, which it removes once they have been idle for the config's timeout.

    .venv/bin/python cluster/autoscaling_demo.py --chart docs/autoscaling_nodes.png

What it does, with Ray's fake multi-node provider (worker "nodes" are raylets on this machine,
started and stopped by the autoscaler as it would start and terminate cloud instances):

1. `RAY_FAKE_CLUSTER=1 ray start --head --num-cpus=1 --autoscaling-config=...` with
   cluster/fake_multinode.yaml (worker type `cpu_worker`: 2 CPUs, 0..3 nodes, idle timeout), on
   free ports, in a temporary HOME and Ray temp dir of its own;
2. `ganray generate` as a driver on that cluster: `generate.replicas` generator actors of
   `generate.cpus_per_replica` CPUs each (default 3 x 0.75), more than the 1-CPU head can hold.
   0.75 and not 1: a 2-CPU node then holds two actors and still has room for the encode/write
   tasks. Actors that fill every CPU of the nodes they are on leave the tasks waiting, and Ray
   Data holds such tasks back itself instead of asking the autoscaler for them, so the job hangs;
3. samples the node count every `--interval` seconds, from the GCS (`ray.nodes()`, alive) and from
   the processes (raylets this head's processes started), from before the job until the worker
   nodes are gone again;
4. writes OUT/timeline.json and draws the node count over time (--chart);
5. stops exactly the processes this head started (every one carries a marker in its environment,
   or descends from one that does): never `ray stop`, which stops every Ray on the machine.

The model is an untrained 32 px DCGAN pushed to OUT/registry (the demo is about nodes, not faces),
unless --registry names one. It lives in cluster/ beside the launcher configs it imitates;
benchmarks/ holds speed measurements, and this measures none.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
CONFIG = HERE / "fake_multinode.yaml"
MARKER_ENV = "GANRAY_AUTOSCALING_DEMO"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeCluster:
    """A head with the fake multi-node autoscaler; knows every process it started by MARKER_ENV."""

    def __init__(self, work: Path, idle_timeout_s: float, max_workers: int, worker_types: dict | None = None):
        """`worker_types`: the worker node types instead of the config's `cpu_worker` (e.g. a fake GPU type)."""
        self.work = work
        self.marker = uuid.uuid4().hex
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's socket paths live under it and must stay under ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="gas", dir="/tmp")
        home = work / "home"
        home.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load(CONFIG.read_text())
        config["provider"]["gcs_address"] = self.address
        config["idle_timeout_minutes"] = idle_timeout_s / 60
        if worker_types is not None:
            head = config["head_node_type"]
            config["available_node_types"] = {head: config["available_node_types"][head], **worker_types}
        else:
            config["available_node_types"]["cpu_worker"]["max_workers"] = max_workers
        config["max_workers"] = max_workers
        self.config_file = work / "autoscaling.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # The head and the driver share the temporary HOME (and so any token `ray start` makes).
        self.env = {**base, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    "RAY_USAGE_STATS_ENABLED": "0", MARKER_ENV: self.marker}

    def start(self) -> None:
        ports = {name: free_port() for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")}
        cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
               *(f"--{k}={v}" for k, v in ports.items()), "--include-dashboard=false", "--num-cpus=1",
               "--object-store-memory=200000000", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               f"--autoscaling-config={self.config_file}"]
        env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if started.returncode:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{started.stdout}{started.stderr}")

    def processes(self) -> list[psutil.Process]:
        roots = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(MARKER_ENV) == self.marker:
                    roots.append(proc)
            except (psutil.Error, OSError):
                continue
        found = {p.pid: p for p in roots}
        for root in roots:
            try:
                found.update((c.pid, c) for c in root.children(recursive=True))
            except psutil.Error:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def raylets(self) -> int:
        count = 0
        for proc in self.processes():
            try:
                count += proc.name() == "raylet"
            except psutil.Error:
                continue
        return count

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def push_untrained_generator(registry_dir: Path) -> str:
    import torch

    from ganray.config import DCGANConfig
    from ganray.models import build_generator
    from ganray.registry import Registry

    torch.manual_seed(0)
    cfg = DCGANConfig(z_dim=16, g_width=8)
    registry = Registry(str(registry_dir))
    registry.promote(registry.push(build_generator(cfg, 32, {}).state_dict(), cfg.model_dump(), 32, {},
                                   {"untrained": True}), "production")
    return registry.url


class NodeSampler(threading.Thread):
    """Every `interval` s: seconds since start, alive nodes (GCS), raylet processes, and the job's phase."""

    def __init__(self, cluster: FakeCluster, interval: float):
        super().__init__(daemon=True)
        self.cluster, self.interval = cluster, interval
        self.t0 = time.monotonic()
        self.phase = "before job"
        self.samples: list[dict] = []
        self.halt = threading.Event()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def run(self) -> None:
        import ray

        self.t0 = time.monotonic()  # t = 0: the first sample, the head already up
        while not self.halt.is_set():
            alive = sum(1 for n in ray.nodes() if n["Alive"])
            self.samples.append({"t": self.now(), "nodes": alive, "raylets": self.cluster.raylets(),
                                 "phase": self.phase})
            self.halt.wait(self.interval)


def draw_chart(timeline: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = timeline["samples"]
    fig, ax = plt.subplots(figsize=(6.4, 2.6), dpi=100)
    ax.step([s["t"] for s in samples], [s["nodes"] for s in samples], where="post", color="tab:blue",
            label="alive nodes (head + workers)")
    ax.axvspan(timeline["job_started_s"], timeline["job_ended_s"], color="tab:orange", alpha=0.2,
               label=f"generate job ({timeline['faces']} faces, {timeline['replicas']} actors × "
                     f"{timeline['cpus_per_replica']:g} CPU)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("nodes")
    ax.set_yticks(range(0, max(s["nodes"] for s in samples) + 2))
    ax.set_title(f"Ray autoscaler, fake multi-node provider: 1-CPU head, 2-CPU workers, "
                 f"idle timeout {timeline['idle_timeout_s']:g} s", fontsize=8)
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run_demo(args: argparse.Namespace) -> dict:
    import ray

    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    registry = args.registry or push_untrained_generator(out / "registry")
    cluster = FakeCluster(out, args.idle_timeout_s, args.max_workers)
    timeline = {"faces": args.count, "replicas": args.replicas, "cpus_per_replica": args.cpus_per_replica, "idle_timeout_s": args.idle_timeout_s,
                "max_workers": args.max_workers, "marker_env": MARKER_ENV, "marker": cluster.marker,
                "output": str(out / "faces")}
    sampler = NodeSampler(cluster, args.interval)
    try:
        cluster.start()
        print(f"head up at {cluster.address} ({MARKER_ENV}={cluster.marker})", flush=True)
        ray.init(address=cluster.address, log_to_driver=False)
        sampler.start()
        time.sleep(2 * args.interval)

        # The job, as a user runs it against this cluster: `ganray generate` with RAY_ADDRESS.
        sampler.phase = "job"
        timeline["job_started_s"] = sampler.now()
        job = subprocess.run(
            [str(BIN / "ganray"), "generate", "--set", f"registry.url={registry}", "--set", "generate.model=production",
             "--set", f"generate.output={out / 'faces'}", "--set", f"generate.count={args.count}",
             "--set", f"generate.shard_size={args.shard_size}", "--set", f"generate.replicas={args.replicas}",
             "--set", f"generate.cpus_per_replica={args.cpus_per_replica}", "--set", "generate.batch_size=32",
             "--set", "generate.progress_interval_s=2"],
            env={**cluster.env, "RAY_ADDRESS": cluster.address}, capture_output=True, text=True, timeout=args.timeout_s)
        timeline["job_ended_s"] = sampler.now()
        timeline["job_exit_status"] = job.returncode
        (out / "job.log").write_text(job.stdout + job.stderr)
        print(job.stdout[-2000:], job.stderr[-2000:] if job.returncode else "", flush=True)

        # After the job: until the autoscaler has removed every worker node (or the time is up).
        sampler.phase = "after job"
        deadline = time.monotonic() + args.idle_timeout_s + args.scale_down_grace_s
        while time.monotonic() < deadline:
            last = sampler.samples[-1] if sampler.samples else {}
            if last.get("phase") == "after job" and last["nodes"] == last["raylets"] == 1:
                break
            time.sleep(args.interval)
        time.sleep(2 * args.interval)  # a few samples at the bottom
    finally:
        sampler.halt.set()
        if sampler.is_alive():
            sampler.join(timeout=10)
        timeline["samples"] = sampler.samples
        ray.shutdown()
        cluster.stop()
        timeline["left_running"] = [p.pid for p in cluster.processes()]
        (out / "timeline.json").write_text(json.dumps(timeline, indent=1))
    if args.chart and "job_ended_s" in timeline:
        draw_chart(timeline, Path(args.chart))
    return timeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/autoscaling-demo", help="work folder (replaced): output, timeline.json")
    parser.add_argument("--chart", default=None, help="PNG of the node count over time")
    parser.add_argument("--registry", default=None, help="registry with a 'production' model (default: an untrained one)")
    parser.add_argument("--count", type=int, default=3000, help="faces to generate")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3, help="generator actors")
    parser.add_argument("--cpus-per-replica", type=float, default=0.75,
                        help="CPUs per generator actor (generate.cpus_per_replica)")
    parser.add_argument("--max-workers", type=int, default=3, help="worker nodes at most")
    parser.add_argument("--idle-timeout-s", type=float, default=15.0, help="idle seconds before a node is removed")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--scale-down-grace-s", type=float, default=90.0,
                        help="how long past the idle timeout to wait for the nodes to go")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="the job's time limit")
    args = parser.parse_args(argv)
    # Stopped from outside (a test's timeout, Ctrl-C): still stop the cluster (run_demo's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    timeline = run_demo(args)
    peak = max(s["nodes"] for s in timeline["samples"])
    gone = next((s["t"] for s in timeline["samples"]
                 if s["phase"] == "after job" and s["nodes"] == s["raylets"] == 1), None)
    print(f"nodes: 1 -> {peak} during the job -> 1 at {gone} s (job {timeline['job_started_s']}-"
          f"{timeline['job_ended_s']} s, exit status {timeline['job_exit_status']}); "
          f"timeline {Path(args.out) / 'timeline.json'}" + (f", chart {args.chart}" if args.chart else ""))
    return 0 if timeline["job_exit_status"] == 0 and gone is not None else 1


if __name__ == "__main__":
    sys.exit(main())
