"""Bradley–Terry, Wilson intervals and the results of a judgments database, against known answers."""
from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from ganray.eval.human import bradley_terry, results
from ganray.eval.human.store import AlreadyAnswered, JudgmentStore, UnknownPair


def test_two_players_match_the_closed_form_and_its_fisher_interval():
    # MLE: p1/p2 = w12/w21, so theta1 - theta2 = log(w12/w21); Var(theta1 - theta2) = 1/(n q (1-q))
    # with q = w12/n; centred scores are +-half the difference, each with half its standard error.
    fit = bradley_terry.fit(np.array([[0, 30], [10, 0]]))
    diff = math.log(30 / 10)
    assert fit.scores == pytest.approx([diff / 2, -diff / 2], abs=1e-9)
    se_diff = 1 / math.sqrt(40 * 0.75 * 0.25)
    assert fit.std_errors == pytest.approx([se_diff / 2, se_diff / 2], rel=1e-6)
    # The prior adds prior_wins to each direction: (30.5, 10.5).
    assert bradley_terry.fit(np.array([[0, 30], [10, 0]]), prior_wins=0.5).scores[0] == pytest.approx(
        math.log(30.5 / 10.5) / 2, abs=1e-9)


def test_recovers_known_strengths_from_simulated_comparisons():
    rng = np.random.default_rng(0)
    truth = np.array([1.0, 0.4, -0.3, -1.1])  # centred log-strengths
    wins = np.zeros((4, 4))
    for _ in range(6000):
        i, j = rng.choice(4, size=2, replace=False)
        p_i = 1 / (1 + math.exp(truth[j] - truth[i]))
        winner, loser = (i, j) if rng.random() < p_i else (j, i)
        wins[winner, loser] += 1
    fit = bradley_terry.fit(wins)
    low, high = fit.interval()
    assert np.all((low < truth) & (truth < high)), (fit.scores, fit.std_errors)
    assert np.abs(fit.scores - truth).max() < 0.1
    assert abs(fit.scores.sum()) < 1e-9
    # The MM fixed point is the MLE: the gradient of the log-likelihood vanishes there.
    p = np.exp(fit.scores)
    games = wins + wins.T
    gradient = wins.sum(1) - (games * p[:, None] / (p[:, None] + p[None, :])).sum(1)
    assert np.abs(gradient).max() < 1e-6


def test_a_player_that_wins_everything_needs_a_prior():
    wins = np.array([[0, 5, 4], [0, 0, 3], [0, 2, 0]])  # player 0 never lost
    with pytest.raises(bradley_terry.BradleyTerryError, match="won \\(or lost\\) every comparison"):
        bradley_terry.fit(wins)
    fit = bradley_terry.fit(wins, prior_wins=0.5)
    assert np.isfinite(fit.scores).all() and fit.scores[0] == fit.scores.max()
    with pytest.raises(bradley_terry.BradleyTerryError, match="square"):
        bradley_terry.fit(np.zeros((1, 1)))


def test_wilson_interval_known_values_and_edges():
    # 8 of 10, z = 1.96: the textbook Wilson interval (0.4902, 0.9433).
    low, high = bradley_terry.wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert bradley_terry.wilson_interval(0, 5)[0] == 0.0 and bradley_terry.wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        bradley_terry.wilson_interval(0, 0)


def fill(store: JudgmentStore, kind: str, left: str, right: str, choice: str, n: int, rater: str = "ann") -> None:
    for _ in range(n):
        pair = store.issue(kind, rater, (left, {}, b"L"), (right, {}, b"R"))
        store.choose(pair, choice)


def test_results_win_rates_bradley_terry_and_fool_rate(tmp_path):
    store = JudgmentStore(tmp_path / "j.db")
    fill(store, "models", "model:v1", "model:v2", "left", 6)    # v1 shown left, chosen 6x
    fill(store, "models", "model:v2", "model:v1", "left", 2)    # v2 shown left, chosen 2x
    fill(store, "real", "model:v1", "real", "left", 3, "bob")   # fooled 3x by v1
    fill(store, "real", "real", "model:v1", "left", 7, "bob")   # real chosen 7x
    out = results.compute(store.judgments(), prior_wins=0.0)
    assert out["judgments"] == 18 and out["raters"] == {"ann": 8, "bob": 10}
    assert out["win_rates"]["model:v2"]["rate"] == pytest.approx(2 / 8)
    assert out["head_to_head"]["model:v1"] == {"model:v2": 6, "real": 3}
    fool = out["fool_rate"]["overall"]
    assert (fool["successes"], fool["trials"]) == (3, 10)
    assert (fool["ci_low"], fool["ci_high"]) == pytest.approx(bradley_terry.wilson_interval(3, 10))
    assert out["fool_rate"]["by_item"]["model:v1"]["successes"] == 3
    scores = out["bradley_terry"]["scores"]
    assert scores["real"]["score"] > scores["model:v1"]["score"] > scores["model:v2"]["score"]
    assert out["left_chosen"]["rate"] == 1.0
    text = results.format_text(out)
    assert "fool rate" in text and "30.0%" in text and "Bradley-Terry" in text


def test_store_refuses_unknown_pairs_second_answers_and_foreign_files(tmp_path):
    store = JudgmentStore(tmp_path / "j.db")
    with pytest.raises(UnknownPair):
        store.choose("p-0000000000000000", "left")
    pair = store.issue("models", "ann", ("a", {"seed": 1}, b"L"), ("b", {"seed": 1}, b"R"))
    store.choose(pair, "right")
    with pytest.raises(AlreadyAnswered):
        store.choose(pair, "left")
    assert [(j.winner, j.loser, j.choice) for j in store.judgments()] == [("b", "a", "right")]
    # The database itself refuses a choice row for a pair it never issued (foreign key).
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO choices VALUES ('p-ffffffffffffffff', 'now', 'left', 'a', 'b')")
    (tmp_path / "other.db").write_bytes(b"not sqlite at all, just bytes" * 10)
    with pytest.raises(ValueError, match="not a ganray human-evaluation database"):
        JudgmentStore(tmp_path / "other.db", create=False)
    with pytest.raises(FileNotFoundError):
        JudgmentStore(tmp_path / "missing.db", create=False)
