"""The metrics against independent float64 references written here, closed forms, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from ganray.eval import metrics
from ganray.eval.metrics import MetricError

RTOL = 1e-6


def reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    # Independent route: eigenvalues of the non-symmetric product S1 S2 (their square roots sum to
    # Tr((S1 S2)^(1/2))), with covariances written out by hand.
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.sum(0) / len(x), y.sum(0) / len(y)
    sx = (x - mx).T @ (x - mx) / (len(x) - 1)
    sy = (y - my).T @ (y - my) / (len(y) - 1)
    eig = np.linalg.eigvals(sx @ sy)
    return float(((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * np.sqrt(eig.real.clip(0)).sum())


def reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    # Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, by explicit pair loops over distinct pairs.
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (np.dot(a, b) / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def reference_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(s):
        return np.array([sorted(np.linalg.norm(s - p, axis=1))[k] for p in s])

    def inside(points, manifold):
        r = radii(manifold)
        return np.mean([any(np.linalg.norm(p - q) <= rq for q, rq in zip(manifold, r)) for p in points])

    return inside(fake, real), inside(real, fake)


@pytest.fixture
def features():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(120, 6)) @ rng.normal(size=(6, 6))
    fake = rng.normal(0.3, 1.2, size=(90, 6)) @ rng.normal(size=(6, 6))
    return real.astype(np.float32), fake.astype(np.float32)


def test_fid_matches_reference(features):
    real, fake = features
    assert metrics.fid(real, fake) == pytest.approx(reference_fid(real, fake), rel=RTOL)


def test_fid_when_fewer_samples_than_dimensions_matches_reference():
    # A singular covariance product: the case scipy's sqrtm needs an epsilon for.
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(5, 12)), rng.normal(1.0, 2.0, size=(7, 12))
    assert metrics.fid(real, fake) == pytest.approx(reference_fid(real, fake), rel=RTOL)


def test_fid_of_a_set_with_itself_is_zero(features):
    real, _ = features
    assert metrics.fid(real, real) == pytest.approx(0.0, abs=1e-6)


def test_mean_shift_adds_its_squared_norm():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 5))
    shift = np.array([0.5, -1.0, 2.0, 0.0, 0.25])
    # Shifting every sample leaves the covariance as it was: FID is exactly ||shift||^2.
    assert metrics.fid(x, x + shift) == pytest.approx(float(shift @ shift), rel=RTOL)


def test_covariance_scaling_has_closed_form():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5)) @ np.diag([1.0, 2.0, 0.5, 1.5, 3.0])
    c = 1.7
    mu, sigma = metrics.feature_stats(x)
    # cX: mean c*mu, covariance c^2 S, (S c^2 S)^(1/2) = c S -> (1 - c)^2 (||mu||^2 + Tr S).
    expected = (1 - c) ** 2 * (mu @ mu + np.trace(sigma))
    assert metrics.fid(x, c * x) == pytest.approx(expected, rel=RTOL)


def test_frechet_distance_of_known_gaussians():
    sigma1, sigma2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # Diagonal covariances: Tr((S1 S2)^(1/2)) = sum sqrt(a_i b_i) = 3 + 2.
    assert metrics.frechet_distance([0, 0], sigma1, [1, 2], sigma2) == pytest.approx(5 + 15 - 10, rel=RTOL)


def test_kid_matches_reference_on_whole_sets(features):
    real, fake = features
    real, fake = real[:40], fake[:30]
    # One subset of the whole of the smaller set's size: the estimator over the full smaller set.
    result = metrics.kid(real[:30], fake, subset_size=30, subsets=1)
    assert result["kid_mean"] == pytest.approx(reference_mmd2(real[:30].astype(np.float64),
                                                              fake.astype(np.float64)), rel=RTOL)
    assert result["kid_std"] == 0.0 and result["kid_subset_size"] == 30


def test_kid_subsets_give_mean_and_std_and_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(4)
    same = metrics.kid(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)), subset_size=50, subsets=20)
    shifted = metrics.kid(rng.normal(size=(200, 4)), rng.normal(1.0, 1.0, size=(200, 4)), subset_size=50,
                          subsets=20)
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3  # unbiased: centred on 0
    assert shifted["kid_mean"] > 10 * same["kid_std"] and shifted["kid_std"] > 0
    assert same["kid_subsets"] == 20


def test_precision_recall_match_reference(features):
    real, fake = features
    real, fake = real[:50].astype(np.float64), fake[:40].astype(np.float64)
    result = metrics.precision_recall(real, fake, k=3)
    p, r = reference_precision_recall(real, fake, 3)
    assert (result["precision"], result["recall"]) == (pytest.approx(p), pytest.approx(r))
    assert metrics.precision_recall(real, real)["precision"] == 1.0


def test_precision_recall_separate_quality_from_coverage():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(300, 2))
    collapsed = rng.normal(scale=0.1, size=(300, 2))  # good-looking but covering little
    result = metrics.precision_recall(real, collapsed)
    assert result["precision"] > 0.95 and result["recall"] < 0.5


def test_inception_score_extremes_and_reference():
    # Confident and uniform over 10 classes -> IS = 10; all the same class -> IS = 1.
    confident = np.full((100, 10), -50.0)
    confident[np.arange(100), np.arange(100) % 10] = 50.0
    assert metrics.inception_score(confident, splits=1)["is_mean"] == pytest.approx(10.0, rel=1e-6)
    assert metrics.inception_score(np.tile([5.0, 0.0, 0.0], (20, 1)), splits=2)["is_mean"] == pytest.approx(1.0)
    logits = np.random.default_rng(6).normal(size=(40, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = np.exp(np.mean([(p[i] * np.log(p[i] / p.mean(0))).sum() for i in range(40)]))
    assert metrics.inception_score(logits, splits=1)["is_mean"] == pytest.approx(expected, rel=RTOL)


def test_fid_small_sample_bias_is_reported():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    report = metrics.fid_bias_report(real, fake, smaller=40)
    # Same distribution: the true FID is 0, and the estimate at 40 samples is much further from it.
    assert report["fid_small"] > 3 * report["fid_full"]
    assert (report["fid_full_count"], report["fid_small_count"]) == (400, 40)


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.fid(np.empty((0, 4)), np.ones((5, 4))), "empty"),
    (lambda: metrics.fid(np.ones((1, 4)), np.ones((5, 4))), "at least 2"),
    (lambda: metrics.fid(np.ones((5, 4)), np.ones((5, 3))), "feature dimensions differ"),
    (lambda: metrics.kid(np.ones((5, 4)), np.ones((5, 3))), "feature dimensions differ"),
    (lambda: metrics.precision_recall(np.ones((3, 4)), np.ones((9, 4))), "at least 4"),
    (lambda: metrics.fid(np.ones(4), np.ones((5, 4))), "2-d"),
    (lambda: metrics.fid(np.full((3, 2), np.nan), np.ones((5, 2))), "NaN"),
    (lambda: metrics.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), "mismatched"),
])
def test_bad_inputs_are_clear_errors(call, message):
    with pytest.raises(MetricError, match=message):
        call()
