"""What a generation job makes, decided before any work starts: shards, per-face conditions, identity.

Everything here is a pure function of the job's parameters, so every worker (and every re-run)
agrees on which face ids form shard k, which seed and conditions face i gets, and the job id.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import dataclass
from typing import Any

from ganray.config import GenerateConfig
from ganray.models.face import complete_conditions, cpu_has_amx, cpu_has_native_bf16, resolve_precision
from ganray.registry import VersionInfo

LAYOUT_VERSION = "ganray-generate/2"  # bump when the bytes a job writes change for the same parameters
# How face ids map to balanced combinations (ConditionPlan.combination); part of the job identity,
# so that an output balanced in another order is never resumed with this one.
BALANCE_ORDER = "crt-block-shift/1"
# Jobs with labels (generate.labeler / quality / closed_loop) add this and their settings to the identity;
# jobs without them keep the identity (and bytes) they had before labels existed.
LABELS_LAYOUT = "ganray-labels/1"
# Columns of every row; each conditioned attribute adds a column of its own name.
ROW_COLUMNS = ("face_id", "seed", "image", "width", "height", "model_version", "psi", "conditions", "job_id", "file")
# Columns of a style-mixing job's rows (after `psi`); a job without mixing writes the rows it always did.
MIXING_COLUMNS = ("mix_seed", "crossover")


@dataclass(frozen=True)
class StyleMix:
    """Style mixing in a job: face i takes its styles from w index `crossover` on from seed
    `seed_offset + i` (a second seed per face, as deterministic as the first)."""

    seed_offset: int
    crossover: int

    def seeds(self, face_ids: range | list[int]) -> list[int]:
        return [self.seed_offset + i for i in face_ids]


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


def planned_shards(parameters: dict[str, Any]) -> list[ShardRange]:
    """A job's shards from its job.json parameters: a closed-loop job's run stratum after stratum
    (each stratum's quota in shards of shard_size, ganray/generate/closedloop.py), others by count."""
    shard_size = int(parameters["shard_size"])
    closed = parameters.get("closed_loop")
    if not closed:
        return shard_ranges(int(parameters["count"]), shard_size)
    shards: list[ShardRange] = []
    start = 0
    for quota in closed["quotas"].values():
        for lo in range(0, int(quota), shard_size):
            shards.append(ShardRange(len(shards), start + lo, start + min(lo + shard_size, int(quota))))
        start += int(quota)
    return shards


class ConditionPlan:
    """Face id -> its conditions: fixed values, a balanced order, and per-seed draws for the rest.

    Balanced attributes (sizes n_1..n_k, cycle C = n_1*...*n_k) follow an order of the joint
    combinations with period C in which each attribute is balanced on its own too. Attribute j
    (with C_j = n_1*...*n_j and L_j = lcm(C_(j-1), n_j)) takes value index

        a_j(i) = (i + (i mod C_j) // L_j) mod n_j

    i.e. it counts through its values one face at a time, and steps one value further at every
    L_j-th face of each C_j-cycle. Within a block of L_j faces, (first j-1 attributes, a_j) are
    the pairs (x mod C_(j-1), x + m mod n_j) of the Chinese remainder theorem, whose difference is
    fixed modulo g = gcd(C_(j-1), n_j); the block number m = 0..g-1 shifts that difference, so the
    g blocks together hold every combination once. Hence:

    - every C consecutive faces hold each combination once: the joint counts of any run of faces
      differ by at most one;
    - each attribute's counts in any prefix (faces 0..count-1) differ by at most one: whole
      blocks are exactly balanced and the part of a block is a run of consecutive values;
    - in any run of faces that does not start at 0 (a shard), each attribute's counts differ by
      at most one when the sizes are pairwise coprime (no shifts: every attribute is periodic),
      and by at most two otherwise (a block's tail and another block's head). One is not reachable
      in general: for 2 x 2 in shards of 9 no order at all keeps every prefix and every shard of
      at least one cycle within one, and for 3 x 3 no periodic order does (both by exhaustive
      search in tests/test_generate_balance.py).

    Attributes neither fixed nor balanced are drawn from the face's seed.
    """

    def __init__(self, condition_values: dict[str, list[str]], fixed: dict[str, str], balance: list[str]):
        self.condition_values = condition_values
        self.fixed = dict(fixed)
        self.balance = list(balance)
        if not condition_values and (fixed or balance):
            raise ValueError(f"this model is unconditional: it takes no conditions "
                             f"(got {sorted([*fixed, *balance])})")
        clashing = sorted(set(condition_values) & {*ROW_COLUMNS, *MIXING_COLUMNS})
        if clashing:
            raise ValueError(f"attributes {clashing} have the names of row columns "
                             f"{[*ROW_COLUMNS, *MIXING_COLUMNS]}")
        complete_conditions(condition_values, fixed, seed=0)  # ValueError names a bad attribute or value
        for name in balance:
            if name not in condition_values:
                raise ValueError(f"cannot balance unknown attribute {name!r}: this model conditions on "
                                 f"{list(condition_values)}")
        self.sizes = [len(condition_values[name]) for name in balance]
        # (cycle C_j, block L_j) per balanced attribute, see the class docstring.
        self._periods: list[tuple[int, int]] = []
        cycle = 1
        for n in self.sizes:
            block = math.lcm(cycle, n)
            cycle *= n
            self._periods.append((cycle, block))
        self.cycle = cycle

    def combination(self, face_id: int) -> tuple[int, ...]:
        """The value indices of the balanced attributes for face `face_id` (period `self.cycle`)."""
        return tuple((face_id + (face_id % cycle) // block) % n
                     for n, (cycle, block) in zip(self.sizes, self._periods))

    def for_face(self, face_id: int, seed: int) -> dict[str, str]:
        chosen = dict(self.fixed)
        for name, index in zip(self.balance, self.combination(face_id)):
            chosen[name] = self.condition_values[name][index]
        return complete_conditions(self.condition_values, chosen, seed)


def render_environment(device: str, precision: str) -> dict[str, str]:
    """What, besides the job's parameters, decides a face's bytes: the torch build, the device kind,
    and the autocast dtype the job's `precision` means there (resolve_precision: "auto" is bf16 or fp32
    by the CPU's bf16 kind, bf16 or fp16 by the GPU's compute capability).

    The CPU kind is torch's kernel dispatch level (e.g. AVX512, AVX2), then how the CPU computes bf16:
    " AMX" (tiles), " AVX512-BF16" (vector instructions, no AMX: AMD EPYC Zen 4/5), or nothing (oneDNN's
    reference kernels). Kernels of another level or bf16 kind may round differently (a StyleGAN2's
    channels_last form was exact on AMX and not with AVX512-BF16). The GPU kind is its name and
    compute capability.
    """
    import torch

    if device == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        kind = f"cuda {torch.cuda.get_device_name(0)} sm_{major}{minor}"
    else:
        kind = f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
        kind += " AMX" if cpu_has_amx() else " AVX512-BF16" if cpu_has_native_bf16() else ""
    return {"torch": torch.__version__, "device_kind": kind, "precision": resolve_precision(precision, device)}


def job_parameters(cfg: GenerateConfig, info: VersionInfo, environment: dict[str, str]) -> dict[str, Any]:
    """The parameters that determine the output's bytes (and nothing else: no batch size, no replicas).

    Device, device kind, torch version and precision are in: another GPU, another torch build
    or another autocast dtype may round differently (`environment` is render_environment's; its
    precision is the resolved one, so "auto" and what it resolves to name the same job).
    """
    return {
        "layout": LAYOUT_VERSION,
        "balance_order": BALANCE_ORDER,
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
        "precision": environment["precision"],
        "device": cfg.device,
        "device_kind": environment["device_kind"],
        "torch": environment["torch"],
        # Only when mixing: a job without it keeps the identity (and job id) it always had.
        **({"mix_seed_offset": cfg.mix_seed_offset, "crossover": cfg.crossover}
           if cfg.mix_seed_offset is not None else {}),
    }


def style_mix(cfg: GenerateConfig) -> StyleMix | None:
    return None if cfg.mix_seed_offset is None else StyleMix(cfg.mix_seed_offset, cfg.crossover)


def job_id(parameters: dict[str, Any]) -> str:
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
