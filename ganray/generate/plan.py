"""What a generation job makes, decided before any work starts: shards, per-face conditions, identity.

Everything here is a pure function of the job's parameters, so every worker (and every re-run)
agrees on which face ids form shard k, which seed and conditions face i gets, and the job id.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from ganray.config import GenerateConfig
from ganray.models.face import complete_conditions
from ganray.registry import VersionInfo

LAYOUT_VERSION = "ganray-generate/1"  # bump when the bytes a job writes change for the same parameters
# Columns of every row; each conditioned attribute adds a column of its own name.
ROW_COLUMNS = ("face_id", "seed", "image", "width", "height", "model_version", "psi", "conditions", "job_id", "file")


@dataclass(frozen=True)
class ShardRange:
    """Shard `index` holds face ids [start, stop)."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def shard_ranges(count: int, shard_size: int) -> list[ShardRange]:
    return [ShardRange(k, start, min(start + shard_size, count))
            for k, start in enumerate(range(0, count, shard_size))]


class ConditionPlan:
    """Face id -> its conditions: fixed values, a balanced cycle, and per-seed draws for the rest.

    Balanced attributes cycle through every combination of their values (in the model's value
    order): face i gets combination i mod C, so any C consecutive faces cover each group once and
    the whole set is balanced to within one face per group. Attributes neither fixed nor balanced
    are drawn from the face's seed.
    """

    def __init__(self, condition_values: dict[str, list[str]], fixed: dict[str, str], balance: list[str]):
        self.condition_values = condition_values
        self.fixed = dict(fixed)
        self.balance = list(balance)
        if not condition_values and (fixed or balance):
            raise ValueError(f"this model is unconditional: it takes no conditions "
                             f"(got {sorted([*fixed, *balance])})")
        clashing = sorted(set(condition_values) & set(ROW_COLUMNS))
        if clashing:
            raise ValueError(f"attributes {clashing} have the names of row columns {list(ROW_COLUMNS)}")
        complete_conditions(condition_values, fixed, seed=0)  # ValueError names a bad attribute or value
        for name in balance:
            if name not in condition_values:
                raise ValueError(f"cannot balance unknown attribute {name!r}: this model conditions on "
                                 f"{list(condition_values)}")
        self.combinations = list(itertools.product(*(condition_values[name] for name in balance)))

    def for_face(self, face_id: int, seed: int) -> dict[str, str]:
        chosen = dict(self.fixed)
        if self.balance:
            chosen.update(zip(self.balance, self.combinations[face_id % len(self.combinations)]))
        return complete_conditions(self.condition_values, chosen, seed)


def job_parameters(cfg: GenerateConfig, info: VersionInfo) -> dict[str, Any]:
    """The parameters that determine the output's bytes (and nothing else: no batch size, no replicas).

    Device and precision are in: a GPU or another autocast dtype rounds differently.
    """
    return {
        "layout": LAYOUT_VERSION,
        "model_version": info.version,
        "model_content_hash": info.content_hash,
        "resolution": info.resolution,
        "count": cfg.count,
        "shard_size": cfg.shard_size,
        "format": cfg.format,
        "psi": cfg.psi,
        "seed_offset": cfg.seed_offset,
        "conditions": dict(sorted(cfg.conditions.items())),
        "balance": list(cfg.balance),
        "precision": cfg.precision,
        "device": cfg.device,
    }


def job_id(parameters: dict[str, Any]) -> str:
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
