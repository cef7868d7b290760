"""What a monitoring run compares the served faces with: the promoted version's own faces, rendered
offline from its weights, and its stored baseline numbers.

The baseline faces are `count` faces of the promoted version with fixed seeds (baseline_seed_offset
+ i), spread evenly over every combination of the model's conditions (face i gets combination
i mod C), rendered at the precision the API reports. They are a pure function of the version's
weights, so each run renders them again rather than storing pixels or features.

The stored part is the baseline's numbers, in the registry as an evaluation of that version named
`monitor-<key>` (the key: a hash of everything they depend on: extractor identity, face count, psi,
precision, conditions plan, labeler), computed by the first monitoring run that needs them:
- the noise floor: the FID (and KID) between the baseline faces and `noise_sets` other sets of the
  same version's faces (the next seeds), i.e. what the drift FID measures when nothing changed;
- with a labeler, the share of the baseline faces whose labels agree with their conditions.
A bad reload already serving when the baseline is first needed cannot become the baseline: the
baseline comes from the weights of the version promoted through the gate, never from the API.
"""
from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ganray import storage
from ganray.config import ExtractorConfig, MonitorConfig
from ganray.eval import metrics
from ganray.eval.extractors import build_extractor, extractor_identity
from ganray.labels.base import Labeler, build_labeler
from ganray.models.face import labels_for_conditions, render_faces
from ganray.registry import LabelerRegistry, Registry

BASELINE_FORMAT = 1
BASELINE_PREFIX = "monitor-"


class MonitorError(ValueError):
    """A monitoring run that cannot measure as asked (a labeler that labels nothing, a size mismatch...)."""


def combinations(conditions: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the model's condition values ([{}] for an unconditional model)."""
    names = list(conditions)
    return [dict(zip(names, values)) for values in itertools.product(*(conditions[n] for n in names))]


def plan(count: int, conditions: dict[str, list[str]]) -> list[dict[str, str]]:
    """Face i's conditions: combination i mod C, so every combination gets count/C faces (+1 for some)."""
    combos = combinations(conditions)
    return [combos[i % len(combos)] for i in range(count)]


def by_combination(rows: list[dict[str, str]]) -> list[list[int]]:
    """Face indices grouped by their conditions, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(json.dumps(row, sort_keys=True), []).append(i)
    return list(groups.values())


def pinned_extractor(cfg: ExtractorConfig, registry_url: str) -> ExtractorConfig:
    """A classifier extractor's labeler pinned to a version id: an alias that moves cannot mix two feature
    spaces between the baseline and a later run."""
    if cfg.name != "classifier":
        return cfg
    where = cfg.labeler_registry or registry_url
    return cfg.model_copy(update={"labeler_registry": where, "labeler": LabelerRegistry(where).resolve(cfg.labeler)})


class Measurement:
    """The one way both sides are measured: features (FID/KID) and labeler agreement."""

    def __init__(self, cfg: MonitorConfig, registry: Registry):
        self.cfg = cfg
        self.extractor_cfg = pinned_extractor(cfg.extractor, registry.url)
        self.extractor = build_extractor(self.extractor_cfg.model_copy(update={"device": "cpu"}))
        self.labeler = build_labeler(cfg.labeler, registry.url) if cfg.labeler is not None else None

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.extractor(images)["features"]

    def labeler_identity(self) -> dict[str, Any] | None:
        if self.labeler is None:
            return None
        return {"name": self.labeler.cfg.name, "version": getattr(self.labeler, "version", None),
                "content_hash": getattr(self.labeler, "content_hash", None)}

    def agreement(self, images: np.ndarray, conditions: list[dict[str, str]]) -> dict[str, Any]:
        """Share of (face, attribute) pairs whose label is the condition the face was rendered with."""
        shared = [name for name in self.labeler.attributes if all(name in row for row in conditions)]
        if not shared:
            raise MonitorError(f"monitor.labeler labels {list(self.labeler.attributes)}, none of which the model "
                               f"conditions on ({sorted(conditions[0]) if conditions else []}): nothing to agree on")
        labels = self.labeler.label(images, conditions)
        by_attribute = {name: float(np.mean([v == row[name] for v, row in zip(labels[name].values, conditions)]))
                        for name in shared}
        return {"agreement": float(np.mean(list(by_attribute.values()))), "agreement_by_attribute": by_attribute}

    def compare(self, baseline_features: np.ndarray, features: np.ndarray) -> dict[str, float]:
        """FID and KID between two sets of faces (the drift statistics)."""
        kid = metrics.kid(baseline_features, features, self.cfg.kid_subset_size, self.cfg.kid_subsets)
        return {"fid": metrics.fid(baseline_features, features), "kid_mean": kid["kid_mean"], "kid_std": kid["kid_std"]}

    def key(self, version: str, content_hash: str, conditions: dict[str, list[str]], precision: str) -> dict[str, Any]:
        """Everything the baseline's numbers depend on (a change names another baseline)."""
        cfg = self.cfg
        identity = {k: v for k, v in extractor_identity(self.extractor_cfg).items() if k != "note"}
        return {"format": BASELINE_FORMAT, "version": version, "content_hash": content_hash, "extractor": identity,
                "count": cfg.count, "psi": cfg.psi, "precision": precision, "seed_offset": cfg.baseline_seed_offset,
                "noise_sets": cfg.noise_sets, "conditions": conditions, "kid": [cfg.kid_subset_size, cfg.kid_subsets],
                "labeler": self.labeler_identity()}


def render_plan(generator, rows: list[dict[str, str]], seeds: list[int], psi: float, precision: str) -> np.ndarray:
    """Faces for (seed, conditions) rows, in row order: one render call per combination."""
    images = None
    for idx in by_combination(rows):
        rendered = render_faces(generator, [seeds[i] for i in idx], psi,
                                labels_for_conditions(generator, rows[idx[0]], len(idx)), precision)
        if images is None:
            images = np.empty((len(rows), *rendered.shape[1:]), dtype=np.uint8)
        images[idx] = rendered
    return images


def baseline_name(key: dict[str, Any]) -> str:
    return BASELINE_PREFIX + storage.sha256_hex(json.dumps(key, sort_keys=True).encode())[:16]


def baseline(measure: Measurement, registry: Registry, version: str, precision: str,
             say=lambda line: None) -> tuple[dict[str, Any], np.ndarray, list[dict[str, str]]]:
    """(the stored baseline of `version` for these settings, its faces' features, their conditions);
    the baseline's numbers are computed and stored when the registry has none for these settings."""
    cfg = measure.cfg
    info = registry.show(version)
    key = measure.key(version, info.content_hash, info.conditions, precision)
    name = baseline_name(key)
    generator = registry.load_generator(version).generator
    rows = plan(cfg.count, info.conditions)

    def faces(set_index: int) -> np.ndarray:
        start = cfg.baseline_seed_offset + set_index * cfg.count
        return render_plan(generator, rows, list(range(start, start + cfg.count)), cfg.psi, precision)

    images = faces(0)
    features = measure.features(images)
    stored = registry.evaluation(version, name)
    if stored is not None and stored.get("key") == key:
        return {**stored, "name": name}, features, rows
    say(f"baseline of {version}: {cfg.count} faces and {cfg.noise_sets} noise sets rendered offline "
        f"(stored as evaluation {name})")
    noise = [measure.compare(features, measure.features(faces(i))) for i in range(1, cfg.noise_sets + 1)]
    numbers: dict[str, Any] = {
        "noise_fid": float(np.mean([n["fid"] for n in noise])), "noise_fids": [n["fid"] for n in noise],
        "noise_kid": float(np.mean([n["kid_mean"] for n in noise])), "noise_kids": [n["kid_mean"] for n in noise]}
    if measure.labeler is not None:
        numbers.update(measure.agreement(images, rows))
    result = {"key": key, "metrics": numbers, "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    registry.record(version, name, result)
    return {**result, "name": name}, features, rows
