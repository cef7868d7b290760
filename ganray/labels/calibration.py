"""How far a labeler's confidence can be trusted: temperature scaling, calibration error, and
precision against confidence per class (selective labels).

- Temperature scaling: one temperature T per attribute, fitted on the validation split by
  minimising the negative log-likelihood of softmax(log p / T) (p: the classifier's softmax
  probabilities); reported as the expected calibration error (ECE, top label, equal-width bins)
  before and after, measured on the held-out split, which the fit never saw.
- Selective labels: on the held-out split, for each confidence threshold t of THRESHOLDS, the
  confusion matrix of the images whose confidence (the labeler's own: the softmax probability of
  its chosen value) is at least t. Per class it gives the precision of the label at t (the share of
  images labeled v at confidence >= t that are v) and the coverage (the share of images labeled v
  that keep their label at t). `threshold_for_precision` reads the lowest threshold at which a
  label reaches a precision; a closed-loop job asks for a precision instead of a confidence.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

THRESHOLDS = tuple(float(t) for t in (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98,
                                      0.99, 0.995))
ECE_BINS = 15
_EPS = 1e-12


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row (float64)."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, truth: np.ndarray) -> float:
    p = np.clip(probabilities[np.arange(len(truth)), truth], _EPS, 1.0)
    return float(-np.log(p).mean())


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of softmax(log p / T) on (probabilities, truth):
    a log-spaced grid, then golden-section search around its best point (deterministic)."""
    truth = np.asarray(truth, np.int64)
    if len(truth) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    losses = [negative_log_likelihood(apply_temperature(probabilities, t), truth) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
    golden = (np.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(probabilities, float(np.exp(log_t))), truth)

    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = loss(b)
    return round(float(np.exp((lo + hi) / 2)), 6)


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the image-weighted mean |accuracy - mean confidence| over equal-width bins."""
    truth = np.asarray(truth, np.int64)
    if len(truth) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(truth))


def confusion_by_threshold(probabilities: np.ndarray, truth: np.ndarray, classes: int,
                           thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """(len(thresholds), classes, classes) counts: rows the true value, columns the predicted value,
    of the images whose top confidence is at least each threshold."""
    truth = np.asarray(truth, np.int64)
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    out = np.zeros((len(thresholds), classes, classes), dtype=np.int64)
    for k, t in enumerate(thresholds):
        kept = confidence >= t
        np.add.at(out[k], (truth[kept], predicted[kept]), 1)
    return out


def selective_curves(table: np.ndarray, values: Sequence[str]) -> dict[str, dict[str, list]]:
    """Per class, from a confusion_by_threshold table: labeled (kept images labeled v), correct,
    precision and coverage at each threshold (None where nothing is labeled v)."""
    out = {}
    for v, value in enumerate(values):
        labeled = table[:, :, v].sum(axis=1)
        correct = table[:, v, v]
        base = labeled[0]
        out[value] = {"labeled": labeled.tolist(), "correct": correct.tolist(),
                      "precision": [round(float(c / n), 6) if n else None for c, n in zip(correct, labeled)],
                      "coverage": [round(float(n / base), 6) if base else None for n in labeled]}
    return out


def calibration_report(values: Sequence[str], validation: tuple[np.ndarray, np.ndarray] | None,
                       heldout: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """One attribute's calibration entry: (probabilities, truth) of the validation and held-out splits."""
    held_p, held_t = heldout
    temperature = fit_temperature(*validation) if validation is not None and len(validation[1]) else 1.0
    calibrated = apply_temperature(held_p, temperature)
    table = confusion_by_threshold(held_p, held_t, len(values))
    return {
        "temperature": temperature,
        "fitted_on": "validation" if validation is not None else "none (no validation split: T = 1)",
        "ece_before": round(expected_calibration_error(held_p, held_t), 6),
        "ece_after": round(expected_calibration_error(calibrated, held_t), 6),
        "nll_before": round(negative_log_likelihood(np.asarray(held_p, np.float64), np.asarray(held_t)), 6),
        "nll_after": round(negative_log_likelihood(calibrated, np.asarray(held_t)), 6),
        "thresholds": list(THRESHOLDS),
        "confusion_by_threshold": table.tolist(),
        "per_class": selective_curves(table, values),
    }


def threshold_for_precision(entry: Mapping[str, Any], value: str, precision: float) -> float | None:
    """The lowest threshold at which labels `value` reach `precision` on the held-out split (by the
    entry's curve), None when none does: the smallest confidence a label needs."""
    curve = entry["per_class"][value]
    for t, p in zip(entry["thresholds"], curve["precision"]):
        if p is not None and p >= precision:
            return float(t)
    return None


def label_precision(entry: Mapping[str, Any], value: str, confidence: float) -> tuple[int, int]:
    """(correct, labeled) on the held-out split for labels `value` at the highest threshold not
    above `confidence`: the evidence for a label given at that confidence."""
    k = max(i for i, t in enumerate(entry["thresholds"]) if t <= confidence + 1e-9)
    curve = entry["per_class"][value]
    return int(curve["correct"][k]), int(curve["labeled"][k])
