"""Autoscaling on one machine, for real: cluster/autoscaling_demo.py (docs/clusters.md, "Autoscaling").

The demo runs as a subprocess: it starts a `ray start --head` of its own with Ray's fake
multi-node provider (cluster/fake_multinode.yaml), so it never meets the session's Ray
(conftest.py's `ray_session`) that this pytest process may hold. The test reads the node counts it
sampled, checks the job's output itself (`ganray generate --verify`, every face id exactly once),
and looks for any process of that head left running.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import psutil
import pyarrow.parquet as pq
import yaml

from conftest import REPO

DEMO = REPO / "cluster" / "autoscaling_demo.py"
FAKE_CONFIG = REPO / "cluster" / "fake_multinode.yaml"
BIN = Path(sys.executable).parent
FACES = 120


def test_the_fake_cluster_config_is_a_valid_launcher_config():
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    config["provider"]["gcs_address"] = "127.0.0.1:6379"  # the demo fills it in
    jsonschema.validate(config, schema)
    worker = config["available_node_types"]["cpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 2 and config["idle_timeout_minutes"] > 0
    assert config["available_node_types"]["ray.head.default"]["max_workers"] == 0


def test_workers_come_for_the_job_and_go_when_idle(tmp_path):
    out, chart = tmp_path / "demo", tmp_path / "nodes.png"
    done = subprocess.run(
        [sys.executable, str(DEMO), "--out", str(out), "--chart", str(chart), "--count", str(FACES),
         "--shard-size", "20", "--replicas", "3", "--idle-timeout-s", "5", "--interval", "0.5",
         "--scale-down-grace-s", "120", "--timeout-s", "400"],
        capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    timeline = json.loads((out / "timeline.json").read_text())
    # Nothing the demo's head started is left, by its own count and by a look at every process.
    assert timeline["left_running"] == []
    marker = (timeline["marker_env"], timeline["marker"])
    leftovers = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(marker[0]) == marker[1]:
                leftovers.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    assert not leftovers, f"processes of the demo's cluster survived: {leftovers}"
    assert done.returncode == 0, log[-4000:]
    assert timeline["job_exit_status"] == 0

    samples = timeline["samples"]
    before = [s for s in samples if s["phase"] == "before job"]
    during = [s for s in samples if s["phase"] == "job"]
    after = [s for s in samples if s["phase"] == "after job"]
    assert before and all(s["nodes"] == 1 and s["raylets"] == 1 for s in before)
    # Workers appear while the job runs: the GCS sees them, and they are raylets on this machine.
    assert max(s["nodes"] for s in during) > 1 and max(s["raylets"] for s in during) > 1
    assert max(s["nodes"] for s in samples) <= 1 + timeline["max_workers"]
    # ... and go once idle: the last samples are the head alone again.
    assert after[-1]["nodes"] == 1 and after[-1]["raylets"] == 1
    assert chart.stat().st_size > 0

    # The job's output is complete and intact: every face id once.
    verify = subprocess.run([str(BIN / "ganray"), "generate", "--verify", timeline["output"]],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"all {FACES // 20} shards intact" in verify.stdout
    manifest = json.loads(Path(timeline["output"], "manifest.json").read_text())
    assert manifest["faces"] == FACES
    ids = pq.read_table(Path(timeline["output"], "data"), columns=["face_id"]).column("face_id").to_pylist()
    assert sorted(ids) == list(range(FACES))
