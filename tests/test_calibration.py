"""Calibration, selective labels and the true-balance estimate (ganray.labels.calibration,
ganray.labels.true_balance): pure numpy on synthetic labelers whose truth is known; no Ray."""
from __future__ import annotations

import numpy as np
import pytest

from ganray.labels.calibration import (
    THRESHOLDS,
    apply_temperature,
    calibration_report,
    confusion_by_threshold,
    expected_calibration_error,
    fit_temperature,
    threshold_for_precision,
)
from ganray.labels.true_balance import estimate_true_balance

VALUES = ["a", "b", "c"]
PRIOR = np.array([0.6, 0.3, 0.1])
# P(label | truth): rows the true value. Class "c" is often called "a" or "b".
CONFUSION = np.array([[0.90, 0.07, 0.03], [0.12, 0.83, 0.05], [0.25, 0.30, 0.45]])


def overconfident_labeler(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities, truth) of a labeler whose logits are three times too sharp."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n, p=PRIOR)
    logits = rng.normal(0, 1.0, size=(n, 3))
    logits[np.arange(n), truth] += 1.2
    sharp = np.exp(3 * logits)
    return sharp / sharp.sum(axis=1, keepdims=True), truth


def labeler_with_known_errors(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, label, confidence): labels drawn from CONFUSION; confidence 0.9 for a right label,
    0.6 for a wrong one, so confidence carries information."""
    truth = rng.choice(3, size=n, p=PRIOR)
    label = np.array([rng.choice(3, p=CONFUSION[t]) for t in truth])
    confidence = np.where(label == truth, 0.9, 0.6)
    return truth, label, confidence


def test_temperature_fitted_on_validation_lowers_the_calibration_error_on_heldout():
    validation, heldout = overconfident_labeler(3000, 1), overconfident_labeler(3000, 2)
    temperature = fit_temperature(*validation)
    assert temperature > 1.5  # the labeler is overconfident: the fit softens it
    before = expected_calibration_error(*heldout)
    after = expected_calibration_error(apply_temperature(heldout[0], temperature), heldout[1])
    assert after < before / 2
    entry = calibration_report(VALUES, validation, heldout)
    assert entry["temperature"] == temperature
    assert entry["ece_before"] == pytest.approx(before, abs=1e-6) and entry["ece_after"] == pytest.approx(after, abs=1e-6)


def test_precision_and_coverage_per_class_at_each_threshold():
    probabilities, truth = overconfident_labeler(2000, 3)
    entry = calibration_report(VALUES, None, (probabilities, truth))
    assert entry["temperature"] == 1.0 and entry["thresholds"] == list(THRESHOLDS)
    table = np.array(entry["confusion_by_threshold"])
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)
    for v, value in enumerate(VALUES):
        curve = entry["per_class"][value]
        for k, t in enumerate(THRESHOLDS):
            kept = (predicted == v) & (confidence >= t)
            assert curve["labeled"][k] == kept.sum() == table[k][:, v].sum()
            assert curve["correct"][k] == (kept & (truth == v)).sum()
            if kept.any():
                assert curve["precision"][k] == pytest.approx((truth[kept] == v).mean(), abs=1e-6)
                assert curve["coverage"][k] == pytest.approx(kept.sum() / (predicted == v).sum(), abs=1e-6)
    # The lowest threshold that reaches a precision really reaches it, and no lower one does.
    t = threshold_for_precision(entry, "a", 0.95)
    k = THRESHOLDS.index(t)
    assert entry["per_class"]["a"]["precision"][k] >= 0.95
    assert all(p is None or p < 0.95 for p in entry["per_class"]["a"]["precision"][:k])
    assert threshold_for_precision(entry, "a", 1.01) is None
    assert confusion_by_threshold(probabilities, truth, 3)[0].sum() == len(truth)


def test_true_balance_estimate_holds_the_truth_where_the_labeler_counts_do_not():
    """A closed loop in miniature: faces drawn with known true values, labeled with known errors,
    the first 400 faces the labeler calls each value kept. The estimate's 99 % interval holds each
    value's true count; the labeler's own counts (400 each) are far from the truth for "c"."""
    rng = np.random.default_rng(7)
    held_truth, held_label, held_conf = labeler_with_known_errors(4000, rng)
    probabilities = np.full((len(held_truth), 3), 0.0)
    probabilities[np.arange(len(held_truth)), held_label] = held_conf
    probabilities[np.arange(len(held_truth)), (held_label + 1) % 3] = 1 - held_conf
    evidence = calibration_report(VALUES, None, (probabilities, held_truth))
    evidence["values"] = VALUES

    truth, label, confidence = labeler_with_known_errors(20000, rng)
    keep = np.concatenate([np.flatnonzero(label == v)[:400] for v in range(3)])
    result = estimate_true_balance({"x": evidence}, ["x"], {"x": [VALUES[v] for v in label[keep]]},
                                   {"x": confidence[keep].tolist()}, level=0.99)
    true_counts = np.bincount(truth[keep], minlength=3)
    rows = {r["stratum"]: r for r in result["strata"]}
    for v, value in enumerate(VALUES):
        row = rows[value]
        assert row["labeled_count"] == 400
        lo, hi = row["true_count_interval"]
        assert lo <= true_counts[v] <= hi, (value, true_counts[v], row)
        right = (truth[keep] == v)[label[keep] == v].mean()
        plo, phi = row["label_precision_interval"]
        assert plo <= right <= phi, (value, right, row)
    assert not rows["c"]["true_count_interval"][0] <= 400 <= rows["c"]["true_count_interval"][1]
    assert sum(r["estimated_true_count"] for r in result["strata"]) == pytest.approx(len(keep), abs=0.1)


def test_true_balance_crosses_attributes_into_strata():
    rng = np.random.default_rng(3)
    held_truth, held_label, held_conf = labeler_with_known_errors(3000, rng)
    probabilities = np.zeros((len(held_truth), 3))
    probabilities[np.arange(len(held_truth)), held_label] = held_conf
    probabilities[np.arange(len(held_truth)), (held_label + 1) % 3] = 1 - held_conf
    evidence = {**calibration_report(VALUES, None, (probabilities, held_truth)), "values": VALUES}
    labels = {"x": ["a", "b", "c", "a"], "y": ["c", "c", "a", "b"]}
    confidences = {"x": [0.9] * 4, "y": [0.6] * 4}
    result = estimate_true_balance({"x": evidence, "y": evidence}, ["x", "y"], labels, confidences, draws=200)
    assert [r["stratum"] for r in result["strata"]][:4] == ["a/a", "a/b", "a/c", "b/a"]
    assert len(result["strata"]) == 9
    assert sum(r["labeled_count"] for r in result["strata"]) == 4
    assert sum(r["estimated_true_count"] for r in result["strata"]) == pytest.approx(4, abs=0.05)
    assert "label_precision" in {r["stratum"]: r for r in result["strata"]}["a/c"]
    assert "label_precision" not in {r["stratum"]: r for r in result["strata"]}["c/c"]


def test_a_precision_sets_per_value_confidences_and_a_label_that_never_reaches_it_refuses_the_plan():
    from fractions import Fraction

    from ganray.config import ClosedLoopConfig
    from ganray.generate.closedloop import ClosedLoopPlan, stratum_verdict

    thresholds = {"x": {"a": 0.7, "b": None}}
    cfg = ClosedLoopConfig(strata=["x"], min_label_precision=0.95, min_confidence=0.5)
    with pytest.raises(ValueError, match=r"x=b"):
        ClosedLoopPlan.build(cfg, {"x": ["a", "b"]}, [Fraction(1), Fraction(1)], 10, 5, 0, thresholds)
    only_a = ClosedLoopConfig(strata=["x"], min_label_precision=0.95, target="proportions", proportions={"a": 1.0})
    plan = ClosedLoopPlan.build(only_a, {"x": ["a", "b"]}, [Fraction(1), Fraction(0)], 10, 5, 0, thresholds)
    assert plan.min_confidence == {"x": {"a": 0.7}} and plan.identity()["min_label_precision"] == 0.95
    face = {"reject": None, "labels": {"x": "a"}, "confidence": {"x": 0.69}}
    assert stratum_verdict(face, ["x"], ["a"], plan.min_confidence) == "low_confidence:x"
    assert stratum_verdict({**face, "confidence": {"x": 0.7}}, ["x"], ["a"], plan.min_confidence) is None
