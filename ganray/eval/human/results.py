"""Results of a judgments database: win rates, Bradley–Terry scores, the fool rate (all with 95% CIs).

- win rate of an item: the share of its comparisons in which it was chosen as more real
  (Wilson score interval);
- Bradley–Terry: every item (model versions, generated outputs, and "real" when real faces were
  shown) is a player; fitted by MM, Wald intervals from the Fisher information
  (ganray.eval.human.bradley_terry);
- fool rate: over real-vs-generated pairs, the share in which the generated face was chosen as more
  real (Wilson interval); 0.5 means raters cannot tell them apart. Also per generated item.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ganray.eval.human import bradley_terry
from ganray.eval.human.store import REAL_ITEM, Judgment

CONFIDENCE = 0.95
METHODS = {
    "win_rate": "wins / comparisons; 95% Wilson score interval",
    "bradley_terry": "MM fit (Hunter 2004) of log-strengths centred to mean 0; 95% Wald interval from the Fisher "
                     "information (pseudo-inverse); prior_wins virtual wins each way per compared pair",
    "fool_rate": "share of real-vs-generated pairs where the generated face was chosen; 95% Wilson score interval",
}


def _proportion(successes: int, trials: int) -> dict[str, Any]:
    low, high = bradley_terry.wilson_interval(successes, trials)
    return {"rate": successes / trials, "ci_low": low, "ci_high": high, "successes": successes, "trials": trials}


def compute(judgments: list[Judgment], prior_wins: float = 0.5) -> dict[str, Any]:
    items = sorted({j.winner for j in judgments} | {j.loser for j in judgments})
    wins, comparisons = Counter(j.winner for j in judgments), Counter()
    for j in judgments:
        comparisons[j.winner] += 1
        comparisons[j.loser] += 1
    out: dict[str, Any] = {
        "judgments": len(judgments),
        "raters": dict(sorted(Counter(j.rater for j in judgments).items())),
        "kinds": dict(sorted(Counter(j.kind for j in judgments).items())),
        "left_chosen": _proportion(sum(j.choice == "left" for j in judgments), len(judgments)) if judgments else None,
        "items": items,
        "win_rates": {item: _proportion(wins[item], comparisons[item]) for item in items},
        "head_to_head": {},
        "bradley_terry": None,
        "fool_rate": None,
        "methods": METHODS,
        "confidence": CONFIDENCE,
        "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    index = {item: i for i, item in enumerate(items)}
    matrix = np.zeros((len(items), len(items)))
    for j in judgments:
        matrix[index[j.winner], index[j.loser]] += 1
    out["head_to_head"] = {a: {b: int(matrix[index[a], index[b]]) for b in items if b != a} for a in items}
    if len(items) >= 2:
        try:
            fit = bradley_terry.fit(matrix, prior_wins=prior_wins)
            low, high = fit.interval()
            out["bradley_terry"] = {
                "prior_wins": prior_wins,
                "scores": {item: {"score": float(fit.scores[i]), "std_error": float(fit.std_errors[i]),
                                  "ci_low": float(low[i]), "ci_high": float(high[i])} for i, item in enumerate(items)},
            }
        except bradley_terry.BradleyTerryError as e:
            out["bradley_terry"] = {"prior_wins": prior_wins, "error": str(e)}
    real_pairs = [j for j in judgments if j.kind == "real"]
    if real_pairs:
        fooled = [j.winner != REAL_ITEM for j in real_pairs]
        per_item: dict[str, list[bool]] = {}
        for j, f in zip(real_pairs, fooled):
            per_item.setdefault(j.loser if j.winner == REAL_ITEM else j.winner, []).append(f)
        out["fool_rate"] = {"overall": _proportion(sum(fooled), len(fooled)),
                            "by_item": {item: _proportion(sum(fs), len(fs)) for item, fs in sorted(per_item.items())}}
    return out


def _pct(p: dict[str, Any]) -> str:
    return f"{100 * p['rate']:5.1f}%  [{100 * p['ci_low']:5.1f}, {100 * p['ci_high']:5.1f}]  ({p['successes']}/{p['trials']})"


def format_text(results: dict[str, Any]) -> str:
    """The results as the lines `ganray eval human results` prints."""
    lines = [f"judgments: {results['judgments']} from {len(results['raters'])} rater(s)"]
    if not results["judgments"]:
        return lines[0] + " (nothing to report yet)"
    lines.append("win rate (chosen as more real), 95% CI:")
    lines += [f"  {item:<28} {_pct(p)}" for item, p in results["win_rates"].items()]
    bt = results["bradley_terry"]
    if bt is not None and "error" in bt:
        lines.append(f"Bradley-Terry: not estimable: {bt['error']}")
    elif bt is not None:
        lines.append(f"Bradley-Terry log-strength (mean 0), 95% CI (prior_wins {bt['prior_wins']}):")
        ranked = sorted(bt["scores"].items(), key=lambda kv: -kv[1]["score"])
        lines += [f"  {item:<28} {s['score']:+.3f}  [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]" for item, s in ranked]
    fool = results["fool_rate"]
    if fool is not None:
        lines.append(f"fool rate (generated chosen over real), 95% CI: {_pct(fool['overall'])}")
        lines += [f"  {item:<28} {_pct(p)}" for item, p in fool["by_item"].items()]
    lines.append(f"left side chosen: {_pct(results['left_chosen'])}")
    return "\n".join(lines)
