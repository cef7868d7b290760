"""What every job config shares: the error type, the strict base section, and the value types
and fields more than one job uses (precision, truncation psi, `ray_address`, registry, run)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A config that cannot run. The message names the offending key."""


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# One definition of each shared value type (used by training, the bulk job and Serve alike).
# Autocast dtype; fp16 needs a GPU. "auto": the fastest one the device computes in hardware, resolved
# where the work runs (ganray.models.face.resolve_precision): bf16 on a CPU with AMX or AVX512-BF16 and
# on Ampere-or-later GPUs, fp32 on other CPUs, fp16 on older GPUs.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PSI_MIN, PSI_MAX = 0.0, 2.0  # truncation psi: 1 = off, < 1 more typical faces, > 1 more varied


def _psi_field(default: float, description: str):
    return Field(default, ge=PSI_MIN, le=PSI_MAX, description=description)


# Every job config has `ray_address` at its top level.
RAY_ADDRESS_FIELD = Field(None, description="Ray cluster to join; None: $RAY_ADDRESS (set by `ray job submit`), "
                                            "else a local Ray started and stopped by the command")


def _power_of_two(value: int, lo: int, hi: int, name: str) -> int:
    if value < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name} must be a power of two between {lo} and {hi}, got {value}")
    return value


class RegistryConfig(Section):
    url: str | None = Field(None, description="registry URL (local path or s3://); None = $GANRAY_REGISTRY "
                                              "or ./registry")


class RunConfig(Section):
    name: str = Field("ganray", min_length=1, description="run name: re-running the same name resumes it")
    storage_path: str = Field("./runs", description="local path or s3:// URL for checkpoints and logs")
