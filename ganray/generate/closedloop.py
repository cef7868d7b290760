"""Closed-loop exact quotas: strata, their integer quotas, the candidate seeds, and the verdict on a face.

Strata are the value combinations of `closed_loop.strata` (in the attributes' value order; a
stratum's name is its values joined by "/"). The target shares become integer quotas that sum to
`count` by the largest-remainder method: each stratum gets floor(count x share), and the faces left
over go one each to the strata with the largest fractional parts, ties to the earlier stratum.

Candidate k (the attempt number) of stratum s is rendered from `candidate_seed(seed_offset, s, k)`
and conditioned on the stratum's values (for the attributes the model conditions on). Its verdict
(quality gate, then the labeler's values and confidences against the stratum) is a function of the
candidate alone. A stratum's faces are its first `quota` accepted candidates in k order, so which
faces are accepted never depends on batch size, replicas or interruptions. A stratum may draw
ceil(max_attempts_per_face x quota) candidates; then it is short (error or partial, as configured).

With `min_label_precision`, the confidence a label needs is per value: the lowest threshold at which
the labeler's labels of that value reached that precision on its held-out split (its stored
precision-against-confidence curve, ganray.labels.calibration), and never below `min_confidence`.

Face ids run stratum after stratum: stratum s holds face ids [Q_s, Q_s + quota_s) (Q_s: the quotas
of the strata before it), in shards of `shard_size` faces; its r-th accepted face is face Q_s + r.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from ganray.config import STRATUM_SEPARATOR, ClosedLoopConfig, LabelerConfig, QualityGateConfig
from ganray.generate.plan import ShardRange

CLOSED_LOOP_ORDER = "stratum-major/1"  # face ids stratum after stratum (part of the job identity)
CANDIDATE_SEEDS = "sha256(seed_offset/stratum/attempt)/1"


def candidate_seed(seed_offset: int, stratum: str, attempt: int) -> int:
    """The seed of candidate `attempt` of `stratum`: a 63-bit hash (independent streams per stratum)."""
    digest = hashlib.sha256(f"{int(seed_offset)}/{stratum}/{int(attempt)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stratum_name(values: Sequence[str]) -> str:
    return STRATUM_SEPARATOR.join(values)


def strata_of(values: Mapping[str, Sequence[str]], attributes: Sequence[str]) -> list[tuple[str, ...]]:
    """Every value combination of `attributes`, the last attribute varying fastest."""
    return list(itertools.product(*(values[name] for name in attributes)))


def exact_quotas(count: int, shares: Sequence[Fraction]) -> list[int]:
    """Integer quotas summing to `count`, by largest remainder (ties: the earlier stratum)."""
    total = sum(shares)
    if total <= 0:
        raise ValueError("the target gives every stratum a share of 0")
    exact = [Fraction(count) * s / total for s in shares]
    quotas = [math.floor(e) for e in exact]
    left = count - sum(quotas)
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[:left]:
        quotas[i] += 1
    return quotas


@dataclass(frozen=True)
class ClosedLoopPlan:
    """Everything a stratum searcher and the writers need, fixed before any work starts."""

    attributes: tuple[str, ...]  # closed_loop.strata
    strata: tuple[tuple[str, ...], ...]
    quotas: tuple[int, ...]
    budgets: tuple[int, ...]  # candidates a stratum may draw
    shard_size: int
    on_budget_exhausted: str
    min_confidence: float | dict[str, dict[str, float]]  # one number, or per attribute and value
    seed_offset: int
    shards: tuple[ShardRange, ...] = field(default=())
    shard_stratum: tuple[tuple[int, int], ...] = field(default=())  # shard index -> (stratum, part)

    min_label_precision: float | None = None

    @classmethod
    def build(cls, cfg: ClosedLoopConfig, values: Mapping[str, Sequence[str]], shares: Sequence[Fraction],
              count: int, shard_size: int, seed_offset: int,
              thresholds: Mapping[str, Mapping[str, float | None]] | None = None) -> "ClosedLoopPlan":
        strata = strata_of(values, cfg.strata)
        quotas = exact_quotas(count, shares)
        min_confidence: float | dict[str, dict[str, float]] = cfg.min_confidence
        if thresholds is not None:
            never = sorted({f"{a}={v}" for s, q in zip(strata, quotas) if q for a, v in zip(cfg.strata, s)
                            if thresholds[a].get(v) is None})
            if never:
                raise ValueError(f"min_label_precision {cfg.min_label_precision}: the labeler's labels {never} "
                                 "reach that precision at no confidence on its held-out split, so their strata "
                                 "could never be filled: ask for less, or leave them out of the target")
            min_confidence = {a: {v: max(cfg.min_confidence, t) for v, t in thresholds[a].items() if t is not None}
                              for a in cfg.strata}
        budgets = [math.ceil(cfg.max_attempts_per_face * q) for q in quotas]
        shards, owner, start = [], [], 0
        for s, q in enumerate(quotas):
            for part, lo in enumerate(range(0, q, shard_size)):
                shards.append(ShardRange(len(shards), start + lo, start + min(lo + shard_size, q)))
                owner.append((s, part))
            start += q
        return cls(tuple(cfg.strata), tuple(strata), tuple(quotas), tuple(budgets), shard_size,
                   cfg.on_budget_exhausted, min_confidence, seed_offset, tuple(shards), tuple(owner),
                   getattr(cfg, "min_label_precision", None))

    def name(self, s: int) -> str:
        return stratum_name(self.strata[s])

    def parts(self, s: int) -> list[ShardRange]:
        return [self.shards[i] for i, (owner, _) in enumerate(self.shard_stratum) if owner == s]

    def identity(self) -> dict[str, Any]:
        """What of the closed loop decides the bytes (job.json's `closed_loop`)."""
        return {"order": CLOSED_LOOP_ORDER, "seeds": CANDIDATE_SEEDS, "strata": list(self.attributes),
                "quotas": {self.name(s): q for s, q in enumerate(self.quotas)},
                "budgets": {self.name(s): b for s, b in enumerate(self.budgets)},
                "on_budget_exhausted": self.on_budget_exhausted, "min_confidence": self.min_confidence,
                **({"min_label_precision": self.min_label_precision} if self.min_label_precision is not None else {})}


def target_shares(cfg: ClosedLoopConfig, strata: Sequence[tuple[str, ...]],
                  training_counts: Mapping[str, int] | None = None) -> list[Fraction]:
    """Each stratum's share of the count under `cfg.target` (exact fractions)."""
    names = [stratum_name(s) for s in strata]
    if cfg.target == "uniform":
        return [Fraction(1)] * len(strata)
    if cfg.target == "proportions":
        unknown = sorted(set(cfg.proportions) - set(names))
        if unknown:
            raise ValueError(f"closed_loop.proportions names unknown strata {unknown}; strata are "
                             f"{names[:12]}{' ...' if len(names) > 12 else ''} (values of {cfg.strata} joined by "
                             f"{STRATUM_SEPARATOR!r})")
        return [Fraction(str(cfg.proportions.get(n, 0.0))) for n in names]
    assert training_counts is not None
    return [Fraction(int(training_counts.get(n, 0))) for n in names]


# -- the verdict on a face -------------------------------------------------------------------------


class FaceVerifier:
    """Quality gate + labeler on a batch of faces; one verdict per face, independent of the batch.

    `label_attributes` are the attributes whose labels go into the rows (the labeler's, or the
    model's conditions for the `conditions` labeler).
    """

    def __init__(self, labeler_cfg: LabelerConfig | None, quality_cfg: QualityGateConfig | None,
                 registry_url: str | None, label_attributes: Sequence[str]):
        from ganray.labels import build_labeler
        from ganray.labels.quality import QualityGate

        self.labeler = build_labeler(labeler_cfg, registry_url) if labeler_cfg is not None else None
        self.gate = QualityGate(quality_cfg) if quality_cfg is not None else None
        self.label_attributes = tuple(label_attributes)

    def verify(self, images: np.ndarray, requested: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
        """Per face: {"reject": reason or None, "labels": {attr: value}, "confidence": {attr: c},
        "contrast", "sharpness"} (labels only for faces that passed the gate)."""
        n = len(images)
        out: list[dict[str, Any]] = [{"reject": None, "labels": {}, "confidence": {}} for _ in range(n)]
        keep = np.ones(n, dtype=bool)
        if self.gate is not None:
            verdicts = self.gate.check(images)
            for i in range(n):
                out[i].update(reject=verdicts.reasons[i], contrast=round(float(verdicts.contrast[i]), 3),
                              sharpness=round(float(verdicts.sharpness[i]), 3))
            keep = verdicts.passed
        if self.labeler is not None and keep.any():
            index = np.flatnonzero(keep)
            labels = self.labeler.label(images[index], [requested[i] for i in index])
            for name in self.label_attributes:
                if name not in labels:
                    raise ValueError(f"labeler {self.labeler.cfg.name!r} gave no label for attribute {name!r}")
                for j, i in enumerate(index):
                    out[i]["labels"][name] = labels[name].values[j]
                    # Rounded: the row stores it, and a float's last bits must not decide the bytes.
                    out[i]["confidence"][name] = round(float(labels[name].confidence[j]), 6)
        return out


def stratum_verdict(face: Mapping[str, Any], attributes: Sequence[str], values: Sequence[str],
                    min_confidence: float | Mapping[str, Mapping[str, float]]) -> str | None:
    """Why a verified face does not belong to the stratum (`values` of `attributes`); None: accepted.
    `min_confidence`: one number, or per attribute and value (the plan's, under min_label_precision)."""
    if face["reject"] is not None:
        return face["reject"]
    for name, value in zip(attributes, values):
        if face["labels"].get(name) != value:
            return f"label_mismatch:{name}"
    for name, value in zip(attributes, values):
        needed = min_confidence if isinstance(min_confidence, (int, float)) else min_confidence[name][value]
        if face["confidence"].get(name, 0.0) < needed:
            return f"low_confidence:{name}"
    return None


def label_thresholds(cfg: ClosedLoopConfig, labeler_cfg: LabelerConfig | None, registry_url: str | None,
                     values: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float | None]] | None:
    """closed_loop.min_label_precision -> per stratum attribute and value, the lowest confidence at
    which the labeler's labels reach it on its held-out split (None: at no confidence); None when
    the job asks for no precision."""
    precision = getattr(cfg, "min_label_precision", None)
    if precision is None:
        return None
    if labeler_cfg is None or labeler_cfg.name != "classifier":
        raise ValueError("min_label_precision needs the classifier labeler (labeler.name: classifier): only it "
                         "has a held-out precision-against-confidence curve")
    from ganray.labels.calibration import threshold_for_precision
    from ganray.registry import LabelerRegistry

    from ganray.registry import RegistryError

    labelers = LabelerRegistry(registry_url)
    try:
        version = labelers.show(labeler_cfg.model).version
        evaluation = labelers.evaluation(version, "heldout") or {"attributes": {}}
    except RegistryError as e:
        raise ValueError(f"min_label_precision: {e}") from None
    out: dict[str, dict[str, float | None]] = {}
    for name in cfg.strata:
        entry = (evaluation["attributes"].get(name) or {}).get("calibration")
        if entry is None:
            raise ValueError(f"min_label_precision: labeler {version} has no precision-against-confidence curve "
                             f"for {name}: train it again with this ganray")
        out[name] = {v: threshold_for_precision(entry, v, precision) for v in values[name]}
    return out


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
