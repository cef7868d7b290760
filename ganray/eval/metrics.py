"""The sample-quality metrics, on feature vectors, following their published definitions exactly.

All arithmetic is float64 whatever the features' dtype.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the sample
  covariances (ddof = 1, as pytorch-fid / TTUR use). Tr((S1 S2)^(1/2)) is computed as the sum of
  the square roots of the eigenvalues of the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has
  the same eigenvalues as S1 S2 and never leaves the reals (the product of two nearly singular
  covariances, e.g. fewer samples than dimensions, is where scipy's sqrtm needs its epsilon-on-
  the-diagonal fallback; this route needs none: eigenvalues below zero from round-off are
  clipped to 0).
- KID (Binkowski et al. 2018): the unbiased MMD^2 estimator with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of `subset_size` from each
  set (as torch-fidelity: subset_size 1000, 100 subsets); mean and standard deviation reported.
- Precision / recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around
  its samples with radius the distance to the k-th nearest neighbour (k = 3) within the set;
  precision is the share of generated samples inside the real manifold, recall the share of real
  samples inside the generated one.
- IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) from class logits, mean and standard
  deviation over `splits` (10) equal splits.

FID and KID are biased by the sample count (FID strongly): compare numbers at the same count only
(`fid_bias_report` shows the size of the effect on one's own features).
"""
from __future__ import annotations

import numpy as np

KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
PR_NEIGHBOURS = 3
IS_SPLITS = 10


class MetricError(ValueError):
    """Inputs a metric cannot be computed from (empty, too few samples, mismatched dimensions)."""


def _features(x, name: str, min_rows: int = 1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MetricError(f"{name}: expected a 2-d (samples, features) array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise MetricError(f"{name}: the set is empty")
    if x.shape[0] < min_rows:
        raise MetricError(f"{name}: {x.shape[0]} samples; at least {min_rows} are needed")
    if not np.isfinite(x).all():
        raise MetricError(f"{name}: features contain NaN or infinity")
    return x


def _same_dims(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"feature dimensions differ: {a.shape[1]} (real) vs {b.shape[1]} (generated); "
                          "both sets must come from the same extractor")


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) in float64; the covariance needs at least 2 samples (ddof = 1)."""
    x = _features(features, "features", min_rows=2)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MetricError(f"mismatched statistics: means {mu1.shape} {mu2.shape}, covariances "
                          f"{sigma1.shape} {sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    # Round-off can leave a tiny negative number for identical statistics; a distance is >= 0.
    return max(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt), 0.0)


def fid(real, generated) -> float:
    """FID between two feature sets (each needs at least 2 samples)."""
    r, g = _features(real, "real", 2), _features(generated, "generated", 2)
    _same_dims(r, g)
    return frechet_distance(*feature_stats(r), *feature_stats(g))


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    # Unbiased: the diagonals (a sample with itself) are left out of the within-set means.
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.mean())


def kid(real, generated, subset_size: int = KID_SUBSET_SIZE, subsets: int = KID_SUBSETS,
        seed: int = 0) -> dict[str, float]:
    """KID: mean and standard deviation of the unbiased polynomial MMD^2 over random subsets.

    Each subset draws `subset_size` samples without replacement from each set (numpy's
    default_rng(seed)); the subset size is capped at the smaller set's size (reported as used).
    """
    r, g = _features(real, "real", 2), _features(generated, "generated", 2)
    _same_dims(r, g)
    if subsets < 1 or subset_size < 2:
        raise MetricError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    size = min(subset_size, r.shape[0], g.shape[0])
    rng = np.random.default_rng(seed)
    values = np.array([_polynomial_mmd2_unbiased(r[rng.choice(r.shape[0], size, replace=False)],
                                                 g[rng.choice(g.shape[0], size, replace=False)])
                       for _ in range(subsets)])
    return {"kid_mean": float(values.mean()), "kid_std": float(values.std()), "kid_subset_size": size,
            "kid_subsets": subsets}


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


# Rows of a distance matrix computed at once: bounds memory at ROW_CHUNK * N * 8 bytes.
ROW_CHUNK = 1024


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    radii = np.empty(x.shape[0])
    for start in range(0, x.shape[0], ROW_CHUNK):
        distances = _pairwise_distances(x[start:start + ROW_CHUNK], x)
        # The sample itself is at distance 0, the smallest: the k-th neighbour is sorted index k.
        radii[start:start + ROW_CHUNK] = np.partition(distances, k, axis=1)[:, k]
    return radii


def _inside_manifold(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return np.concatenate([(_pairwise_distances(points[start:start + ROW_CHUNK], manifold) <= radii[None, :]).any(1)
                           for start in range(0, points.shape[0], ROW_CHUNK)])


def precision_recall(real, generated, k: int = PR_NEIGHBOURS) -> dict[str, float]:
    """Improved precision and recall with k-NN manifolds (each set needs more than k samples)."""
    r, g = _features(real, "real", k + 1), _features(generated, "generated", k + 1)
    _same_dims(r, g)
    if k < 1:
        raise MetricError(f"k must be >= 1, got {k}")
    precision = _inside_manifold(g, r, _knn_radii(r, k)).mean()
    recall = _inside_manifold(r, g, _knn_radii(g, k)).mean()
    return {"precision": float(precision), "recall": float(recall), "pr_k": k}


def inception_score(logits, splits: int = IS_SPLITS) -> dict[str, float]:
    """IS from class logits (softmax taken here): mean and standard deviation over `splits`."""
    z = _features(logits, "logits", splits)
    if splits < 1:
        raise MetricError(f"splits must be >= 1, got {splits}")
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0))
        scores.append(np.exp((p * (part - log_marginal)).sum(axis=1).mean()))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores)), "is_splits": splits}


def fid_bias_report(real, generated, smaller: int, seed: int = 0) -> dict[str, float]:
    """FID on all samples and on a random `smaller`-sample subset of the generated set: FID falls
    as the count grows, so numbers are comparable only at equal counts."""
    r, g = _features(real, "real", 2), _features(generated, "generated", 2)
    if not 2 <= smaller < g.shape[0]:
        raise MetricError(f"the smaller count must be between 2 and {g.shape[0] - 1}, got {smaller}")
    subset = g[np.random.default_rng(seed).choice(g.shape[0], smaller, replace=False)]
    return {"fid_full": fid(r, g), "fid_full_count": g.shape[0], "fid_small": fid(r, subset),
            "fid_small_count": smaller}


def nearest_neighbours(points, reference, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `points`: (Euclidean distance to its nearest row of `reference`, that row's index).

    `exclude_self`: `points` is `reference` itself and a row's own entry does not count (the
    nearest *other* sample; needs at least 2 rows). Distances in float64, ROW_CHUNK rows at a time.
    """
    p = _features(points, "generated")
    r = _features(reference, "real", 2 if exclude_self else 1)
    _same_dims(r, p)
    distances, indices = np.empty(p.shape[0]), np.empty(p.shape[0], dtype=np.int64)
    for start in range(0, p.shape[0], ROW_CHUNK):
        block = _pairwise_distances(p[start:start + ROW_CHUNK], r)
        if exclude_self:
            rows = np.arange(block.shape[0])
            block[rows, start + rows] = np.inf
        nearest = block.argmin(axis=1)
        indices[start:start + ROW_CHUNK] = nearest
        distances[start:start + ROW_CHUNK] = block[np.arange(block.shape[0]), nearest]
    return distances, indices
