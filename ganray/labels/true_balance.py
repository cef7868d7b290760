"""The true make-up of a labeled set of faces, estimated from the labeler's held-out errors.

A labeler's label is not the truth: of the faces it calls "indian" at confidence >= t, the held-out
split says which share really is, and what the rest are. For each face, with labels v_a at
confidences c_a, the estimate takes per attribute a the held-out images the labeler labeled v_a at
a confidence in the same band between two thresholds of ganray.labels.calibration (widened to its
neighbours while it holds fewer than MIN_BAND_IMAGES images), reads the share of each true value among them, and multiplies the
attributes' shares (errors taken as independent between attributes). Summed over the faces: the
estimated true count of every stratum, beside the count the labeler saw, and per labeled stratum
the estimated precision of its labels (the share whose every label is right).

Intervals come from DRAWS draws: each held-out column from its Dirichlet(counts + 1/2) posterior
(a Bayesian bootstrap of the held-out split), and the set's own sampling as a normal with the
multinomial's variance. Condition: the labeler errs on these faces as it does on the real held-out
faces, with the true values in the held-out proportions among the images it gives each label.
Pure numpy, deterministic (a fixed seed).
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DRAWS = 1000
_CHUNK = 50  # draws computed together
MIN_BAND_IMAGES = 30  # a confidence band with fewer held-out images borrows its neighbours'
LEVEL = 0.95
SEPARATOR = "/"


def _band(thresholds: Sequence[float], confidence: float) -> int:
    return max(i for i, t in enumerate(thresholds) if t <= confidence + 1e-9)


def estimate_true_balance(evidence: Mapping[str, Mapping[str, Any]], attributes: Sequence[str],
                          labels: Mapping[str, Sequence[str]], confidences: Mapping[str, Sequence[float]],
                          draws: int = DRAWS, level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """`evidence[a]`: attribute a's calibration entry (values, thresholds, confusion_by_threshold);
    `labels[a]` / `confidences[a]`: each face's label and confidence. Returns per stratum (the value
    combinations of `attributes`) the labeled count, the estimated true count with its interval,
    and for labeled strata the estimated precision of their labels with its interval."""
    rng = np.random.default_rng(seed)
    n_faces = len(labels[attributes[0]]) if attributes else 0
    values = {a: list(evidence[a]["values"]) for a in attributes}
    tables = {a: np.asarray(evidence[a]["confusion_by_threshold"], dtype=np.float64) for a in attributes}
    # Faces grouped by (label index, threshold band) per attribute: the estimate depends on nothing else.
    keys = []
    for i in range(n_faces):
        key = []
        for a in attributes:
            v = values[a].index(labels[a][i])
            key.append((v, _band(evidence[a]["thresholds"], float(confidences[a][i]))))
        keys.append(tuple(key))
    groups = Counter(keys)
    group_keys = sorted(groups)
    counts = np.array([groups[k] for k in group_keys], dtype=np.float64)
    quantiles = [(1 - level) / 2, (1 + level) / 2]

    # Per attribute, per (label, band) column: the point shares and `draws` posterior draws.
    def column(a: str, v: int, band: int) -> np.ndarray:
        return band_column(tables[a], v, band)

    point_by_attr, draw_by_attr = [], []
    for j, a in enumerate(attributes):
        cols = {}
        for key in group_keys:
            cols.setdefault(key[j], column(a, *key[j]))
        point = np.array([_shares(cols[key[j]]) for key in group_keys])                      # (G, K_a)
        sampled = {c: rng.dirichlet(cols[c] + 0.5, size=draws) for c in sorted(cols)}       # (D, K_a) each
        draw_by_attr.append(np.stack([sampled[key[j]] for key in group_keys], axis=1))     # (D, G, K_a)
        point_by_attr.append(point)

    strata = list(itertools.product(*(range(len(values[a])) for a in attributes)))
    joint_point = _joint(point_by_attr)                    # (G, S)
    true_point = counts @ joint_point                      # (S,)
    labeled_combo = [tuple(k[0] for k in key) for key in group_keys]
    members = {s: np.array([c == combo for c in labeled_combo]) for s, combo in enumerate(strata)}
    members = {s: m for s, m in members.items() if m.any()}
    true_draws = np.empty((draws, len(strata)))
    precision_draws = {s: np.empty(draws) for s in members}
    for start in range(0, draws, _CHUNK):  # (draws, groups, strata) at once would not fit a large output
        part = slice(start, min(start + _CHUNK, draws))
        joint = _joint([d[part] for d in draw_by_attr])    # (c, G, S)
        mean = np.einsum("g,dgs->ds", counts, joint)
        var = np.einsum("g,dgs->ds", counts, joint * (1 - joint))
        true_draws[part] = mean + np.sqrt(var) * rng.standard_normal(mean.shape)
        for s, mine in members.items():
            precision_draws[s][part] = joint[:, mine, s] @ (counts[mine] / counts[mine].sum())
    true_lo, true_hi = np.quantile(np.clip(true_draws, 0, n_faces), quantiles, axis=0)
    true_lo, true_hi = np.minimum(true_lo, true_point), np.maximum(true_hi, true_point)

    labeled = Counter(tuple(k[0] for k in key) for key in keys)
    rows = []
    for s, combo in enumerate(strata):
        name = SEPARATOR.join(values[a][v] for a, v in zip(attributes, combo))
        row: dict[str, Any] = {"stratum": name, "labeled_count": int(labeled.get(combo, 0)),
                               "estimated_true_count": round(float(true_point[s]), 2),
                               "true_count_interval": [round(float(true_lo[s]), 2), round(float(true_hi[s]), 2)]}
        if s in members:
            mine = members[s]
            precision = float((counts[mine] / counts[mine].sum()) @ joint_point[mine, s])
            lo, hi = np.quantile(precision_draws[s], quantiles)
            lo, hi = min(lo, precision), max(hi, precision)  # the draws' prior can leave a point of 1 outside
            row.update(label_precision=round(precision, 4), label_precision_interval=[round(float(lo), 4),
                                                                                      round(float(hi), 4)])
        rows.append(row)
    return {"attributes": list(attributes), "faces": n_faces, "level": level, "draws": draws,
            "method": "held-out confusion by confidence band; Dirichlet(counts + 1/2) draws; attributes independent",
            "strata": rows}


def band_column(cumulative: np.ndarray, v: int, band: int, min_images: int = MIN_BAND_IMAGES) -> np.ndarray:
    """Held-out counts per true value among the images labeled v at a confidence in threshold band
    `band` ([t_band, t_band+1)), widened band by band (up first) until it holds `min_images`."""
    bands = cumulative[:, :, v] - np.concatenate([cumulative[1:, :, v], np.zeros((1, cumulative.shape[1]))])
    lo, hi = band, band + 1
    while bands[lo:hi].sum() < min_images and (lo > 0 or hi < len(bands)):
        if hi < len(bands):
            hi += 1
        if bands[lo:hi].sum() < min_images and lo > 0:
            lo -= 1
    return bands[lo:hi].sum(axis=0)


def _shares(column: np.ndarray) -> np.ndarray:
    total = column.sum()
    return column / total if total else np.full(len(column), 1.0 / len(column))


def _joint(per_attribute: list[np.ndarray]) -> np.ndarray:
    """Outer product over the attributes' shares (last axis), flattened in stratum order (last
    attribute fastest)."""
    out = per_attribute[0]
    for nxt in per_attribute[1:]:
        out = (out[..., :, None] * nxt[..., None, :]).reshape(*out.shape[:-1], -1)
    return out


def labeler_evidence(version: str, registry_url: str | None) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """The classifier labeler version's held-out calibration entries per attribute (with their
    values), or None and why not."""
    from ganray.registry import LabelerRegistry, RegistryError

    try:
        evaluation = LabelerRegistry(registry_url).evaluation(version, "heldout")
    except (RegistryError, OSError) as e:
        return None, f"labeler {version}: {e}"
    if not evaluation:
        return None, f"labeler {version} has no held-out evaluation in the registry"
    out = {}
    for name, result in evaluation.get("attributes", {}).items():
        if "calibration" in result:
            out[name] = {**result["calibration"], "values": result["confusion"]["values"]}
    if not out:
        return None, f"labeler {version}'s held-out evaluation has no confidence curves (trained before them)"
    return out, ""
