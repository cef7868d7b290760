"""Which columns of an output the studio shows and filters.

Rows are read through ganray.data.manifest.read_face_rows, which gives PNG bytes in `image` and
label strings whatever the shard's layout (plain, or Hugging Face Image and ClassLabel); here the
schema decides which columns are facets (filter by value) and which are ranges (min/max).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from ganray.data.hf_features import features_of

IMAGE = "image"
# Bookkeeping the detail view shows but nobody filters by (or, for `image`, shown as the picture).
NOT_FILTERED = {IMAGE, "conditions", "job_id", "model_version", "file", "width", "height", "face_id", "seed",
                "psi", "attempt", "mix_seed", "crossover"}
# Shown under each face in the grid (when present), beside the facet columns.
GRID_EXTRA = ("face_id", "seed")


def class_names(schema: pa.Schema) -> dict[str, list[str]]:
    """{column: ClassLabel names} from the schema's Hugging Face features (empty for a plain shard)."""
    return {name: list(f["names"]) for name, f in (features_of(schema) or {}).items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)}


def _is_range(name: str, kind: pa.DataType) -> bool:
    return (pa.types.is_floating(kind) or pa.types.is_integer(kind)) and (
        name.endswith("_confidence") or name.startswith("quality_"))


@dataclass(frozen=True)
class Columns:
    """An output's columns: all of them, the facets (filter by value), the ranges (filter by min/max)."""

    names: list[str]
    facets: list[str]
    ranges: list[str]
    classes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, schema: pa.Schema) -> "Columns":
        classes = class_names(schema)
        facets, ranges = [], []
        for f in schema:
            if f.name in NOT_FILTERED:
                continue
            if f.name in classes or pa.types.is_string(f.type) or pa.types.is_large_string(f.type) \
                    or pa.types.is_dictionary(f.type) or pa.types.is_boolean(f.type):
                facets.append(f.name)
            elif _is_range(f.name, f.type):
                ranges.append(f.name)
        return cls(list(schema.names), facets, ranges, classes)

    @property
    def filterable(self) -> list[str]:
        return self.facets + self.ranges

    @property
    def has_image(self) -> bool:
        return IMAGE in self.names

    def grid_columns(self) -> list[str]:
        return [n for n in (*GRID_EXTRA, *self.facets, *self.ranges) if n in self.names]

    def detail_columns(self) -> list[str]:
        return [n for n in self.names if n != IMAGE]
