"""Several nodes on one machine (docs/clusters.md, "Several nodes"): DDP training across nodes,
and a generation job that loses a node half way and still ends byte-identical to a single-node run.

The cluster (`ray.cluster_utils.Cluster`: a head with no CPUs and four worker nodes of 1 CPU) and the jobs
run in a subprocess, tests/multinode_cluster.py: its driver needs a `ray.init` of its own, and this
pytest process may already hold the session's Ray (conftest.py's `ray_session`). It runs once per
module; the tests read what it observed (result.json) and the files the jobs wrote.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from ganray import storage
from ganray.generate.output import verify_output
from ganray.train import checkpoint as ckpt

from conftest import REPO
from multinode_cluster import GENERATE

SCENARIO = REPO / "tests" / "multinode_cluster.py"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("multinode")
    done = subprocess.run([sys.executable, str(SCENARIO), str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    result = json.loads((out / "result.json").read_text())
    # cluster.shutdown() took every node's processes with it (theirs name the cluster's temp dir).
    left = [p.pid for p in psutil.process_iter() if result["temp_dir"] in " ".join(_cmdline(p))]
    assert not left, f"processes of the test's cluster survived: {left}"
    return out, result


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of an output but the run's timings and the drivers' leases."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("summary.json", "card.json", "README.md") and "_lease" not in p.parts}


def test_two_worker_ddp_training_spans_two_nodes(scenario):
    out, result = scenario
    train = result["train"]
    assert train["step"] == 4 and train["checkpoint"].endswith("checkpoint_00000004")
    assert storage.exists(str(Path(train["checkpoint"]) / ckpt.META_FILE))
    workers = train["workers"]
    assert len(workers) == 2 and all(w["restarts"] == 0 for w in workers)
    nodes = {w["node"] for w in workers}
    assert len(nodes) == 2 and nodes <= {result["nodes"]["head"], *result["nodes"]["workers"]}


def test_generation_that_loses_a_node_ends_byte_identical_to_a_single_node_run(scenario):
    out, result = scenario
    gen = result["generate"]
    removed = gen["removed"]
    # The node went while the job was running: after some shards were committed, before most were.
    assert removed is not None and removed["node"] in result["nodes"]["workers"]
    assert 2 <= removed["committed_before"] < gen["summary"]["shards"] // 2
    assert removed["node"] in {a["node"] for a in removed["renderers_before"]}
    assert removed["node"] not in gen["alive_nodes"] and len(gen["alive_nodes"]) == 4  # the head and 3 workers
    # ...and the cluster knew it before the job ended (multinode_cluster.HEALTH_CHECKS): a loss the
    # job never saw would prove nothing.
    assert removed["s"] < removed["declared_dead_s"] < gen["s"]
    # Ray restarted the lost generator actor, on a node that is still there.
    restarted = [a for a in gen["renderers_after"] if a["restarts"] >= 1]
    assert restarted and all(a["node"] in gen["alive_nodes"] for a in restarted)
    count = GENERATE["count"]
    assert gen["finished"] and gen["summary"]["faces"] == gen["summary"]["faces_this_run"] == count
    assert not gen["summary"]["resumed"]

    single, multi = out / "single", out / "multi"
    assert snapshot(multi) == snapshot(single)
    assert not verify_output(str(multi))["damaged"]
    ids = pq.read_table(multi / "data", columns=["face_id"]).column("face_id").to_pylist()
    assert sorted(ids) == list(range(count))  # every face id exactly once
