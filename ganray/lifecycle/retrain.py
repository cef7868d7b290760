"""`ganray retrain`: train again from the run config of the version an alias was promoted to through
its gate, on new data or because of a drift alert; evaluate the new version the way the gate's
evaluation of that version was measured; promote it only through the gate (ganray/eval/gate.py).

Every step is a `retrain` event in the registry's event log, each caused by the one before, the first
by the drift alert it answers (`retrain.cause`) when there is one, so a promotion (or a refusal)
ties back to why the retraining happened:

    started (cause: the drift alert, or none) -> trained (the new version) -> evaluated -> promoted | stopped

A step that fails records `stopped` with the error before the error goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ganray import registry_events, storage
from ganray.config import EvalJob, RetrainJob, TrainJob, load_config
from ganray.data.manifest import read_manifest
from ganray.eval import gate
from ganray.eval.job import run_evaluation
from ganray.lifecycle.promoted import promoted_version
from ganray.registry import Registry, RegistryError, registry_url
from ganray.storage import normalize_url
from ganray.train.publish import push_run
from ganray.train.trainer import run_training, storage_root

MODEL = registry_events.GENERATOR
RETRAIN = "retrain"
# A drift alert is the cause retraining answers; a monitoring record or a data version may be one too.
CAUSE_KINDS = ("drift_alert", "monitoring", "data_version")


class RetrainError(ValueError):
    """A retraining that cannot start as asked (unknown cause, a version without a run config...)."""


@dataclass
class RetrainPlan:
    alias: str
    from_version: str
    cause: dict[str, Any] | None
    train_job: TrainJob
    eval_job: EvalJob
    init_generator: dict | None = None  # retrain.warm_start: the promoted version's generator weights


@dataclass
class RetrainOutcome:
    promoted: bool
    version: str | None
    decision: gate.Decision | None
    events: list[str]
    reason: str


def _cause(registry: Registry, cause_id: str | None) -> dict[str, Any] | None:
    if cause_id is None:
        return None
    try:
        found = registry_events.event(registry, cause_id)
    except registry_events.EventLogError as e:
        raise RetrainError(f"retrain.cause: {e}") from None
    if found is None:
        raise RetrainError(f"retrain.cause: no event {cause_id!r} in {registry.url}")
    if found.get("kind") not in CAUSE_KINDS:
        raise RetrainError(f"retrain.cause: {cause_id} is a {found.get('kind')!r} event; a retraining answers one "
                           f"of {', '.join(CAUSE_KINDS)}")
    return found


def eval_settings(result: dict[str, Any] | None, version: str, name: str) -> dict[str, Any]:
    """The EvalJob `eval:` section that measures a new version as `result` (a recorded evaluation) was measured."""
    if not result or "comparable" not in result:
        raise RetrainError(f"{version} has no {name!r} evaluation to measure the new version the same way: "
                           f"evaluate it (`ganray eval --set eval.model={version}`) or give retrain.eval_overrides "
                           "naming eval.reference")
    comparable = result["comparable"]
    identity = comparable["extractor"]
    extractor: dict[str, Any] = {"name": identity["name"]}
    if identity["name"] == "pixels":
        extractor.update(resize=identity["resize"], pixels_side=identity["pixels_side"])
    elif identity["name"] == "classifier":
        extractor.update(labeler=identity["labeler_version"])
    else:
        raise RetrainError(f"{version}'s {name!r} evaluation used {identity['name']}, whose weights file is not "
                           "recorded with it: give retrain.eval_overrides with eval.extractor.weights and "
                           "eval.extractor.weights_sha256")
    size, subsets = comparable["kid"]
    return {"reference": result["reference"], "count": comparable["count"],
            "reference_count": comparable["reference_count"], "psi": comparable["psi"] if comparable["psi"] is not None
            else 1.0, "seed_offset": result.get("seed_offset") or 0, "kid_subset_size": size, "kid_subsets": subsets,
            "pr_k": comparable["pr_k"], "extractor": extractor, "memorization": {"enabled": False}}


def _data_location(data: str) -> str:
    """retrain.data as the folder to train on: an imported dataset's folder, or a data version id
    (looked up in the data catalog; refused when another import has replaced it since)."""
    from ganray.data import versions

    if not storage.exists(normalize_url(data)) and versions.looks_like_version(data):
        try:
            record = versions.find_version(data, versions.default_catalog())
        except versions.DataVersionError as e:
            raise RetrainError(f"retrain.data: {e}") from None
        manifest = read_manifest(record["location"])
        if manifest is None or versions.version_of(manifest) != record["version"]:
            raise RetrainError(f"retrain.data: data version {record['version']} is no longer at {record['location']} "
                               "(another import replaced it); import it again or name the folder")
        return normalize_url(record["location"])
    if read_manifest(normalize_url(data)) is None:
        raise RetrainError(f"retrain.data: {data} is not an imported dataset (no ganray manifest.json) nor a data "
                           "version of the catalog; make one with `ganray data import`")
    return normalize_url(data)


def plan_retrain(job: RetrainJob, registry: Registry) -> RetrainPlan:
    """Check everything and build the train and eval jobs, before any Ray work or event."""
    cfg = job.retrain
    cause = _cause(registry, cfg.cause)
    if cause is not None and cause.get("kind") == "drift_alert" and cause["payload"].get("alias") != cfg.alias:
        raise RetrainError(f"retrain.cause: {cfg.cause} is a drift alert for alias {cause['payload'].get('alias')!r}, "
                           f"not retrain.alias {cfg.alias!r}")
    from_version, _ = promoted_version(registry, cfg.alias)
    info = registry.show(from_version)
    train_config = info.provenance.get("train_config")
    if not isinstance(train_config, dict):
        raise RetrainError(f"{from_version} (promoted to {cfg.alias!r}) has no run config in its provenance: it was "
                           "not pushed from a training run (`ganray registry push --from-run`)")
    run_name = cfg.run_name or f"retrain-{from_version}-{time.strftime('%Y%m%dT%H%M%S')}"
    overrides = [f"run.name={run_name}",
                 "eval.every_images=null"]
    storage_path = cfg.storage_path or info.provenance.get("storage_path")
    if storage_path:
        overrides.append(f"run.storage_path={storage_path}")
    if cfg.data:
        overrides += ["data.source=shards", f"data.url={_data_location(cfg.data)}"]
    if job.ray_address:
        overrides.append(f"ray_address={job.ray_address}")
    train_job = load_config(TrainJob, base=train_config, overrides=overrides + list(cfg.train_overrides))
    gate_cfg = gate.gate_of(registry, cfg.alias)
    name = (gate_cfg or {}).get("evaluation", gate.DEFAULT_EVALUATION)
    output = storage.join(normalize_url(train_job.run.storage_path), train_job.run.name, "retrain-eval.json")
    settings = {} if cfg.eval_overrides and any(o.startswith("eval.reference=") for o in cfg.eval_overrides) \
        else eval_settings(registry.evaluation(from_version, name), from_version, name)
    eval_job = load_config(EvalJob, base={"ray_address": job.ray_address, "registry": {"url": registry.url},
                                          "eval": {**settings, "model": from_version, "record_as": name,
                                                   "output": output}},
                           overrides=list(cfg.eval_overrides))
    return RetrainPlan(cfg.alias, from_version, cause, train_job, eval_job,
                       _warm_start(registry, from_version, train_job) if cfg.warm_start else None)


def _warm_start(registry: Registry, version: str, train_job: TrainJob) -> dict:
    """The promoted version's generator weights, checked to fit the new run's generator (its model
    config and the new data's attributes) before any Ray work."""
    from ganray.data.dataset import dataset_attributes
    from ganray.models import build_generator

    state = registry.load_generator(version).generator.state_dict()
    attributes = dataset_attributes(train_job.data)
    generator = build_generator(train_job.model, train_job.data.resolution,
                                attributes if train_job.model.conditional else None)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RetrainError(f"retrain.warm_start: {version}'s weights do not fit the new run's generator (its model "
                           f"config or the new data's attributes differ): {str(e).splitlines()[0]}") from None
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def run_retrain(job: RetrainJob, say: Callable[[str], None] = print) -> RetrainOutcome:
    """Train, evaluate, promote through the gate; every step an event. Returns what happened."""
    registry = Registry(normalize_url(registry_url(job.registry.url)))
    plan = plan_retrain(job, registry)
    cfg = job.retrain
    trail: list[str] = []

    def step(name: str, payload: dict[str, Any], version: str | None = None) -> str:
        cause = trail[-1] if trail else (plan.cause["id"] if plan.cause else None)
        trail.append(registry_events.append_event(registry, MODEL, RETRAIN, {"alias": plan.alias, **payload,
                                                                             "step": name}, cause=cause, version=version))
        return trail[-1]

    step("started", {"from_version": plan.from_version, "data": plan.train_job.data.model_dump(mode="json"),
                     "run_name": plan.train_job.run.name, "warm_start": cfg.warm_start,
                     "storage_path": storage_root(plan.train_job),
                     "reason": "drift alert" if plan.cause and plan.cause["kind"] == "drift_alert" else
                     ("new data" if cfg.data else plan.cause["kind"] if plan.cause else "requested")},
         version=plan.from_version)
    version = None
    try:
        outcome = run_training(plan.train_job, init_generator=plan.init_generator)
        version = push_run(registry, storage_root(plan.train_job), plan.train_job.run.name, cause=trail[-1])
        step("trained", {"run_name": plan.train_job.run.name, "checkpoint": outcome.checkpoint,
                         "steps": outcome.step}, version=version)
        say(f"trained {plan.train_job.run.name} to step {outcome.step}: {version}")
        results = evaluate(registry, plan, version, say)
        step("evaluated", results, version=version)
        decision = gate.promote(registry, version, plan.alias)
    except Exception as e:
        step("stopped", {"error": f"{type(e).__name__}: {e}"}, version=version)
        raise
    moved = decision.moved
    step("promoted" if moved else "stopped", {"decision": decision.decision_id, "outcome": decision.outcome,
                                              "reason": decision.reason, "holder": decision.holder}, version=version)
    return RetrainOutcome(moved, version, decision, trail, decision.reason)


def evaluate(registry: Registry, plan: RetrainPlan, version: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The new version's evaluation; the alias holder's too when it has none under the gate's name (a version
    moved there without the gate), so the gate compares two versions measured the same way."""
    name = plan.eval_job.eval.record_as
    cfg = plan.eval_job.eval
    candidate = run_evaluation(plan.eval_job.model_copy(update={"eval": cfg.model_copy(update={"model": version})}))
    out = {"evaluation": name, "metrics": candidate["metrics"], "comparable": candidate["comparable"]}
    holder = registry.aliases().get(plan.alias)
    if holder and holder != version and registry.evaluation(holder, name) is None:
        say(f"the holder of {plan.alias!r}, {holder}, has no {name!r} evaluation: evaluating it the same way")
        output = cfg.output.removesuffix(".json") + f"-holder-{holder}.json"
        held = run_evaluation(plan.eval_job.model_copy(update={"eval": cfg.model_copy(update={
            "model": holder, "output": output})}))
        out["holder"] = {"version": holder, "metrics": held["metrics"]}
    return out
