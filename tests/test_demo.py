"""`ganray demo` as a new user runs it: the package installed from a built wheel (not editable), a
fresh directory outside the repository, a local Ray started by the command, and a console that a
person can read (one progress line per long job; Ray's chatter in log files).

The wheel is installed alone (`pip install --no-deps --target`) and put first on PYTHONPATH, ahead of
the test venv's editable ganray; its dependencies are the test venv's (tests/test_packaging.py checks
that the runtime dependencies alone provide every import). So the demo's configs must come from
the installed package, and the test checks that the driver and a Ray worker import that copy."""
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
               "Starting execution of Dataset", "Started a local Ray instance", "SplitCoordinator",
               "core_worker.cc")
ONE_SCREEN = 30  # lines
IMPORTED_FROM = """
import os, ray
import ganray
print(os.path.dirname(ganray.__file__))
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print(ray.get(ray.remote(lambda: os.path.dirname(__import__("ganray").__file__)).remote()))
ray.shutdown()
"""


def _env(ray_tmp: str, site: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    # Ray's session (and its socket paths, at most 107 bytes) under a short folder of our own.
    env.update(RAY_USAGE_STATS_ENABLED="0", TMPDIR=ray_tmp, PYTHONPATH=str(site))
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """ganray built as a wheel and installed alone into a folder: (site folder)."""
    site = tmp_path_factory.mktemp("installed") / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (site / "ganray" / "__init__.py").is_symlink() and (site / "ganray" / "configs").is_dir()
    return site


@pytest.mark.slow
def test_demo_runs_end_to_end_from_any_directory_and_fits_on_one_screen(tmp_path, installed):
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ganray-demo-")
    try:
        # Where the driver and a Ray worker import ganray from: the installed copy, not the repository.
        where = subprocess.run([sys.executable, "-c", IMPORTED_FROM], cwd=workdir, env=_env(ray_tmp, installed),
                               capture_output=True, text=True, timeout=300)
        assert where.stdout.split() == [str(installed / "ganray")] * 2, where.stdout + where.stderr
        proc = subprocess.run([str(installed / "bin" / "ganray"), "demo", *TINY], cwd=workdir,
                              env=_env(ray_tmp, installed), capture_output=True, text=True, timeout=600)
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
    # It ends by saying where each thing is, one a line, and each place it names exists.
    out = proc.stdout.splitlines()
    end = out.index(next(line for line in out if line.startswith("ganray demo: done")))
    made = dict(line.strip().split(":", 1) for line in out[end + 1:])
    assert list(made) == ["checkpoint", "sample grid", "loss plot", "model", "faces", "balance report"], console
    where = {what: workdir / text.split()[0] for what, text in made.items()}  # absolute stays absolute
    assert (where["checkpoint"] / "meta.json").is_file() and where["sample grid"].name == "samples.png"
    assert where["sample grid"].is_file() and where["loss plot"].is_file() and where["balance report"].is_file()
    assert where["faces"].resolve() == (workdir / "out" / "demo-faces-v1").resolve()
    assert "100 labeled faces" in made["faces"]
    assert made["model"].split()[:3] == ["v1", "in", str(workdir / "registry")]
    # The demo's output carries its card and opens in the studio: a page of its faces, with their labels.
    from ganray.images import decode_png
    from ganray.studio.output import StudioOutput

    assert json.loads((where["faces"] / "card.json").read_text())["faces"] == 100
    studio = StudioOutput(str(where["faces"]))
    rows = studio.rows([0, 99], ["face_id", *studio.columns.facets], images=True)
    assert [r["face_id"] for r in rows] == [0, 99] and all(r[f] for r in rows for f in studio.columns.facets)
    assert decode_png(studio.png(99)).shape[-1] == 3
