"""The 1M-face validation run: `ganray generate` of a million faces, hard-killed halfway and re-run.

    python benchmarks/million_faces.py --registry REGISTRY [--model production] [--work DIR]
        [--count 1000000] [--kill-at 0.5] [--s3-count 100000]

What it does, with the `ganray` command a user types (each run starts its own local Ray):

1. `ganray generate` of `--count` faces (64x64 from the registry model, Parquet, shards of 10,000)
   to local disk; when about `--kill-at` of the shards are committed, SIGKILL goes to the driver and
   every process of its Ray at once (its process group: what a machine crash leaves behind);
2. the same command again, which resumes and finishes;
3. `ganray generate --verify`, and a read of every shard's face_id column: exactly `--count` rows,
   every face id 0..count-1 once;
4. `--s3-count` faces to S3 on a local moto server (`moto_server`, started here on a free port).

Printed: wall time of each run and in all, faces/s, start-up time (launch to first committed
shard), the peak of the summed RSS of all the job's processes (sampled every 0.5 s), bytes per face
on disk, and the size of the output's manifest: what must not grow with the count.

Summed RSS counts a shared page once per process that maps it, and every Ray worker maps the object
store's shared memory, so the script also samples every 2 s, per process, USS (pages only that
process holds) and PSS (each shared page split among the processes that map it: their sum is the
memory the job really holds), with the shards committed at that moment. The series goes to
memory.json and memory.png in the work folder.
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
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from _result import BenchmarkRun

GANRAY = [sys.executable, "-m", "ganray.cli"]
RESULT_NAME = "million_faces"


class Run:
    """One `ganray generate` process (its own session, so a kill reaches its whole Ray)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.started = time.perf_counter()
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(GANRAY + args, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.peak_rss = 0
        self.output: Path | None = None   # set by the caller: commits are counted in the series
        self.series: list[dict] = []      # every 2 s: t, shards committed, summed rss/uss/pss (bytes)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        last_full = 0.0
        while not self._stop.is_set():
            members = self.members()
            self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in members))
            if time.perf_counter() - last_full >= 2.0:
                last_full = time.perf_counter()
                named = [(_name(p), _full(p)) for p in members]
                full = [m for _, m in named if m is not None]
                by_name: dict[str, int] = {}
                for name, m in named:
                    if m is not None:
                        by_name[name] = by_name.get(name, 0) + m.uss
                self.series.append({
                    "t": round(last_full - self.started, 1),
                    "shards": committed_shards(self.output) if self.output else None,
                    "processes": len(full),
                    "rss": sum(m.rss for m in full), "uss": sum(m.uss for m in full),
                    "pss": sum(m.pss for m in full), "uss_by_process": by_name})
            time.sleep(0.5)

    def members(self) -> list[psutil.Process]:
        """The driver, its descendants and anything else in its session (its Ray's daemons)."""
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            tree = []
        pids = {p.pid for p in tree}
        return tree + [p for p in psutil.process_iter() if p.pid not in pids and _sid(p) == self.proc.pid]

    def kill_all(self) -> None:
        for proc in self.members():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        self.proc.wait()
        self.finish()

    def wait(self) -> int:
        code = self.proc.wait()
        self.finish()
        return code

    def finish(self) -> None:
        self.wall_s = time.perf_counter() - self.started
        self._stop.set()
        self._sampler.join()
        self.log.close()


def _sid(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def _full(proc: psutil.Process):
    try:
        return proc.memory_full_info()
    except psutil.Error:
        return None


def _name(proc: psutil.Process) -> str:
    """The process's title (Ray names its workers after what they run, e.g. ray::MapWorker(...))."""
    try:
        cmd = proc.cmdline()
        title = cmd[0] if cmd else proc.name()
        if title.endswith("python") or title.endswith("python3"):
            title = " ".join(cmd[1:3])
        return title.split("(")[0][:60]
    except psutil.Error:
        return "?"


def memory_summary(run: Run) -> dict:
    """Peaks of the summed USS and PSS over the run."""
    series = run.series
    return {"peak_uss_gib": round(max((p["uss"] for p in series), default=0) / 2**30, 2),
            "peak_pss_gib": round(max((p["pss"] for p in series), default=0) / 2**30, 2)}


def plot_memory(runs: list[tuple[str, Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    offset = 0.0
    for name, run in runs:
        t = [offset + p["t"] for p in run.series]
        for key, style in (("rss", ":"), ("pss", "-"), ("uss", "--")):
            ax.plot(t, [p[key] / 2**30 for p in run.series], style, label=f"{name}: summed {key.upper()}")
        offset += run.wall_s
    ax.set_xlabel("seconds (run 2 starts where run 1 was killed)")
    ax.set_ylabel("GiB, summed over the job's processes")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def committed_shards(output: Path) -> int:
    manifest = output / "_manifest"
    return len(list(manifest.glob("shard-*.json"))) if manifest.exists() else 0


def first_commit_s(run: Run, output: Path, before: int) -> float | None:
    """Seconds from launch until the run commits its first shard (polled), None if it never does."""
    while run.proc.poll() is None:
        if committed_shards(output) > before:
            return time.perf_counter() - run.started
        time.sleep(0.2)
    return None


def generate_args(registry: str, model: str, output: str, count: int) -> list[str]:
    settings = {"registry.url": registry, "generate.model": model, "generate.output": output,
                "generate.count": count, "generate.shard_size": 10_000, "generate.format": "parquet",
                "generate.progress_interval_s": 30}
    return ["generate", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]


def check_face_ids(output: Path, count: int) -> dict:
    ids = pq.read_table(output / "data", columns=["face_id"]).column("face_id").to_numpy()
    distinct = len(set(ids.tolist()))
    return {"rows": int(len(ids)), "distinct_face_ids": distinct,
            "exactly_0_to_count": bool(len(ids) == count == distinct and ids.min() == 0 and ids.max() == count - 1)}


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def local_run(args, env: dict[str, str], work: Path) -> dict:
    output = work / "faces-1m"
    shutil.rmtree(output, ignore_errors=True)
    command = generate_args(args.registry, args.model, str(output), args.count)
    shards = -(-args.count // 10_000)

    first = Run(command, env, work / "run1.log")
    first.output = output
    startup_1 = first_commit_s(first, output, 0)
    while first.proc.poll() is None and committed_shards(output) < args.kill_at * shards:
        time.sleep(0.5)
    at_kill = committed_shards(output)
    if first.proc.poll() is not None:  # it ended by itself (a bad setting, or a count too small to kill)
        raise SystemExit(f"run 1 ended before the kill (exit {first.proc.returncode}, {at_kill}/{shards} shards); "
                         f"see {work / 'run1.log'}")
    first.kill_all()
    print(f"run 1: SIGKILL to the driver and its Ray after {first.wall_s:.0f} s, {at_kill}/{shards} shards "
          "committed", flush=True)

    second = Run(command, env, work / "run2.log")
    second.output = output
    startup_2 = first_commit_s(second, output, at_kill)
    code = second.wait()
    if code != 0:
        raise SystemExit(f"the re-run failed (exit {code}); see {work / 'run2.log'}")
    verify = subprocess.run(GANRAY + ["generate", "--verify", str(output)], env=env, capture_output=True, text=True)
    ids = check_face_ids(output, args.count)
    parquet_bytes = disk_bytes(output / "data")
    (work / "memory.json").write_text(json.dumps({"run1": first.series, "run2": second.series}))
    plot_memory([("run 1", first), ("run 2", second)], work / "memory.png")
    return {
        "count": args.count, "shards": shards, "shards_committed_at_kill": at_kill,
        "run1_wall_s": round(first.wall_s, 1), "run2_wall_s": round(second.wall_s, 1),
        "total_wall_s": round(first.wall_s + second.wall_s, 1),
        "faces_per_s_overall": round(args.count / (first.wall_s + second.wall_s), 1),
        "faces_per_s_run2": round((args.count - at_kill * 10_000) / second.wall_s, 1),
        "startup_s_to_first_shard": [round(s, 1) if s else None for s in (startup_1, startup_2)],
        "peak_rss_gib": [round(r / 2**30, 2) for r in (first.peak_rss, second.peak_rss)],
        "memory_run1": memory_summary(first), "memory_run2": memory_summary(second),
        "parquet_bytes_per_face": round(parquet_bytes / args.count, 1),
        "manifest_bytes": disk_bytes(output / "_manifest") + (output / "manifest.json").stat().st_size,
        "verify_exit": verify.returncode, "verify_output": verify.stdout.strip()[-300:], **ids,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_run(args, env: dict[str, str], work: Path) -> dict:
    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3_env = {**env, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                  "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        for _ in range(50):
            try:
                boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                             aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="faces")
                break
            except Exception:
                time.sleep(0.2)
        output = "s3://faces/faces-100k"
        run = Run(generate_args(args.registry, args.model, output, args.s3_count), s3_env, work / "s3.log")
        code = run.wait()
        if code != 0:
            raise SystemExit(f"the S3 run failed (exit {code}); see {work / 's3.log'}")
        verify = subprocess.run(GANRAY + ["generate", "--verify", output], env=s3_env, capture_output=True, text=True)
        return {"count": args.s3_count, "wall_s": round(run.wall_s, 1),
                "faces_per_s": round(args.s3_count / run.wall_s, 1), "peak_rss_gib": round(run.peak_rss / 2**30, 2),
                "verify_exit": verify.returncode}
    finally:
        moto.kill()
        moto.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True, help="registry holding the model (e.g. one `ganray demo` made)")
    parser.add_argument("--model", default="production")
    parser.add_argument("--work", default=None, help="folder for the output and logs (default: a temp folder)")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of shards committed when SIGKILL is sent")
    parser.add_argument("--s3-count", type=int, default=100_000, help="faces to S3 on moto (0: skip)")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME, mode="full" if args.count == 1_000_000 else f"{args.count} faces")
    work = Path(args.work or tempfile.mkdtemp(prefix="ganray-1m-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # each run starts its own local Ray

    results = {"machine": f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
               "local": local_run(args, env, work)}
    print(json.dumps(results["local"], indent=2), flush=True)
    if args.s3_count:
        results["s3"] = s3_run(args, env, work)
        print(json.dumps(results["s3"], indent=2), flush=True)
    (work / "million_faces.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'million_faces.json'}")
    local = results["local"]
    run.settings = {"count": args.count, "kill_at": args.kill_at, "s3_count": args.s3_count, "model": args.model}
    run.note("`ganray generate` to local disk, SIGKILLed (driver and its Ray) at about --kill-at of the shards, "
             "re-run to completion, then verified; faces/s include start-up.")
    run.figure("faces/s overall (both runs)", local["faces_per_s_overall"], "faces/s",
               f"{local['total_wall_s']} s in all")
    run.figure("faces/s, the resumed run", local["faces_per_s_run2"], "faces/s")
    run.figure("every face id 0..count-1 exactly once", "yes" if local["exactly_0_to_count"] else "NO")
    run.figure("verify exit status", local["verify_exit"])
    run.figure("peak summed RSS (run 1, run 2)", " / ".join(f"{r} GiB" for r in local["peak_rss_gib"]))
    run.figure("peak PSS (run 1, run 2)", f"{local['memory_run1']['peak_pss_gib']} / "
               f"{local['memory_run2']['peak_pss_gib']} GiB")
    run.figure("Parquet bytes per face", local["parquet_bytes_per_face"], "bytes")
    run.figure("manifest size", local["manifest_bytes"], "bytes")
    if "s3" in results:
        run.figure(f"S3 (moto), {args.s3_count} faces", results["s3"]["faces_per_s"], "faces/s")
    run.write()


if __name__ == "__main__":
    main()
