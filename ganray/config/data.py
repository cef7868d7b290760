"""Where training images come from (`data:`), and `ganray data import` (`import:`): sources,
labels, filters and balancing of an imported dataset."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ganray.config.base import RAY_ADDRESS_FIELD, Section, _power_of_two


class SyntheticData(Section):
    """The built-in procedural face dataset (ganray.data.synthetic): no download, deterministic."""

    count: int = Field(10_000, gt=0, description="number of faces (face i is always the same face)")
    seed: int = Field(0, ge=0, description="dataset seed; face i of seed s never changes")


class DataConfig(Section):
    """Where training images come from: the built-in faces, or shards made by `ganray data import`."""

    source: Literal["synthetic", "shards"] = "synthetic"
    url: str | None = Field(None, description="shards folder (local path or s3://) when source=shards")
    synthetic: SyntheticData = SyntheticData()
    resolution: int = 64
    hflip: bool = Field(True, description="random horizontal flip augmentation")

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int) -> int:
        return _power_of_two(v, 8, 1024, "resolution")

    @model_validator(mode="after")
    def _url_for_shards(self) -> "DataConfig":
        if self.source == "shards" and not self.url:
            raise ValueError("data.url is required when data.source is 'shards'")
        return self


# UTKFace's age bands by default: 0-2, 3-9, 10-19, ..., 60-69, 70+ (ganray.data.bands names them).
UTKFACE_AGE_BAND_STARTS = (0, 3, 10, 20, 30, 40, 50, 60, 70)


class LabelConfig(Section):
    """Where labels come from: a named preset, a file-name regex, or a CSV/JSON sidecar (one at most).

    With none of them the import is unlabeled. A file whose labels cannot be found is dropped
    (reason `bad_label`); label values are numbered in sorted order (numeric when all are numbers).
    """

    preset: Literal["utkface"] | None = Field(None, description="utkface: AGE_GENDER_RACE_*.jpg names")
    pattern: str | None = Field(
        None, description="regex matched against the whole file name; its named groups are the label columns"
    )
    sidecar: str | None = Field(
        None, description="CSV or JSON file (path or URL) with one record per image: file name + labels"
    )
    sidecar_key: str = Field("file", description="sidecar column holding the file name (or path inside src)")
    age_band_starts: list[int] = Field(
        default_factory=lambda: list(UTKFACE_AGE_BAND_STARTS), min_length=1,
        description="utkface: first age (years) of each age_group band; band i covers "
                    "[start_i, start_(i+1) - 1], the last one start_n and older (names: ganray.data.bands)")

    @field_validator("age_band_starts")
    @classmethod
    def _band_starts(cls, v: list[int]) -> list[int]:
        if v[0] != 0 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"age_band_starts must start at 0 and increase strictly, got {v}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            compiled = re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regex: {e}") from None
        if not compiled.groupindex:
            raise ValueError("needs at least one named group, e.g. (?P<smile>yes|no)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "LabelConfig":
        chosen = [k for k in ("preset", "pattern", "sidecar") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one label source, got {' and '.join(chosen)}")
        return self


class ImportBalanceConfig(Section):
    """Balance the imported rows over label attributes (ganray.data.balance); the manifest's `balance`
    section shows the counts per stratum before and after."""

    attributes: list[str] = Field(..., min_length=1, description="label columns whose value combinations "
                                                                 "(strata) are balanced")
    mode: Literal["resample_down", "resample_up", "weights"] = Field(
        ..., description="resample_down: every stratum cut to the smallest one's size; resample_up: every "
                         "stratum filled to the largest one's size by repeating rows; weights: rows kept once "
                         "with a `weight` column that training samples by")
    seed: int = Field(0, ge=0, description="which rows are left out or repeated (a seeded ranking of content hashes)")

    @field_validator("attributes")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"lists an attribute twice: {names}")
        return names


class ImportConfig(Section):
    """`ganray data import SRC DST`: a folder or ZIP of images -> Parquet shards + manifest.json."""

    src: str = Field(..., description="folder or .zip of images (local path or fsspec URL)")
    dst: str = Field(..., description="output folder for Parquet shards + manifest")
    resolution: int = 64
    labels: LabelConfig = LabelConfig()
    min_size: int = Field(32, gt=0, description="drop images whose shorter side is smaller")
    blank_std: float = Field(3.0, ge=0, description="drop images whose pixel std is below this")
    blur_threshold: float = Field(
        1.0, ge=0, description="drop images whose variance of the Laplacian (luma 0-255, centre crop "
        "shrunk to 128 px) is below this; 1.0 keeps every UTKFace photo (their lowest is ~1.8)"
    )
    deduplicate: bool = Field(
        True, description="drop later copies of byte-identical files (first in sorted path order is kept)"
    )
    shard_rows: int = Field(2000, gt=0, description="rows per Parquet shard (the last one may hold fewer)")
    batch_size: int = Field(
        1024, gt=0, description="images per preprocessing task (each task opens a ZIP source once)"
    )
    examples_per_reason: int = Field(20, ge=0, description="dropped file names listed per reason in the manifest")
    overwrite: bool = Field(
        False, description="write into a non-empty dst that is not a previous import (files of the same name are replaced)"
    )
    balance: ImportBalanceConfig | None = Field(None, description="balance the rows over label attributes "
                                                                  "(None: every kept row once)")
    leave_out_heldout: float | None = Field(
        None, gt=0, lt=1, description="leave out the images whose content hash falls in the first FRACTION of "
        "the unit interval (rule sha256-unit-interval/1): a classifier's heldout.fraction plus "
        "heldout.validation_fraction, so a generator trained on this import never sees its test images")
    # The data version this import becomes (ganray.data.versions): where it is listed, what it derives from.
    catalog: str | None = Field(None, description="data catalog that lists this version (None: $GANRAY_DATA_CATALOG, "
                                                  "else the folder holding dst)")
    parent: str | None = Field(None, description="the data version this import derives from: a version id in the "
                                                 "catalog or an import's folder (None: the import it replaces at dst, "
                                                 "if that one came from the same src)")
    license: str | None = Field(None, description="license of the source images (an SPDX id such as cc-by-4.0, or other)")
    license_note: str | None = Field(None, description="terms in words, e.g. 'non-commercial research use only'")

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int) -> int:
        return _power_of_two(v, 8, 1024, "resolution")


class ImportJob(Section):
    ray_address: str | None = RAY_ADDRESS_FIELD
    import_: ImportConfig = Field(..., alias="import")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
