"""Per-group metrics: FID, precision and recall within each attribute stratum.

A stratum is one combination of values of the attributes in `eval.groups` (e.g. groups [gender]
gives one stratum per gender; [gender, race] one per pair). Generated faces fall into the stratum
of the conditions they were rendered with (a `ganray generate` output's condition columns, or the
conditions a conditional model's face i draws from its seed, exactly as the bulk job draws them);
reference images into the stratum of their imported labels. Both sides are matched by value *name*
(the imported dataset numbers its values; its manifest's `attributes` maps the numbers to names).

Each stratum's numbers compare its generated faces with the reference images of the same
stratum. A stratum with fewer than `min_samples` on either side is reported as skipped, with the
reason, instead of a number: below two samples there is no covariance and below k + 1 no k-NN
radius at all, and well above those floors FID's small-sample bias still dwarfs the differences
between groups (FID falls steeply with the count; see metrics.fid_bias_report). Even at or above
`min_samples`, per-group FIDs are comparable with each other only at equal counts: the counts are
reported beside every number.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ganray.eval import metrics


def strata(labels: dict[str, np.ndarray], by: list[str]) -> np.ndarray:
    """One tuple of value names per sample (an object array of tuples)."""
    n = len(next(iter(labels.values()))) if labels else 0
    keys = np.empty(n, dtype=object)
    keys[:] = list(zip(*[[str(v) for v in labels[name]] for name in by]))
    return keys


def _skip_reason(reference_count: int, generated_count: int, min_samples: int) -> str | None:
    short = [f"{side} has {count}" for side, count in (("reference", reference_count), ("generated", generated_count))
             if count < min_samples]
    if not short:
        return None
    return (f"too few samples: {' and '.join(short)}; at least {min_samples} per side are needed "
            "(eval.group_min_samples)")


def per_group_metrics(real_features: np.ndarray, real_labels: dict[str, np.ndarray],
                      fake_features: np.ndarray, fake_labels: dict[str, np.ndarray],
                      by: list[str], min_samples: int, pr_k: int) -> dict[str, Any]:
    """{"by", "min_samples", "strata": [...]}: every stratum seen on either side, in sorted order,
    with its counts and either `fid`, `precision`, `recall` or `skipped` (the reason)."""
    if min_samples < max(2, pr_k + 1):
        raise metrics.MetricError(f"min_samples must be at least {max(2, pr_k + 1)} (a covariance needs 2 "
                                  f"samples, k-NN with k = {pr_k} needs {pr_k + 1}), got {min_samples}")
    real_keys, fake_keys = strata(real_labels, by), strata(fake_labels, by)
    out = []
    for key in sorted(set(real_keys.tolist()) | set(fake_keys.tolist())):
        # Element by element: `==` against a tuple would broadcast the tuple, not compare with it.
        real = real_features[np.array([k == key for k in real_keys], dtype=bool)]
        fake = fake_features[np.array([k == key for k in fake_keys], dtype=bool)]
        entry: dict[str, Any] = {"values": dict(zip(by, key)), "reference_count": len(real),
                                 "generated_count": len(fake)}
        reason = _skip_reason(len(real), len(fake), min_samples)
        if reason is not None:
            entry["skipped"] = reason
        else:
            entry["fid"] = metrics.fid(real, fake)
            entry.update(metrics.precision_recall(real, fake, pr_k))
            del entry["pr_k"]
        out.append(entry)
    return {"by": list(by), "min_samples": min_samples, "pr_k": pr_k, "strata": out}
