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
import json
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
    keep_existing_layout,
    output_parameters,
    remove_uncommitted,
    write_run_manifest,
)
from ganray.generate.closedloop import ClosedLoopPlan, target_shares
from ganray.generate.lease import LeaseHeld, OutputLease
from ganray.generate.webdataset_shards import class_source
from ganray.generate.placement import GPUWaitTimeout, StageResources, pinned_kind, run_on_gpu, stage_resources
from ganray.generate.plan import (
    LABELS_LAYOUT,
    ConditionPlan,
    ShardRange,
    job_id,
    job_parameters,
    render_environment,
    shard_ranges,
    style_mix,
)
from ganray.models import style_count
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
    # Labels (None: the faces carry only their conditions, as before labelers existed):
    # {"label_attributes", "quality", "closed_loop", "labeler" (its identity)}.
    labeling: dict[str, Any] | None = None
    closed: ClosedLoopPlan | None = None  # closed-loop quotas (then `shards` are its shards)
    accelerator_type: str | None = None  # the GPU kind every GPU stage is pinned to (placement.py)

    @property
    def job_id(self) -> str:
        return self.identity["job_id"]


def plan_job(job: GenerateJob) -> GeneratePlan:
    """Validate the job against its registry model; raises GenerateError, writes nothing, needs no Ray.

    The identity is added by `with_environment`, once Ray tells where the faces will be rendered.
    """
    cfg = job.generate
    registry = Registry(job.registry.url)
    # Credentials, buckets and the endpoint checked before anything (StorageAccessError, exit 2).
    storage.check_reachable(registry.url, "registry.url")
    storage.check_reachable(storage.normalize_url(cfg.output), "generate.output")
    try:
        model = registry.show(cfg.model)
    except RegistryError as e:
        raise GenerateError(str(e)) from None
    try:
        conditions = ConditionPlan(model.conditions, cfg.conditions, cfg.balance)
    except ValueError as e:
        raise GenerateError(f"generate.conditions/balance: {e}") from None
    labeling, closed = _plan_labels(cfg, model, registry.url)
    if cfg.class_attribute is not None:  # GenerateError unless the attribute has names to index
        class_source(cfg.class_attribute, model.conditions, (labeling or {}).get("label_values") or {})
    if cfg.crossover is not None:
        _check_style_mix(cfg.crossover, model)
    shards = list(closed.shards) if closed is not None else shard_ranges(cfg.count, cfg.shard_size)
    return GeneratePlan(
        job=job,
        registry_url=registry.url,
        model=model,
        conditions=conditions,
        layout=OutputLayout(storage.normalize_url(cfg.output), cfg.format, class_attribute=cfg.class_attribute,
                            shard_count=len(shards)),
        shards=shards,
        labeling=labeling,
        closed=closed,
    )


class QuotaNotMet(RuntimeError):
    """A closed-loop stratum ran out of attempts under on_budget_exhausted 'error' (CLI exit 1)."""


def _plan_labels(cfg, model: VersionInfo, registry_url: str) -> tuple[dict[str, Any] | None, ClosedLoopPlan | None]:
    """Build the labeler and gate once here (so a bad one fails before any work) and fix the strata."""
    if cfg.labeler is None and cfg.quality is None and cfg.closed_loop is None:
        return None, None
    from ganray.labels import LabelerError, build_labeler
    from ganray.labels.histograms import training_joint_counts
    from ganray.labels.quality import QualityGate

    labeler_cfg = cfg.labeler
    if labeler_cfg is None and cfg.closed_loop is not None:
        from ganray.config import LabelerConfig

        labeler_cfg = LabelerConfig()  # the conditions labeler: the gate alone decides
    identity: dict[str, Any] | None = None
    values: dict[str, list[str]] = {}
    if labeler_cfg is not None:
        try:
            # On the driver's CPU: the head of a GPU cluster has no GPU; the actors run it on its device.
            labeler = build_labeler(labeler_cfg.model_copy(update={"device": "cpu"}), registry_url)
        except (LabelerError, ValueError) as e:
            raise GenerateError(f"generate.labeler: {e}") from None
        if labeler_cfg.name == "conditions":
            values = dict(model.conditions)
        else:
            values = {name: list(getattr(labeler, "values", {}).get(name, [])) for name in labeler.attributes}
        identity = {**labeler_cfg.model_dump(),
                    **{k: getattr(labeler, k) for k in ("version", "content_hash") if hasattr(labeler, k)}}
    if cfg.quality is not None:
        try:
            QualityGate(cfg.quality)
        except ValueError as e:
            raise GenerateError(f"generate.quality: {e}") from None
    labeling = {"label_attributes": list(values), "label_values": values, "quality": cfg.quality is not None,
                "closed_loop": cfg.closed_loop is not None, "labeler": identity}
    if cfg.closed_loop is None:
        return labeling, None

    loop = cfg.closed_loop
    labeler_name = labeler_cfg.name
    strata_values: dict[str, list[str]] = {}
    for name in loop.strata:
        if name not in values:
            raise GenerateError(
                f"generate.closed_loop.strata: the {labeler_name!r} labeler cannot label attribute {name!r}: it "
                f"labels {list(values)}" + (" (the conditions labeler labels only what a conditional model is asked "
                                           "for)" if labeler_name == "conditions" else ""))
        strata_values[name] = list(model.conditions.get(name) or values[name])
        cannot = [v for v in strata_values[name] if values[name] and v not in values[name]]
        if cannot:
            raise GenerateError(f"generate.closed_loop.strata: the {labeler_name!r} labeler never gives {name} "
                                f"{cannot} (it gives {values[name]}): those strata could never be filled")
    training = None
    if loop.target == "training_set":
        try:
            training = training_joint_counts(model.provenance, loop.strata)
        except (ValueError, OSError) as e:
            raise GenerateError(f"generate.closed_loop.target 'training_set': {e}") from None
    try:
        from ganray.generate.closedloop import label_thresholds, strata_of

        shares = target_shares(loop, strata_of(strata_values, loop.strata), training)
        closed = ClosedLoopPlan.build(loop, strata_values, shares, cfg.count, cfg.shard_size, cfg.seed_offset,
                                      label_thresholds(loop, labeler_cfg, registry_url, strata_values))
    except ValueError as e:
        raise GenerateError(f"generate.closed_loop: {e}") from None
    return labeling, closed


def _check_style_mix(crossover: int, model: VersionInfo) -> None:
    """A mixing job needs a style-based model and a crossover within its styles (known from its config)."""
    num_ws = style_count(model.model, model.resolution)
    if num_ws is None:
        raise GenerateError(f"generate.mix_seed_offset/crossover: style mixing needs a style-based model "
                            f"(model.arch stylegan2); {model.version} is a {model.model.get('arch')} "
                            "with a single latent input")
    if crossover > num_ws:
        raise GenerateError(f"generate.crossover must be a w index from 0 to {num_ws} (the number of styles of "
                            f"{model.version}, {model.resolution} px), got {crossover}")


def with_environment(plan: GeneratePlan, log: Callable[[str], None] = print) -> GeneratePlan:
    """The plan with its identity: the torch build and device kind a generator actor renders on are
    part of it (they can change the bytes), so they are asked of Ray, on an actor's resources. A stage
    on cuda waits for its GPU (an autoscaling cluster starts one) and fixes the GPU kind of the job."""
    import ray

    cfg = plan.job.generate
    stages = _resources(plan, pinned_kind(cfg))
    kind = None
    try:
        if stages.generator.get("num_gpus"):
            environment, kind = run_on_gpu(render_environment, (cfg.device, cfg.precision), stages.generator,
                                           cfg.gpu_wait_s, log)
        else:
            environment = ray.get(ray.remote(render_environment).options(**stages.generator).remote(
                cfg.device, cfg.precision))
            if stages.labeler is not None and stages.labeler.get("num_gpus"):
                _, kind = run_on_gpu(_no_op, (), stages.labeler, cfg.gpu_wait_s, log)
    except GPUWaitTimeout as e:
        raise GenerateError(str(e)) from None
    if cfg.accelerator_type != "auto":
        kind = cfg.accelerator_type
    if stages.gpu_stages():
        log(f"generate: GPU stages pinned to accelerator_type {kind}" if kind else
            "generate: GPU stages not pinned to a GPU kind (the node declares none; generate.accelerator_type)")
    parameters = job_parameters(cfg, plan.model, environment)
    if plan.labeling is not None:  # only then: the identity of a job without labels is unchanged
        parameters["labels_layout"] = LABELS_LAYOUT
        parameters["labeler"] = plan.labeling["labeler"]
        parameters["quality"] = cfg.quality.model_dump() if cfg.quality is not None else None
        parameters["closed_loop"] = plan.closed.identity() if plan.closed is not None else None
    parameters.update(output_parameters(plan.layout))
    return dataclasses.replace(plan, environment=environment, accelerator_type=kind,
                               identity={"job_id": job_id(parameters), "parameters": parameters})


def _no_op() -> None:
    return None


def _resources(plan: GeneratePlan, accelerator_type: str | None) -> StageResources:
    """Every stage's Ray options (ganray/generate/placement.py), on the cluster's CPUs as they are now."""
    import ray

    return stage_resources(plan.job.generate, ray.cluster_resources().get("CPU", 1.0),
                           labeled=plan.labeling is not None, closed_loop=plan.closed is not None,
                           accelerator_type=accelerator_type)


def _closed_loop_items(plan: GeneratePlan, missing: list[ShardRange]) -> list[dict[str, Any]]:
    """One item per stratum with a missing shard: where its walk over candidates starts again.

    The walk restarts at the stratum's first missing shard, from the attempt after the last one its
    committed predecessor used (recorded in that shard's entry); the missing shards after it are
    found again on the way (the committed ones in between are recomputed, not rewritten).
    """
    missing_ids = {s.index for s in missing}
    items = []
    for s in range(len(plan.closed.strata)):
        parts = plan.closed.parts(s)
        first = next((p for p, shard in enumerate(parts) if shard.index in missing_ids), None)
        if first is None:
            continue
        start_attempt = 0
        if first > 0:
            entry = json.loads(storage.read_bytes(plan.layout.entry_url(parts[first - 1])))
            start_attempt = int(entry["verdicts"]["attempts"][1])
        items.append({"stratum": s, "start_part": first, "start_attempt": start_attempt,
                      "missing": json.dumps(sorted(shard.index for shard in parts if shard.index in missing_ids))})
    return items


def _pipeline(plan: GeneratePlan, missing: list[ShardRange], lease: OutputLease):
    import ray

    from ganray.generate.pipeline import FaceLabeler, FaceRenderer, StratumSearcher, encode_pngs, write_shard

    cfg = plan.job.generate
    stages = _resources(plan, plan.accelerator_type)
    actor_options, task_cpus = stages.generator, stages.task_cpus
    verifier_args = dict(labeler=cfg.labeler if cfg.labeler is not None or plan.closed is None else
                         _default_labeler(), quality=cfg.quality, registry_url=plan.registry_url,
                         label_attributes=plan.labeling["label_attributes"]) if plan.labeling else {}
    if plan.closed is not None:
        items = _closed_loop_items(plan, missing)
        faces = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
            StratumSearcher,
            fn_constructor_kwargs=dict(
                registry_url=plan.registry_url, version=plan.model.version, plan=plan.conditions, closed=plan.closed,
                psi=cfg.psi, batch_size=cfg.batch_size, precision=cfg.precision, device=cfg.device,
                environment=plan.environment, **{k: v for k, v in verifier_args.items() if k != "registry_url"}),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
            **actor_options,
        )
    else:
        items = [{"shard": s.index, "start": s.start, "stop": s.stop} for s in missing]
        faces = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            FaceRenderer,
            fn_constructor_kwargs=dict(
                registry_url=plan.registry_url, version=plan.model.version, plan=plan.conditions,
                seed_offset=cfg.seed_offset, psi=cfg.psi, mix=style_mix(cfg), batch_size=cfg.batch_size,
                precision=cfg.precision, device=cfg.device,
                environment=plan.environment),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
            **actor_options,
        )
        if plan.labeling is not None:  # the label stage: its own actor pool
            faces = faces.map_batches(
                FaceLabeler,
                fn_constructor_kwargs=dict(plan=plan.conditions, seed_offset=cfg.seed_offset, **verifier_args),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
                **stages.labeler,
            )
    return (
        faces
        .map_batches(encode_pngs, batch_size=1, batch_format="pyarrow", num_cpus=task_cpus)
        .map_batches(
            write_shard,
            fn_kwargs=dict(layout=plan.layout, plan=plan.conditions, seed_offset=cfg.seed_offset, psi=cfg.psi,
                           mix=style_mix(cfg),
                           model_version=plan.model.version, job_id=plan.job_id,
                           superseded_url=lease.superseded_url, labeling=plan.labeling),
            batch_size=1, batch_format="pyarrow", num_cpus=task_cpus,
        )
    )


def _default_labeler():
    from ganray.config import LabelerConfig

    return LabelerConfig()


def run_generate(job: GenerateJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a generation job to completion; returns the summary (also in summary.json)."""
    started = time.monotonic()
    plan = plan_job(job)
    init_ray(job.ray_address)
    plan = with_environment(plan, log)
    layout, identity = keep_existing_layout(plan.layout, plan.identity)  # an older output keeps its layout
    plan = dataclasses.replace(plan, layout=layout, identity=identity)
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
        short: dict[int, dict[str, Any]] = {}
        for record in _pipeline(plan, missing, lease).iter_rows():
            lease.check()
            if record["short"]:  # a stratum out of attempts under on_budget_exhausted 'error': not written
                short[record["shard"]] = json.loads(record["short"])
                continue
            if record["shard"] in committed_now:
                continue
            committed_now.add(record["shard"])
            faces_written += record["rows"]
            bytes_written += record["bytes"]
            rate = faces_written / (time.monotonic() - pipeline_started)
            line.update(len(done) + len(committed_now), extra=f"{faces_written} faces this run, {rate:.0f} faces/s")
        line.close()
        if short:
            raise QuotaNotMet(_quota_message(plan, short.values()))
        # The shards written now were hashed as they were written: only their commits are checked.
        done = {s.index for s in plan.shards if s.index in done or storage.exists(layout.entry_url(s))}
        remove_uncommitted(layout, done)  # temporary files of writer tasks that Ray Data retried
        if len(done) != len(plan.shards):
            raise RuntimeError(f"{len(plan.shards) - len(done)} shards were not committed; re-run to finish them")
    pipeline_s = time.monotonic() - pipeline_started

    lease.check()
    # The training data version of the model (a fact of the model, so re-runs write the same bytes):
    # what `ganray lineage OUT` follows back, with the registry named in the summary.
    data_version = (plan.model.provenance.get("data_version") or {}).get("version")
    manifest = write_run_manifest(layout, {**plan.identity, "lineage": {"data_version": data_version}}, plan.shards)
    from ganray.generate.report import write_balance_report

    report = write_balance_report(layout.url, plan.model.conditions, registry_url=plan.registry_url)
    wall_s = time.monotonic() - started
    cluster = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    summary = {
        "job_id": plan.job_id,
        "model": cfg.model,
        "model_version": plan.model.version,
        "registry": plan.registry_url,
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
        "pipeline_s": round(pipeline_s, 2),
        # The card's cost: the cluster's CPUs and GPUs for the pipeline's wall time (an upper bound).
        "cluster": cluster,
        "cpu_seconds": round(cluster.get("CPU", 0.0) * pipeline_s, 1),
        "gpu_seconds": round(cluster.get("GPU", 0.0) * pipeline_s, 1),
        "batch_size": cfg.batch_size,
        "replicas": cfg.replicas,
        "environment": plan.environment,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "balance": {"max_abs_deviation": report["total"]["max_abs_deviation"],
                    "short_strata": report["total"].get("short_strata", [])},
    }
    storage.atomic_write(layout.path(SUMMARY_FILE), json_bytes(summary))
    from ganray.generate.card import write_card

    write_card(layout.url, plan.registry_url)
    log(f"generate: done: {summary['faces']} faces in {summary['shards']} shards, {summary['bytes'] / 1e6:.1f} MB; "
        f"this run {faces_written} faces in {wall_s:.1f} s"
        + (f" ({summary['faces_per_s']:.0f} faces/s)" if faces_written else "")
        + f"; manifest {layout.path('manifest.json')}")
    return summary


def _quota_message(plan: GeneratePlan, shorts) -> str:
    lines = []
    for meta in sorted(shorts, key=lambda m: m["stratum"]):
        s = [plan.closed.name(i) for i in range(len(plan.closed.strata))].index(meta["stratum"])
        lines.append(f"stratum {meta['stratum']}: quota {plan.closed.quotas[s]}, the attempt budget of "
                     f"{plan.closed.budgets[s]} candidates ran out")
    return ("closed loop: " + "; ".join(lines) + ". No manifest was written. Raise "
            "generate.closed_loop.max_attempts_per_face, use a labeler/gate the model's faces pass more often, or "
            "set generate.closed_loop.on_budget_exhausted: partial (each with another output folder)")
