"""Pairwise-preference statistics in numpy: Bradley–Terry scores, win rates, proportions with CIs.

Bradley–Terry: P(i beats j) = p_i / (p_i + p_j). The strengths are fitted by Hunter's (2004) MM
iteration, p_i <- W_i / sum_j n_ij / (p_i + p_j), which increases the likelihood every step and
converges to the maximum-likelihood estimate whenever one exists (the "beats" graph is strongly
connected). Scores are reported as log-strengths theta_i = log p_i centred to mean 0 (only
differences are identified).

Confidence intervals come from the Fisher information of theta at the estimate:
I_ii = sum_j n_ij q_ij, I_ij = -n_ij q_ij with q_ij = p_i p_j / (p_i + p_j)^2. I is singular along
(1, ..., 1) (adding a constant to every theta changes nothing); its Moore–Penrose pseudo-inverse is
the covariance of the centred estimate, and theta_i +- z * sqrt(cov_ii) the Wald interval.

`prior_wins` adds that many virtual wins in each direction of every pair that was compared at least
once. With 0 the fit is the plain MLE (which is infinite when a player wins or loses every
comparison: `BradleyTerryError`); a small prior such as 0.5 keeps every score finite and pulls
scores slightly towards each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


class BradleyTerryError(ValueError):
    """Comparisons from which no finite Bradley–Terry fit exists."""


@dataclass(frozen=True)
class BradleyTerryFit:
    scores: np.ndarray  # theta_i = log p_i, mean 0
    std_errors: np.ndarray  # sqrt of the diagonal of pinv(Fisher information)
    covariance: np.ndarray
    iterations: int

    def interval(self, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
        return self.scores - z * self.std_errors, self.scores + z * self.std_errors


def _strongly_connected(wins: np.ndarray) -> bool:
    """Whether every player reaches every other through "beat" edges (i -> j when i beat j)."""
    n = len(wins)
    adjacency = wins > 0
    for graph in (adjacency, adjacency.T):
        seen, stack = {0}, [0]
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(graph[i]):
                if int(j) not in seen:
                    seen.add(int(j))
                    stack.append(int(j))
        if len(seen) != n:
            return False
    return True


def fit(wins: np.ndarray, prior_wins: float = 0.0, tol: float = 1e-10, max_iter: int = 100_000) -> BradleyTerryFit:
    """Fit Bradley–Terry to a win matrix: wins[i, j] = times i was preferred over j (diagonal ignored)."""
    w = np.array(wins, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 2:
        raise BradleyTerryError(f"need a square win matrix of at least 2 players, got shape {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise BradleyTerryError("win counts must be finite and >= 0")
    if prior_wins < 0:
        raise BradleyTerryError(f"prior_wins must be >= 0, got {prior_wins}")
    np.fill_diagonal(w, 0.0)
    games = w + w.T
    if prior_wins > 0:
        w = w + prior_wins * (games > 0)
        games = w + w.T
    if not _strongly_connected(w):
        raise BradleyTerryError(
            "no finite Bradley–Terry fit: some player won (or lost) every comparison against the rest, or the "
            "comparisons fall into separate groups; collect more comparisons or use a prior (prior_wins > 0)")
    total_wins = w.sum(axis=1)
    p = np.ones(len(w))
    for iteration in range(1, max_iter + 1):
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = total_wins / denominator
        new /= math.exp(np.log(new).mean())  # geometric mean 1: theta centred
        converged = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if converged:
            break
    q = games * np.outer(p, p) / (p[:, None] + p[None, :]) ** 2
    information = np.diag(q.sum(axis=1)) - q
    covariance = np.linalg.pinv(information)
    theta = np.log(p)
    return BradleyTerryFit(theta - theta.mean(), np.sqrt(np.clip(np.diag(covariance), 0, None)), covariance, iteration)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sensible at 0/n and n/n, unlike the Wald interval)."""
    if trials <= 0:
        raise ValueError("a proportion needs at least one trial")
    phat = successes / trials
    denominator = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
