"""The studio on a 1,000,000-face output: time to open it and to get a page of 100 faces over HTTP.

    .venv/bin/python benchmarks/studio_open.py --template ./out/demo-faces-v1 [--count 1000000]
        [--shard-size 1000] [--work DIR] [--repeats 20] [--keep]

1. The template (a finished `ganray generate` output, e.g. the one `ganray demo` makes) is opened in
   a real `ganray studio` process: its first page, a face's detail and its files answer 200 (the
   demo's output opens in the studio).
2. A --count-row output is written in the template's layout: its Parquet schema (and any Hugging Face
   feature metadata), one row group per shard of --shard-size rows, no compression, job.json and a
   manifest.json with every shard's bytes and sha256, as `ganray generate` writes them. The rows are
   the template's rows repeated (their PNG bytes and labels reused), with face_id and seed made
   unique: only the images repeat.
3. Open: StudioOutput(OUT) in this process (manifest, job, every shard's footer), median of 3; and a
   `ganray studio OUT` process from launch to its first answered GET /api/info.
4. Pages of 100 through that process over HTTP on 127.0.0.1 (JSON with the PNGs inline): the first
   page, a deep page (the last), a filtered page (one facet value; its first request before the
   filter index is complete, then warm), and a deep filtered page. --repeats requests each.
5. The generated output is deleted (disk), unless --keep.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from _result import REPO, BenchmarkRun
from ganray.data.hf_features import to_ganray_table
from ganray.studio.output import StudioOutput

RESULT_NAME = "studio_open"
PAGE = 100


class StudioProcess:
    """`ganray studio OUT --port 0` in its own process; .url once it prints where it listens."""

    def __init__(self, out: Path):
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "ganray.cli", "studio", str(out), "--port", "0"],
                                     cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"open (http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                threading.Thread(target=self.lines.extend, args=(self.proc.stdout,), daemon=True).start()
                return
        raise SystemExit(f"the studio did not start:\n{''.join(self.lines)}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def get(client: httpx.Client, url: str, params=None) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.get(url, params=params)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"GET {url} {params}: {response.status_code} {response.text[:300]}")
    return elapsed, response.json()


def check_template_opens(template: Path) -> dict:
    studio = StudioProcess(template)
    try:
        with httpx.Client(timeout=60) as client:
            _, info = get(client, f"{studio.url}/api/info")
            _, page = get(client, f"{studio.url}/api/faces", {"size": PAGE})
            _, detail = get(client, f"{studio.url}/api/faces/0")
            for name in info["files"]:
                if client.get(f"{studio.url}/api/files/{name}").status_code != 200:
                    raise SystemExit(f"the template's {name} does not answer 200")
        if info["unreadable_shards"] or len(page["faces"]) != min(PAGE, info["faces"]) or "seed" not in detail["face"]:
            raise SystemExit(f"the template does not open cleanly in the studio: {info}")
        return info
    finally:
        studio.stop()


def template_table(template: Path) -> tuple[pa.Table, dict, dict]:
    manifest = json.loads((template / "manifest.json").read_text())
    job = json.loads((template / "job.json").read_text())
    files = sorted(f for s in manifest["shards"] for f in s["files"] if f.endswith(".parquet"))
    if not files:
        raise SystemExit(f"{template} has no Parquet shards")
    tables = [pq.read_table(template / f) for f in files]
    return pa.concat_tables(tables), manifest, job


def write_output(out: Path, table: pa.Table, manifest: dict, job: dict, count: int, shard_size: int) -> float:
    """The big output in the template's layout; returns its size in bytes."""
    import hashlib

    (out / "parquet").mkdir(parents=True)
    names = table.column_names
    entries, total = [], 0
    for k, start in enumerate(range(0, count, shard_size)):
        stop = min(count, start + shard_size)
        ids = np.arange(start, stop)
        shard = table.take(pa.array(ids % table.num_rows))
        for name in ("face_id", "seed"):
            if name in names:
                shard = shard.set_column(names.index(name), name, pa.array(ids + (0 if name == "face_id" else 7),
                                                                           shard.schema.field(name).type))
        rel = f"parquet/shard-{k:05d}.parquet"
        pq.write_table(shard, out / rel, compression="none", row_group_size=max(1, len(shard)))
        data = (out / rel).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        total += len(data)
        entries.append({"job_id": job["job_id"], "shard": k, "name": f"shard-{k:05d}", "face_ids": [start, stop],
                        "rows": stop - start, "bytes": len(data),
                        "sha256": hashlib.sha256(digest.encode()).hexdigest(),
                        "files": {rel: {"bytes": len(data), "sha256": digest}}})
    job = {**job, "parameters": {**job["parameters"], "count": count, "shard_size": shard_size}}
    (out / "job.json").write_text(json.dumps(job, indent=2) + "\n")
    big = {**{k: v for k, v in manifest.items() if k != "shards"}, "faces": count, "bytes": total, "shards": entries}
    (out / "manifest.json").write_text(json.dumps(big, indent=2) + "\n")
    return total


def timings(client: httpx.Client, url: str, params: dict, repeats: int) -> list[float]:
    return [get(client, url, params)[0] for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, help="a finished `ganray generate` output (e.g. the demo's)")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per shard (generate.shard_size's default)")
    parser.add_argument("--work", default=None, help="folder for the generated output (default: a temp folder)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the generated output")
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME, mode="full" if args.count >= 1_000_000 else "quick")
    run.settings.update(count=args.count, shard_size=args.shard_size, repeats=args.repeats, page=PAGE)

    template = Path(args.template).resolve()
    info = check_template_opens(template)
    run.figure("template output opens in the studio", "yes",
               note=f"{info['faces']} faces, first page, a face's detail and {len(info['files'])} files answered 200")

    table, manifest, job = template_table(template)
    facet = next((f for f in ("stratum", *info["columns"]["facets"]) if f in info["columns"]["facets"]), None)
    work = Path(args.work or tempfile.mkdtemp(prefix="ganray-studio-bench-"))
    out = work / "studio-1m"
    if out.exists():
        shutil.rmtree(out)
    try:
        started = time.perf_counter()
        size = write_output(out, table, manifest, job, args.count, args.shard_size)
        run.figure("writing the output", time.perf_counter() - started, "s",
                   f"{args.count} rows, {size / 1e9:.2f} GB, {-(-args.count // args.shard_size)} shards")

        opens = []
        for _ in range(3):
            started = time.perf_counter()
            opened = StudioOutput(str(out))
            opens.append(time.perf_counter() - started)
        assert opened.total == args.count
        run.figure("open: StudioOutput (manifest, job, every footer)", statistics.median(opens), "s",
                   "median of 3, in process; goal < 2 s")

        studio = StudioProcess(out)
        with httpx.Client(timeout=120) as client:
            get(client, f"{studio.url}/api/info")
            answered = time.perf_counter()
            run.figure("open: `ganray studio` launch to first /api/info answer", time.perf_counter() - studio.started,
                       "s", "includes the Python imports of the command")
            value = None
            if facet:  # the template's first face's value (a label string in either layout)
                value = to_ganray_table(table.slice(0, 1).select([facet])).column(facet)[0].as_py()
            rows = []
            if facet:
                cold, body = get(client, f"{studio.url}/api/faces", {"size": PAGE, f"eq.{facet}": value})
                rows.append([f"filtered page 0 ({facet}={value}), first request", cold * 1000, cold * 1000, 1])
            cases = [("first page", {"size": PAGE, "page": 0}),
                     ("deep page (the last)", {"size": PAGE, "page": (args.count - 1) // PAGE})]
            for name, params in cases:
                t = timings(client, f"{studio.url}/api/faces", params, args.repeats)
                rows.append([name, statistics.median(t) * 1000, float(np.percentile(t, 95)) * 1000, len(t)])
            while not client.get(f"{studio.url}/api/facets").json()["complete"]:
                time.sleep(0.2)
            run.figure("filter index complete (every shard's filter columns)", time.perf_counter() - answered,
                       "s", "read in the background from start-up; from the first /api/info answer, while the "
                       "pages above were measured")
            if facet:
                _, body = get(client, f"{studio.url}/api/faces", {"size": PAGE, f"eq.{facet}": value})
                matches = body["total"]
                for name, params in [(f"filtered page 0 ({facet}={value})", {"page": 0}),
                                     ("filtered deep page (the last)", {"page": (matches - 1) // PAGE})]:
                    t = timings(client, f"{studio.url}/api/faces", {"size": PAGE, f"eq.{facet}": value, **params},
                                args.repeats)
                    rows.append([name, statistics.median(t) * 1000, float(np.percentile(t, 95)) * 1000, len(t)])
                run.note(f"filter {facet}={value} matches {matches} of {args.count} rows")
            page_ms = max(r[1] for r in rows if "first request" not in r[0])
        studio.stop()
        run.table("pages of 100 faces over HTTP (ms)", ["request", "p50", "p95", "requests"], rows)
        run.figure("slowest page of 100 (p50 over the cases)", page_ms, "ms", "goal < 300 ms")
        run.note(f"rows are {table.num_rows} rendered faces of {template.name} repeated (PNG bytes and labels "
                 "reused); face_id and seed unique; files in the OS page cache (just written)")
        run.note("a page is one GET /api/faces returning 100 faces' PNGs inline (base64) and their labels")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    run.write()


if __name__ == "__main__":
    main()
