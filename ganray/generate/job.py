"""`ganray generate`: render `count` faces from a registry model into Parquet/PNG shards on Ray Data.

The driver checks everything first (model, conditions, output) and writes nothing until then. It
then takes the output's lease (ganray/generate/lease.py: one writer at a time), claims the output
(job.json), removes what an interrupted run left uncommitted or damaged (checked by sha256), and
streams the missing shards through the pipeline (ganray/generate/pipeline.py). It only ever sees one small
commit record per shard, so its memory does not grow with `count`; Ray Data's backpressure keeps
the workers' memory flat. Re-running the same job resumes it; the result is the same bytes.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import ray.data

from ganray import console, storage
from ganray.console import ProgressLine
from ganray.config import GenerateJob
from ganray.generate.output import (
    SUMMARY_FILE,
    GenerateError,
    OutputLayout,
    check_output,
    committed_shards,
    create_output,
    json_bytes,
    remove_uncommitted,
    write_run_manifest,
)
from ganray.generate.lease import LeaseHeld, OutputLease
from ganray.generate.plan import ConditionPlan, ShardRange, job_id, job_parameters, render_environment, shard_ranges
from ganray.registry import Registry, RegistryError, VersionInfo
from ganray.runtime import init_ray


@dataclass(frozen=True)
class GeneratePlan:
    """A validated job: everything the pipeline needs, decided before anything is written."""

    job: GenerateJob
    registry_url: str
    model: VersionInfo
    conditions: ConditionPlan
    layout: OutputLayout
    shards: list[ShardRange]
    identity: dict[str, Any] | None = None  # job.json: {"job_id", "parameters"}, once the environment is known
    environment: dict[str, str] | None = None  # render_environment() on a generator actor's resources

    @property
    def job_id(self) -> str:
        return self.identity["job_id"]


def plan_job(job: GenerateJob) -> GeneratePlan:
    """Validate the job against its registry model; raises GenerateError, writes nothing, needs no Ray.

    The identity is added by `with_environment`, once Ray tells where the faces will be rendered.
    """
    cfg = job.generate
    registry = Registry(job.registry.url)
    try:
        model = registry.show(cfg.model)
    except RegistryError as e:
        raise GenerateError(str(e)) from None
    try:
        conditions = ConditionPlan(model.conditions, cfg.conditions, cfg.balance)
    except ValueError as e:
        raise GenerateError(f"generate.conditions/balance: {e}") from None
    return GeneratePlan(
        job=job,
        registry_url=registry.url,
        model=model,
        conditions=conditions,
        layout=OutputLayout(storage.normalize_url(cfg.output), cfg.format),
        shards=shard_ranges(cfg.count, cfg.shard_size),
    )


def with_environment(plan: GeneratePlan) -> GeneratePlan:
    """The plan with its identity: the torch build and device kind a generator actor renders on are
    part of it (they can change the bytes), so they are asked of Ray, on an actor's resources."""
    import ray

    cfg = plan.job.generate
    if cfg.device == "cuda" and not ray.cluster_resources().get("GPU"):
        raise GenerateError("generate.device is 'cuda', but the Ray cluster has no GPU")
    actor_options, _ = _resources(plan)
    environment = ray.get(ray.remote(render_environment).options(**actor_options).remote(cfg.device))
    parameters = job_parameters(cfg, plan.model, environment)
    return dataclasses.replace(plan, environment=environment,
                               identity={"job_id": job_id(parameters), "parameters": parameters})


def _resources(plan: GeneratePlan) -> tuple[dict[str, Any], float]:
    """(generator actor options, CPUs per encode/write task).

    On CPU the actors get fractional CPUs that leave one CPU for encoding and writing: with whole
    CPUs, actors can take every CPU and the tasks after them never run (Ray Data then waits
    forever). A CPU actor needs at most one CPU: render_faces runs its forward pass on one thread
    (byte-identical faces whatever the batch), so more replicas, not threads, use more cores.
    Sized from the cluster as it is now, the actors always fit in it, so an autoscaling cluster
    would never grow for them: `generate.cpus_per_replica` asks for a fixed share instead.
    """
    import ray

    cfg = plan.job.generate
    cpus = ray.cluster_resources().get("CPU", 1.0)
    task_cpus = 1.0 if cpus >= 2 else 0.5
    actor_cpus = cfg.cpus_per_replica or round(min(1.0, max(cpus - task_cpus, 0.5) / cfg.replicas), 3)
    actor = {"num_cpus": actor_cpus}
    if cfg.device == "cuda":
        actor["num_gpus"] = 1
    return actor, task_cpus


def _pipeline(plan: GeneratePlan, missing: list[ShardRange], lease: OutputLease):
    import ray

    from ganray.generate.pipeline import FaceRenderer, encode_pngs, write_shard

    cfg = plan.job.generate
    actor_options, task_cpus = _resources(plan)
    items = [{"shard": s.index, "start": s.start, "stop": s.stop} for s in missing]
    return (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(
            FaceRenderer,
            fn_constructor_kwargs=dict(
                registry_url=plan.registry_url, version=plan.model.version, plan=plan.conditions,
                seed_offset=cfg.seed_offset, psi=cfg.psi, batch_size=cfg.batch_size,
                precision=cfg.precision, device=cfg.device,
                environment=plan.environment),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
            **actor_options,
        )
        .map_batches(encode_pngs, batch_size=1, batch_format="pyarrow", num_cpus=task_cpus)
        .map_batches(
            write_shard,
            fn_kwargs=dict(layout=plan.layout, plan=plan.conditions, seed_offset=cfg.seed_offset, psi=cfg.psi,
                           model_version=plan.model.version, job_id=plan.job_id,
                           superseded_url=lease.superseded_url),
            batch_size=1, batch_format="pyarrow", num_cpus=task_cpus,
        )
    )


def run_generate(job: GenerateJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a generation job to completion; returns the summary (also in summary.json)."""
    started = time.monotonic()
    plan = plan_job(job)
    init_ray(job.ray_address)
    plan = with_environment(plan)
    check_output(plan.layout, plan.identity)  # refuse another job's output before writing anything to it
    try:
        lease = OutputLease.acquire(plan.layout.url, plan.job_id, job.generate.lease_expiry_s)
    except LeaseHeld as e:
        raise GenerateError(str(e)) from None
    with lease:
        return _run_holding_lease(plan, lease, started, log)


def _run_holding_lease(plan: GeneratePlan, lease: OutputLease, started: float,
                       log: Callable[[str], None]) -> dict[str, Any]:
    cfg, layout = plan.job.generate, plan.layout
    resumed = check_output(layout, plan.identity)  # again: it may have changed before the lease was ours
    if not resumed:
        create_output(layout, plan.identity)
    done = committed_shards(layout, plan.shards, plan.job_id)
    missing = [s for s in plan.shards if s.index not in done]
    log(f"generate: job {plan.job_id}, model {cfg.model} -> {plan.model.version}, {cfg.count} faces in "
        f"{len(plan.shards)} shards -> {layout.url} ({cfg.format}); "
        + (f"resuming: {len(done)} shards already done, {len(missing)} to go" if resumed else "new output"))

    faces_written = bytes_written = 0
    pipeline_started = time.monotonic()
    if missing:
        if not console.verbose():  # our one progress line instead of Ray Data's per-operator bars
            ray.data.DataContext.get_current().enable_progress_bars = False
        line = ProgressLine("generate:", len(plan.shards), "shards", show_rate=False,
                            interval_s=cfg.progress_interval_s)
        line.update(len(done), extra="starting generator actors")
        committed_now: set[int] = set()
        for record in _pipeline(plan, missing, lease).iter_rows():
            lease.check()
            if record["shard"] in committed_now:
                continue
            committed_now.add(record["shard"])
            faces_written += record["rows"]
            bytes_written += record["bytes"]
            rate = faces_written / (time.monotonic() - pipeline_started)
            line.update(len(done) + len(committed_now), extra=f"{faces_written} faces this run, {rate:.0f} faces/s")
        line.close()
        # The shards written now were hashed as they were written: only their commits are checked.
        done = {s.index for s in plan.shards if s.index in done or storage.exists(layout.entry_url(s))}
        remove_uncommitted(layout, done)  # temporary files of writer tasks that Ray Data retried
        if len(done) != len(plan.shards):
            raise RuntimeError(f"{len(plan.shards) - len(done)} shards were not committed; re-run to finish them")
    pipeline_s = time.monotonic() - pipeline_started

    lease.check()
    manifest = write_run_manifest(layout, plan.identity, plan.shards)
    wall_s = time.monotonic() - started
    summary = {
        "job_id": plan.job_id,
        "model": cfg.model,
        "model_version": plan.model.version,
        "output": layout.url,
        "format": cfg.format,
        "faces": manifest["faces"],
        "shards": len(plan.shards),
        "bytes": manifest["bytes"],
        "resumed": resumed,
        "faces_this_run": faces_written,
        "shards_this_run": len(missing),
        "bytes_this_run": bytes_written,
        "faces_per_s": round(faces_written / pipeline_s, 1) if faces_written else None,
        "wall_s": round(wall_s, 2),
        "batch_size": cfg.batch_size,
        "replicas": cfg.replicas,
        "environment": plan.environment,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    storage.atomic_write(layout.path(SUMMARY_FILE), json_bytes(summary))
    log(f"generate: done: {summary['faces']} faces in {summary['shards']} shards, {summary['bytes'] / 1e6:.1f} MB; "
        f"this run {faces_written} faces in {wall_s:.1f} s"
        + (f" ({summary['faces_per_s']:.0f} faces/s)" if faces_written else "")
        + f"; manifest {layout.path('manifest.json')}")
    return summary
