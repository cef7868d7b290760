"""`ganray demo` as a new user runs it: a fresh directory, a local Ray started by the command, and a
console that a person can read (one progress line per long job; Ray's chatter in log files)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.resolution=32", "--set", "data.synthetic.count=256", "--set", "model.g_width=8",
        "--set", "model.d_width=8", "--set", "model.z_dim=16", "--set", "train.max_steps=20",
        "--set", "train.checkpoint_every=10", "--set", "train.log_every=5", "--faces", "100"]
# What Ray prints when its chatter reaches the console (seen before the console work: 282 lines of
# the first, one per report of the second, and the rest once each).
RAY_CHATTER = ("PlacementGroupCleaner", "TrainingReport", "RayTrainWorker pid=", "TrainController pid=",
               "Starting execution of Dataset", "Started a local Ray instance", "SplitCoordinator")
ONE_SCREEN = 30  # lines


def _env(ray_tmp: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    # Ray's session (and its socket paths, at most 107 bytes) under a short folder of our own.
    env.update(RAY_USAGE_STATS_ENABLED="0", TMPDIR=ray_tmp)
    return env


@pytest.mark.slow
def test_demo_runs_end_to_end_from_any_directory_and_fits_on_one_screen(tmp_path):
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ganray-demo-")
    try:
        proc = subprocess.run([sys.executable, "-m", "ganray.cli", "demo", *TINY], cwd=workdir, env=_env(ray_tmp),
                              capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    lines = console.splitlines()
    assert len(lines) <= ONE_SCREEN, console
    for chatter in RAY_CHATTER:
        assert chatter not in console, f"Ray's chatter on the console: {chatter!r}\n{console}"
    assert any(line.startswith("train demo: 20/20 steps") for line in lines), console
    assert any(line.startswith("generate: 1/1 shards") for line in lines), console
    assert any(line.startswith(f"[ganray] Ray logs: {ray_tmp}") for line in lines), console  # where it went
    # What the demo says it made is there, relative to where it ran.
    assert (workdir / "runs" / "demo" / "samples.png").is_file()
    assert (workdir / "registry" / "aliases" / "demo.json").is_file()
    manifest = json.loads((workdir / "out" / "demo-faces-v1" / "manifest.json").read_text())
    assert manifest["faces"] == 100
