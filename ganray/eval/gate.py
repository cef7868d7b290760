"""Promotion gates: an alias with a gate moves only to a version whose recorded metric beats the
current holder's by the gate's margin, or when forced; every decision goes to the registry's
append-only decisions log with both versions' results.

A gate (stored per alias in the registry, `ganray registry gate ALIAS ...`):

    {"metric": "fid", "margin": 1.0, "evaluation": "default"}

- `evaluation`: the name the results were recorded under (`eval.record_as`);
- `metric`: fid or kid_mean (lower is better), precision or recall (higher is better);
- `margin`: lower-is-better metrics need candidate <= holder - margin; higher-is-better
  candidate >= holder + margin.

`production`, the alias Serve follows by default, is gated from a registry's creation: until a gate
is set or removed for it, its gate is the built-in one in DEFAULT_GATES (lower FID in the
evaluation `default`, margin 0), so a version nobody evaluated cannot take it without `force`.
Other aliases have no gate unless one is set.

Rules, in order: an alias without a gate moves as always (nothing is logged); moving an alias to
the version it already names is allowed; the candidate must have the evaluation; an alias with
no holder yet is allowed; the holder must have it too, measured the same way (same extractor and
weights hash, resize mode, reference dataset and sample counts: `comparable` in the results), and
the candidate must beat it by the margin. `force` moves the alias whatever the rules say and logs
what they said. The check and the move are two steps: two promotions racing on one alias are
each checked against the holder they saw.
"""
from __future__ import annotations

import getpass
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from ganray.registry import Registry, RegistryError

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"fid": True, "kid_mean": True, "precision": False, "recall": False}
DEFAULT_EVALUATION = "default"


@dataclass(frozen=True)
class Decision:
    alias: str
    candidate: str
    holder: str | None
    outcome: str  # allowed | refused | forced | ungated
    reason: str
    decision_id: str | None = None
    gate: dict[str, Any] | None = None

    @property
    def moved(self) -> bool:
        return self.outcome in ("allowed", "forced", "ungated")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (e.g. a container user without a passwd entry)
        return os.environ.get("USER", "unknown")


def make_gate(metric: str = "fid", margin: float = 0.0, evaluation: str = DEFAULT_EVALUATION) -> dict[str, Any]:
    if metric not in LOWER_IS_BETTER:
        raise RegistryError(f"unknown gate metric {metric!r}: one of {sorted(LOWER_IS_BETTER)}")
    if not margin >= 0:
        raise RegistryError(f"the gate margin must be >= 0, got {margin}")
    return {"metric": metric, "margin": float(margin), "evaluation": evaluation}


# Built-in gates, marked as such ("built_in"), of aliases for which no gate was ever set or removed.
DEFAULT_GATES = {"production": {**make_gate("fid", 0.0, DEFAULT_EVALUATION), "built_in": True}}


def gate_of(registry: Registry, alias: str) -> dict[str, Any] | None:
    """The gate `alias` is promoted through: its stored one, else its built-in one (None: no gate)."""
    built_in = DEFAULT_GATES.get(alias)
    return registry.gate(alias, default=dict(built_in) if built_in else None)


def describe(gate: dict[str, Any]) -> str:
    """A gate in words, for messages."""
    lower = LOWER_IS_BETTER[gate["metric"]]
    return (f"{gate['metric']} {'lower' if lower else 'higher'} than the holder's by at least {float(gate['margin']):g}"
            f" in evaluation {gate['evaluation']!r}" + (" (built in)" if gate.get("built_in") else ""))


def _metric(result: dict[str, Any] | None, metric: str) -> float | None:
    value = (result or {}).get("metrics", {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def judge(gate: dict[str, Any], candidate: str, holder: str | None, candidate_result: dict | None,
          holder_result: dict | None) -> tuple[bool, str]:
    """(allowed, why) for moving a gated alias from `holder` to `candidate`."""
    metric, margin, name = gate["metric"], float(gate["margin"]), gate["evaluation"]
    if holder == candidate:
        return True, f"the alias already names {candidate}"
    ours = _metric(candidate_result, metric)
    if ours is None:
        return False, (f"{candidate} has no recorded {metric} in evaluation {name!r}: "
                       f"run `ganray eval` on it with eval.record_as={name}")
    if holder is None:
        return True, f"no current holder; {candidate} has {metric} {ours:.6g}"
    theirs = _metric(holder_result, metric)
    if theirs is None:
        return False, f"the holder {holder} has no recorded {metric} in evaluation {name!r}: nothing to beat it by"
    if candidate_result.get("comparable") != holder_result.get("comparable"):
        return False, (f"{candidate} and {holder} were not measured the same way (extractor, resize, reference "
                       f"or sample counts differ): their {metric} values cannot be compared")
    lower = LOWER_IS_BETTER[metric]
    beats = ours <= theirs - margin if lower else ours >= theirs + margin
    relation = f"{metric} {ours:.6g} vs {theirs:.6g} of {holder} (margin {margin:g}, " \
               f"{'lower' if lower else 'higher'} is better)"
    return beats, ("beats: " if beats else "does not beat: ") + relation


def promote(registry: Registry, ref: str, alias: str, force: bool = False) -> Decision:
    """Move `alias` to `ref` if its gate allows (or `force`); returns the decision, logged if gated."""
    candidate = registry.resolve(ref)
    gate = gate_of(registry, alias)
    if gate is None:
        registry.promote(candidate, alias)
        return Decision(alias, candidate, None, "ungated", "the alias has no gate")
    holder = registry.aliases().get(alias)  # None: no alias yet; a corrupt alias file raises, never "no holder"
    name = gate["evaluation"]
    candidate_result = registry.evaluation(candidate, name)
    holder_result = registry.evaluation(holder, name) if holder else None
    allowed, reason = judge(gate, candidate, holder, candidate_result, holder_result)
    outcome = "allowed" if allowed else ("forced" if force else "refused")
    if outcome == "forced":
        reason = f"forced past the gate, which refused: {reason}"
        log.warning("promotion of %s to %s forced: %s", candidate, alias, reason)
    decision_id = registry.append_decision({
        "alias": alias, "candidate": candidate, "holder": holder, "outcome": outcome, "reason": reason,
        "gate": gate, "candidate_result": candidate_result, "holder_result": holder_result,
        "user": _user(), "host": socket.gethostname(),
    })
    if outcome != "refused":
        registry.promote(candidate, alias)
    return Decision(alias, candidate, holder, outcome, reason, decision_id, gate)
