"""Several nodes on one machine (`ray.cluster_utils.Cluster`): the scenario tests/test_multinode.py runs.

It runs in a process of its own (`python tests/multinode_cluster.py OUT_DIR`): a Cluster's driver
needs its own `ray.init`, and the pytest process already holds the session's Ray (conftest.py's
`ray_session`), which one process cannot have twice. Everything it observes goes to OUT_DIR/result.json;
the test asserts on that and on the files the jobs wrote. At the end the Cluster's processes (which
it started) are shut down by `cluster.shutdown()`, which kills exactly the nodes it added.

The cluster: a head with no CPUs and four worker nodes with 1 CPU each, so that two 1-CPU training
workers cannot share a node, and a generation job keeps room for its actors after losing a node.

1. A 2-worker DDP training (tiny DCGAN, a few steps): its workers' nodes are read from the GCS's
   actor table.
2. The same generation job twice: on one worker node alone (before the other three join: a single-node
   run), then on all four, removing (`cluster.remove_node`) the worker node of one of its
   generator actors once the first shards are committed and while most are still to go.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "adult", "senior"]}
# The generation job: many small shards, so that the node goes while most of them are still to do.
# 64 shards: on a quiet machine a shorter job could finish before the node is removed.
GENERATE = {"count": 256, "shard_size": 4, "format": "parquet", "psi": 0.9, "seed_offset": 7,
            "balance": ["gender"], "batch_size": 4, "replicas": 2, "progress_interval_s": 1.0}
NODE_OBJECT_STORE = 80 * 1024 * 1024
# How the GCS finds a killed node: by health checks, Ray's defaults being one every 3 s and 5 failures
# in a row (~15 s). The whole multi-node job can take less than that on a quiet machine (a CI run
# ended 17 s in with the killed node still listed alive). Checks every 0.5 s, 3 failures: the loss
# was seen 1.0-1.3 s after the kill here, while the job still ran. A killed raylet refuses the check
# at once; the per-check timeout stays Ray's, so a live node under load is not declared dead.
HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
NODE_DEATH_DEADLINE_S = 60


def push_tiny_generator(registry_dir: Path) -> str:
    import torch

    from ganray.config import DCGANConfig
    from ganray.models import build_generator
    from ganray.registry import Registry

    torch.manual_seed(0)
    cfg = DCGANConfig(z_dim=16, g_width=8, conditional=True, embed_dim=4)
    g = build_generator(cfg, 32, ATTRIBUTES)
    with torch.no_grad():  # spread the weights: DCGAN's init gives near-flat images at this width
        for p in g.parameters():
            p.normal_(0.0, 0.3)
    registry = Registry(str(registry_dir))
    registry.promote(registry.push(g.state_dict(), cfg.model_dump(), 32, ATTRIBUTES, {"test": True}), "production")
    return registry.url


def generate_job(registry_url: str, output: Path):
    from ganray.config import GenerateJob, load_config

    return load_config(GenerateJob, None, [
        f"registry.url={registry_url}", f"generate.output={output}", "generate.model=production",
        *(f"generate.{k}={json.dumps(v)}" for k, v in GENERATE.items())])


def actor_nodes(class_name: str) -> list[dict]:
    """Every actor whose class name holds `class_name` (alive or dead) and the node it ran on. Ray
    Data's actors are named after their stage: MapWorker(MapBatches(FaceRenderer))."""
    import ray

    return [{"id": a["ActorID"], "node": a["Address"]["NodeID"], "state": a["State"], "restarts": a["NumRestarts"]}
            for a in ray._private.state.actors().values() if class_name in a["ActorClassName"]]


def committed(output: Path) -> int:
    folder = output / "_manifest"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def wait_until_dead(node_id: str, started: float) -> float | None:
    """Seconds from the job's start until the GCS lists `node_id` as dead; None if it never did
    within NODE_DEATH_DEADLINE_S (the test then fails on alive_nodes)."""
    import ray

    deadline = time.monotonic() + NODE_DEATH_DEADLINE_S
    while time.monotonic() < deadline:
        if not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            return round(time.monotonic() - started, 1)
        time.sleep(0.2)
    return None


def main(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from ganray.config import TrainJob, load_config
    from ganray.generate.job import run_generate
    from ganray.train.trainer import run_training

    # A temp dir of its own (short: Ray's socket paths live under it), never /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="grm", dir="/tmp")
    # Cluster() also writes the head's address to $RAY_TMPDIR/ray/ray_current_cluster (/tmp/ray/... by
    # default, which a fresh machine lacks: FileNotFoundError): keep that file in this temp dir too.
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"))
    result: dict = {"temp_dir": temp_dir}
    node_args = {"num_cpus": 1, "object_store_memory": NODE_OBJECT_STORE, "temp_dir": temp_dir}
    # The head (the driver's node, which cannot be removed) runs no task or actor: every generator
    # actor is on a worker node, so there is always one to lose. (With a CPU on the head, one CI run
    # had the head's actor, started from the head's warm worker pool, render all 64 shards before the
    # worker node's actor was up: no node hosted a live generator that could be removed.)
    cluster = Cluster(initialize_head=True, head_node_args={
        **node_args, "num_cpus": 0, "include_dashboard": False, "_system_config": HEALTH_CHECKS})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        registry_url = push_tiny_generator(out / "registry")

        # --- The single-node run: one worker node alone.
        workers = [cluster.add_node(**node_args)]
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # the head (no CPUs) and it
        run_generate(generate_job(registry_url, out / "single"), log=lambda _: None)

        workers += [cluster.add_node(**node_args) for _ in range(3)]
        cluster.wait_for_nodes()
        head_id = cluster.head_node.node_id
        result["nodes"] = {"head": head_id, "workers": [w.node_id for w in workers]}

        # --- DDP across nodes: two 1-CPU workers on 1-CPU nodes.
        job = load_config(TrainJob, REPO / "configs" / "demo.yaml", [
            f"run.storage_path={out / 'runs'}", "run.name=multinode",
            "data.resolution=32", "data.synthetic.count=128", "model.g_width=8", "model.d_width=8",
            "model.z_dim=16", "train.batch_size=16", "train.num_workers=2", "train.threads_per_worker=1",
            "train.max_steps=4", "train.log_every=2", "train.checkpoint_every=4"])
        started = time.monotonic()
        outcome = run_training(job)
        result["train"] = {"step": outcome.step, "checkpoint": outcome.checkpoint,
                           "workers": actor_nodes("RayTrainWorker"), "s": round(time.monotonic() - started, 1)}

        # --- The same generation job across the nodes, losing one generator actor's node on the way.
        output = out / "multi"
        done: dict = {}

        def generate() -> None:
            done["summary"] = run_generate(generate_job(registry_url, output), log=print)
            done["s"] = round(time.monotonic() - started, 1)

        thread = threading.Thread(target=generate, daemon=True)
        started = time.monotonic()
        thread.start()
        removed = None
        seen: dict[tuple, float] = {}  # (actor id, node, state) -> when first seen: what a failure needs
        while thread.is_alive() and removed is None:
            renderers = actor_nodes("FaceRenderer")
            for a in renderers:
                seen.setdefault((a["id"], a["node"], a["state"]), round(time.monotonic() - started, 1))
            if committed(output) >= 2:
                renderers = [a for a in renderers if a["state"] == "ALIVE"]
                victims = [w for w in workers if w.node_id in {a["node"] for a in renderers}]
                if victims:
                    removed = {"node": victims[0].node_id, "committed_before": committed(output),
                               "renderers_before": renderers, "s": round(time.monotonic() - started, 1)}
                    cluster.remove_node(victims[0], allow_graceful=False)
                    continue
            time.sleep(0.05)
        if removed is not None:  # when the GCS lists the node dead (the job may still be running)
            removed["declared_dead_s"] = wait_until_dead(removed["node"], started)
        thread.join(timeout=300)
        result["generate"] = {"removed": removed, "summary": done.get("summary"),
                              "finished": not thread.is_alive(), "s": done.get("s"),
                              "renderers_after": actor_nodes("FaceRenderer"),
                              "renderer_states_seen": [[*key, t] for key, t in seen.items()],
                              "alive_nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])}
    finally:
        (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(Path(sys.argv[1]))
