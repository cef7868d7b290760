"""Balancing an import over label attributes (`import.balance`): resample down, resample up, or weights.

A stratum is one combination of values of the chosen attributes among the kept rows. Every mode is a
pure function of the rows' content hashes, labels and `seed`, never of listing order or Ray's
scheduling, so the same source and config give the same dataset byte for byte:

- resample_down: every stratum keeps as many rows as the smallest one has; which rows is decided by
  ranking each stratum's rows by sha256("{seed}/{content_hash}") (a seeded shuffle that a new or
  removed file elsewhere does not disturb);
- resample_up: every stratum is filled to the size of the largest one: each row is repeated
  target // n times and the first target % n rows of the same seeded ranking once more;
- weights: every row is kept once, with `weight` = N / (S * n_s) (N rows, S strata, n_s rows in its
  stratum): each stratum then weighs N / S, and the weights average 1. Training draws rows with
  probability proportional to their weight (ganray.data.dataset.EpochSampler).

Rows keep their sorted path order; a repeated row's copies follow it.
Strata that the attributes' value lists allow but no kept row has are listed as `empty_strata`:
they cannot be filled by resampling, and the balance is over the strata that exist.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

from ganray.config import ConfigError, ImportBalanceConfig


@dataclass(frozen=True)
class Balanced:
    copies: list[int]  # per input row: how many times it is written (0: left out)
    weights: list[float] | None  # per input row (mode weights), else None
    section: dict  # the manifest's `balance` section


def _rank(seed: int, content_hash: str) -> str:
    return hashlib.sha256(f"{seed}/{content_hash}".encode()).hexdigest()


def check_attributes(cfg: ImportBalanceConfig, attributes: dict[str, list[str]]) -> None:
    unknown = [a for a in cfg.attributes if a not in attributes]
    if unknown:
        raise ConfigError(f"import.balance.attributes: {unknown} are not label columns of this import "
                          f"(labels: {list(attributes) or 'none: the import is unlabeled'})")


def histograms(rows: list[dict], attributes: dict[str, list[str]], amounts: list[float]) -> dict[str, dict]:
    """Per attribute, value -> total amount (row count, copies or weight) over `rows`."""
    out: dict[str, dict] = {}
    for name, values in attributes.items():
        totals = [0.0] * len(values)
        for row, amount in zip(rows, amounts):
            totals[row[name]] += amount
        out[name] = {v: (int(t) if float(t).is_integer() else round(t, 9)) for v, t in zip(values, totals)}
    return out


def balance(rows: list[dict], attributes: dict[str, list[str]], cfg: ImportBalanceConfig) -> Balanced:
    """`rows`: the kept rows in output order, each with `content_hash` and one value index per attribute."""
    check_attributes(cfg, attributes)
    names = list(cfg.attributes)
    strata: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault(tuple(row[n] for n in names), []).append(i)
    sizes = {key: len(members) for key, members in strata.items()}
    copies = [1] * len(rows)
    weights: list[float] | None = None
    target: int | None = None
    if cfg.mode == "weights":
        weights = [0.0] * len(rows)
        for members in strata.values():
            for i in members:
                weights[i] = len(rows) / (len(strata) * len(members))
    else:
        target = min(sizes.values()) if cfg.mode == "resample_down" else max(sizes.values())
        for members in strata.values():
            ranked = sorted(members, key=lambda i: (_rank(cfg.seed, rows[i]["content_hash"]), i))
            whole, extra = divmod(target, len(members))
            for position, i in enumerate(ranked):
                copies[i] = whole + (position < extra)
    amounts = weights if weights is not None else copies
    labels_of = lambda key: {n: attributes[n][v] for n, v in zip(names, key)}  # noqa: E731
    section = {
        "attributes": names,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "target_per_stratum": target if target is not None else len(rows) / len(strata),
        "strata": [{"labels": labels_of(key), "before": sizes[key],
                    "after": _number(sum(amounts[i] for i in strata[key])),
                    **({"weight": weights[strata[key][0]]} if weights is not None else {})}
                   for key in sorted(strata)],
        "empty_strata": [labels_of(key) for key in itertools.product(*(range(len(attributes[n])) for n in names))
                         if key not in strata],
        "before": {"rows": len(rows), "label_histograms": histograms(rows, attributes, [1] * len(rows))},
        "after": {"rows": sum(copies), "label_histograms": histograms(rows, attributes, amounts),
                  **({"weighted": True} if weights is not None else {})},
    }
    return Balanced(copies, weights, section)


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 9)
