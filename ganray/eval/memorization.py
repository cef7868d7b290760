"""Memorization check: how close each generated face comes to a training image, in feature space.

For every generated face: the Euclidean distance from its features to the nearest reference
(training) image's features. The share of generated faces closer than a threshold is reported,
with the closest pairs (and, by the job, an image grid of them: generated | nearest training image).

The default threshold is relative, because feature distances have no absolute scale (pixels,
classifier and Inception features differ by orders of magnitude): `threshold_ratio` (default 0.5)
times the median distance from a reference image to its nearest *other* reference image. That
median is how close two distinct real faces of the training set typically come to each other in
this feature space (the importer drops exact duplicates, so it is not zero). A model that produces
new faces puts them about as far from the training set as its own images are from each other; a
face at under half that distance from a training image is closer to it than most real faces are to
their closest real neighbour: a copy or a near copy. Exact copies are at distance 0 and always
count. `threshold` (absolute, in feature units) overrides the default.

The search is exact and covers every training image the job hands in (by default, every image of
the reference dataset): nearest neighbours by chunked matrix products (metrics.nearest_neighbours),
so its cost is one pass over a (generated x training) distance matrix, never a sample of it. The
report carries the distribution of the nearest distances (quantiles and a histogram), so a share
under the threshold can be read against the shape of the whole distribution.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ganray.eval import metrics

QUANTILES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 30


def distance_distribution(distances: np.ndarray, threshold: float, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Quantiles of the nearest distances and a histogram from 0 to their maximum; `below_bins`
    counts the bins that lie wholly under the threshold (for drawing it)."""
    top = float(distances.max()) if float(distances.max()) > 0 else 1.0
    counts, edges = np.histogram(distances, bins=bins, range=(0.0, top))
    return {"quantiles": {f"{q:g}": float(np.quantile(distances, q)) for q in QUANTILES},
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
            "threshold": float(threshold)}


def memorization_report(real_features: np.ndarray, fake_features: np.ndarray, *, threshold: float | None,
                        threshold_ratio: float, pairs: int) -> dict[str, Any]:
    """The numbers (JSON-ready); `closest` lists the `pairs` closest (generated, reference) pairs,
    nearest first, as indices into the two feature sets."""
    distances, nearest = metrics.nearest_neighbours(fake_features, real_features)
    reference_nn, _ = metrics.nearest_neighbours(real_features, real_features, exclude_self=True)
    reference_median = float(np.median(reference_nn))
    if threshold is None:
        used, source = threshold_ratio * reference_median, (
            f"{threshold_ratio} x the median nearest-neighbour distance within the reference")
    else:
        used, source = float(threshold), "eval.memorization.threshold"
    # Stable sort: ties (several exact copies at distance 0) keep the generated order.
    order = np.argsort(distances, kind="stable")[:pairs]
    below = distances < used
    return {
        "threshold": used,
        "threshold_source": source,
        "reference_nn_median": reference_median,
        "share_below_threshold": float(below.mean()),
        "count_below_threshold": int(below.sum()),
        "generated_count": int(len(distances)),
        "reference_count": int(len(real_features)),
        "search": "exact: every generated face against every one of the reference_count training images",
        "nn_distance": {"min": float(distances.min()), "median": float(np.median(distances)),
                        "mean": float(distances.mean())},
        "distribution": distance_distribution(distances, used),
        "closest": [{"generated_index": int(i), "reference_index": int(nearest[i]), "distance": float(distances[i])}
                    for i in order],
    }


def pairs_grid(generated: np.ndarray, reference: np.ndarray, gap: int = 2) -> np.ndarray:
    """uint8 (N, H, W, 3) pairs -> one image: a row per pair, generated on the left, its nearest
    training image on the right, `gap` white pixels between columns and rows."""
    if generated.shape != reference.shape or generated.ndim != 4 or len(generated) == 0:
        raise ValueError(f"need matching non-empty image stacks, got {generated.shape} and {reference.shape}")
    n, h, w, _ = generated.shape
    canvas = np.full((n * h + (n - 1) * gap, 2 * w + gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        top = i * (h + gap)
        canvas[top:top + h, :w] = generated[i]
        canvas[top:top + h, w + gap:] = reference[i]
    return canvas
