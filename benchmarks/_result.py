"""The one writer of benchmark results: every script in benchmarks/ records what it measured, where
and how, in benchmarks/results/NAME.json, and docs/benchmarks.md is rendered from those files
(benchmarks/render_docs.py). Figures are data, never typed into a page by hand.

    from _result import BenchmarkRun        # benchmarks/ is on sys.path when a script runs
    RESULT_NAME = "my_benchmark"            # module level, the script's file name without .py
    run = BenchmarkRun(RESULT_NAME, mode="quick" if args.quick else "full")
    run.figure("served / offline", 0.83, note="GET, 32 clients")
    run.write()

A figure is a name, a value (a number, or text for a compound one) and optional unit and note;
measurements with several columns (per variant, per client count) go in a table:
run.table(title, columns, rows).
The machine is shared: the load average at start and end is recorded, so a figure taken while
other work ran can be told apart; prefer ratios measured side by side in one run.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
# The fields every result file has (tests/test_benchmarks.py checks them).
REQUIRED = ("name", "title", "mode", "command", "commit", "date", "duration_s", "machine", "load_average",
            "figures")
MACHINE_FIELDS = ("cpu", "bf16", "cores", "gpu")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_flags_and_model() -> tuple[set[str], str]:
    """The first CPU's flags and model name, from /proc/cpuinfo (empty where there is none)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return flags, model
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return flags, model


def bf16_kind(flags: set[str]) -> str:
    """How the CPU computes bf16: AMX tiles, AVX512-BF16 instructions, or none (reference kernels)."""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return "none"


def gpus() -> str:
    """The GPUs' names (nvidia-smi), or "none"."""
    if shutil.which("nvidia-smi"):
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30, check=True).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
            if names:
                return ", ".join(names)
        except (OSError, subprocess.SubprocessError):
            pass
    return "none"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict[str, Any]:
    flags, model = cpu_flags_and_model()
    return {"cpu": model, "bf16": bf16_kind(flags), "cores": os.cpu_count() or 0, "gpu": gpus(),
            "torch": _version("torch"), "ray": _version("ray"), "python": platform.python_version()}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def command_line(argv: list[str] | None = None) -> str:
    """How to run this again from the repository root: the venv's python, the script's path, its args."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else BENCHMARKS / "unknown.py"
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = str(script)
    return shlex.join([".venv/bin/python", script_text, *argv[1:]])


class BenchmarkRun:
    """One run of one benchmark: started on construction (date, load average), written by write()."""

    def __init__(self, name: str, mode: str = "full", title: str | None = None,
                 argv: list[str] | None = None) -> None:
        self.name, self.mode = name, mode
        self.title = title or _title_of(BENCHMARKS / f"{name}.py") or name
        self.command = command_line(argv)
        self.started = dt.datetime.now(dt.timezone.utc)
        self._start = time.monotonic()
        self.load_start = load_average()
        self.figures: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.settings: dict[str, Any] = {}
        self.tables: list[dict[str, Any]] = []

    def figure(self, name: str, value: float | int | str, unit: str = "", note: str = "") -> None:
        if isinstance(value, float):
            value = round(value, 4)
        entry: dict[str, Any] = {"name": name, "value": value}
        if unit:
            entry["unit"] = unit
        if note:
            entry["note"] = note
        self.figures.append(entry)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table of measurements; numbers are rounded to 4 places like figures."""
        if any(len(row) != len(columns) for row in rows):
            raise ValueError(f"table {title!r}: every row needs {len(columns)} cells")
        self.tables.append({"title": title, "columns": list(columns), "rows": [
            [round(c, 4) if isinstance(c, float) else c for c in row] for row in rows]})

    def note(self, text: str) -> None:
        """A line printed under the table: what the figures are of (model, batch, threads...)."""
        self.notes.append(text)

    def record(self) -> dict[str, Any]:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "ganray", "benchmarks/" + self.name + ".py"))
        return {
            "name": self.name, "title": self.title, "mode": self.mode, "command": self.command,
            "commit": commit or "unknown", "uncommitted_changes": dirty,
            "date": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_s": round(time.monotonic() - self._start, 1),
            "machine": machine(),
            "load_average": {"start": self.load_start, "end": load_average()},
            "settings": self.settings, "notes": self.notes, "figures": self.figures,
            "tables": self.tables,
        }

    def write(self, directory: Path | None = None) -> Path:
        """Writes results/NAME.json (atomically) and returns its path."""
        if not self.figures:
            raise ValueError(f"benchmark {self.name!r} measured nothing: no figures to write")
        directory = RESULTS if directory is None else Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record(), indent=2) + "\n")
        os.replace(tmp, path)
        print(f"result written to {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        return path


def _title_of(script: Path) -> str:
    """The first line of a script's docstring (read, not imported)."""
    import ast

    try:
        doc = ast.get_docstring(ast.parse(script.read_text()))
    except (OSError, SyntaxError):
        return ""
    return doc.strip().splitlines()[0].strip() if doc else ""
