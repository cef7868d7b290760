"""One monitoring run (`ganray monitor`): sample faces from the running API across its conditions,
compare them with the promoted version's baseline faces (ganray/lifecycle/baseline.py), write a
`monitoring` event to the registry's event log, and a `drift_alert` event (caused by it) when a
threshold is crossed.

The verdict (monitor.thresholds), any one crossed is drift:
- FID between the served faces and the baseline faces, over the baseline's noise floor (the same FID
  between sets of the promoted version's own faces, at the same count): > max_fid_ratio. Both FIDs
  are taken at one face count, so FID's sample-size bias is in both;
- KID between them minus the noise floor's: > max_kid_increase (when set);
- with a labeler, the baseline's agreement minus the served faces': > max_agreement_drop;
- the API refuses the promoted version's conditions (it serves a model with other conditions).
Which version answered is recorded (X-Model-Version), but a version change alone is no alert:
what is judged is what the faces look like.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ganray import registry_events
from ganray.config import MonitorConfig, MonitorJob
from ganray.lifecycle.api_client import APIError, FaceAPIClient
from ganray.lifecycle.baseline import Measurement, MonitorError, baseline, by_combination
from ganray.lifecycle.promoted import promoted_version
from ganray.registry import Registry, registry_url
from ganray.storage import normalize_url

MODEL = registry_events.GENERATOR
MONITORING, DRIFT_ALERT = "monitoring", "drift_alert"


@dataclass
class MonitorOutcome:
    drift: bool
    record: dict[str, Any]
    event_id: str
    alert_id: str | None = None
    crossed: list[dict[str, Any]] = field(default_factory=list)


def verdict(cfg: MonitorConfig, served: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The thresholds `served` (drift statistics) crosses against `base` (the baseline's numbers)."""
    t = cfg.thresholds
    crossed = []
    ratio = served["fid"] / base["noise_fid"] if base["noise_fid"] > 0 else float("inf")
    if ratio > t.max_fid_ratio:
        crossed.append({"metric": "fid", "value": served["fid"], "baseline": base["noise_fid"], "ratio": ratio,
                        "rule": f"FID to the baseline faces / noise floor > {t.max_fid_ratio:g}"})
    if t.max_kid_increase is not None and served["kid_mean"] - base["noise_kid"] > t.max_kid_increase:
        crossed.append({"metric": "kid_mean", "value": served["kid_mean"], "baseline": base["noise_kid"],
                        "rule": f"KID to the baseline faces - noise floor > {t.max_kid_increase:g}"})
    if "agreement" in served and base.get("agreement") is not None \
            and base["agreement"] - served["agreement"] > t.max_agreement_drop:
        crossed.append({"metric": "agreement", "value": served["agreement"], "baseline": base["agreement"],
                        "rule": f"baseline agreement - agreement > {t.max_agreement_drop:g}"})
    return crossed


def sample_seeds(count: int, seed: int | None, low: int, max_seed: int) -> list[int]:
    """`count` seeds drawn from [low, max_seed]: above the baseline's seeds, so no face is shared with them."""
    if max_seed - low + 1 < count:
        raise MonitorError(f"the API's max_seed ({max_seed}) leaves fewer than {count} seeds above the baseline's "
                           f"(< {low}): lower monitor.baseline_seed_offset or monitor.count")
    rng = np.random.default_rng(seed)
    return [int(s) for s in rng.integers(low, min(max_seed, 2**62) + 1, size=count, dtype=np.int64)]


def run_monitor(job: MonitorJob, say: Callable[[str], None] = print) -> MonitorOutcome:
    """One monitoring run; its record is in the event log before this returns."""
    cfg = job.monitor
    registry = Registry(normalize_url(registry_url(job.registry.url)))
    client = FaceAPIClient(cfg.url, cfg.api_key_env, cfg.timeout_s)
    served_model = client.model()
    if served_model.get("alias") != cfg.alias:
        raise MonitorError(f"the API at {cfg.url} serves alias {served_model.get('alias')!r}, not monitor.alias "
                           f"{cfg.alias!r}")
    if cfg.baseline:
        version, decision = registry.resolve(cfg.baseline), None
    else:
        version, decision = promoted_version(registry, cfg.alias)
    measure = Measurement(cfg, registry)
    base, base_features, rows = baseline(measure, registry, version, served_model["precision"], say)
    numbers = base["metrics"]
    limits = served_model["limits"]
    seeds = sample_seeds(cfg.count, cfg.seed, cfg.baseline_seed_offset + (cfg.noise_sets + 1) * cfg.count,
                         int(limits["max_seed"]))
    record: dict[str, Any] = {
        "alias": cfg.alias, "url": cfg.url, "baseline_version": version, "baseline_decision": decision,
        "baseline": base["name"], "baseline_metrics": numbers, "count": cfg.count, "psi": cfg.psi,
        "seed": cfg.seed, "thresholds": cfg.thresholds.model_dump(mode="json"),
    }
    crossed: list[dict[str, Any]] = []
    served_metrics, versions = None, []
    try:
        images, conditions, versions = sample(client, rows, seeds, cfg.psi, max(1, min(cfg.per_request,
                                                                                       int(limits["max_count"]))))
    except APIError as e:
        if e.status != 422:
            record.update(ok=False, error=str(e))
            registry_events.append_event(registry, MODEL, MONITORING, record, version=version)
            raise
        # The served model refuses the promoted version's conditions: it is another model.
        crossed.append({"metric": "conditions", "value": str(e), "baseline": base["key"]["conditions"],
                        "rule": "the API renders the promoted version's conditions"})
    else:
        resolution = registry.show(version).resolution
        if images.shape[1:3] != (resolution, resolution):
            crossed.append({"metric": "resolution", "value": int(images.shape[1]), "baseline": resolution,
                            "rule": "the API renders the promoted version's resolution"})
        else:
            served_metrics = measure.compare(base_features, measure.features(images))
            served_metrics["fid_ratio"] = served_metrics["fid"] / numbers["noise_fid"] if numbers["noise_fid"] else None
            if measure.labeler is not None:
                served_metrics.update(measure.agreement(images, conditions))
            crossed += verdict(cfg, served_metrics, numbers)
    counts = {v: versions.count(v) for v in sorted(set(versions))}
    record.update(ok=not crossed, served_versions=counts, metrics=served_metrics, crossed=crossed)
    served_version = next(iter(counts)) if len(counts) == 1 else None
    event_id = registry_events.append_event(registry, MODEL, MONITORING, record, version=served_version)
    outcome = MonitorOutcome(bool(crossed), record, event_id, crossed=crossed)
    if crossed:
        outcome.alert_id = registry_events.append_event(
            registry, MODEL, DRIFT_ALERT,
            {"alias": cfg.alias, "url": cfg.url, "served_versions": counts, "baseline_version": version,
             "crossed": crossed, "monitoring": event_id},
            cause=event_id, version=served_version)
    return outcome


def sample(client: FaceAPIClient, rows: list[dict[str, str]], seeds: list[int], psi: float, per_request: int):
    """The API's faces for (conditions, seed) rows, in row order: (images, conditions, versions)."""
    images: np.ndarray | None = None
    conditions: list[dict[str, str]] = [{} for _ in rows]
    versions = [""] * len(rows)
    for idx in by_combination(rows):
        served = client.faces([seeds[i] for i in idx], rows[idx[0]], psi, per_request)
        if images is None:
            images = np.empty((len(rows), *served.images.shape[1:]), dtype=np.uint8)
        if served.images.shape[1:] != images.shape[1:]:
            raise APIError(f"{client.url}: faces of two sizes in one run ({served.images.shape[1:]} and "
                           f"{images.shape[1:]}): the model was reloaded mid-run; run again")
        images[idx] = served.images
        for j, i in enumerate(idx):
            conditions[i], versions[i] = served.conditions[j], served.versions[j]
    return images, conditions, versions


def describe(outcome: MonitorOutcome) -> str:
    record = outcome.record
    served = ", ".join(f"{v} ({n} faces)" for v, n in record["served_versions"].items()) or "nothing"
    metrics, base = record["metrics"], record["baseline_metrics"]
    numbers = "no faces measured" if metrics is None else (
        f"FID to the baseline faces {metrics['fid']:.4g} = {metrics['fid_ratio']:.3g} x its noise floor "
        f"{base['noise_fid']:.4g}, KID {metrics['kid_mean']:.3g}"
        + (f", agreement {metrics['agreement']:.3f} (baseline {base['agreement']:.3f})" if "agreement" in metrics else ""))
    return (f"{record['alias']} served {served}; baseline {record['baseline_version']}: {numbers}; "
            f"{'DRIFT' if outcome.drift else 'ok'} (event {outcome.event_id})")


def alert_line(outcome: MonitorOutcome) -> str:
    reasons = "; ".join(f"{c['metric']}: {c['rule']} ({_fmt(c['value'])} vs {_fmt(c['baseline'])})"
                        for c in outcome.crossed)
    return f"ganray monitor: DRIFT ALERT {outcome.alert_id}: {outcome.record['alias']} at {outcome.record['url']}: {reasons}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
