"""Filters from the page's query string, and which rows of a shard's filter columns match them.

    eq.COLUMN=VALUE   a facet (label, condition, stratum, verdict) equals VALUE; repeated: any of them
    min.COLUMN=X      a confidence or quality score is at least X
    max.COLUMN=X      ... at most X
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ganray.studio.columns import Columns

PREFIXES = ("eq.", "min.", "max.")


class UnknownColumn(LookupError):
    """A filter names a column the output does not have (or one that cannot be filtered): a 404."""


class BadFilterValue(ValueError):
    """A min./max. bound that is not a finite number: a 422."""


@dataclass(frozen=True)
class Filter:
    equals: tuple[tuple[str, tuple[str, ...]], ...] = ()
    minimum: tuple[tuple[str, float], ...] = ()
    maximum: tuple[tuple[str, float], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.equals or self.minimum or self.maximum)

    @property
    def key(self) -> tuple:
        return (self.equals, self.minimum, self.maximum)

    def mask(self, table: pa.Table) -> np.ndarray:
        """Which rows of `table` (a shard's filter columns, plain values) match every condition."""
        keep = np.ones(table.num_rows, dtype=bool)
        for name, values in self.equals:
            keep &= _bools(pc.is_in(table.column(name).cast(pa.string()), value_set=pa.array(values, pa.string())))
        for name, bound in self.minimum:
            keep &= _bools(pc.greater_equal(table.column(name), bound))
        for name, bound in self.maximum:
            keep &= _bools(pc.less_equal(table.column(name), bound))
        return keep


def _bools(result: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A compute result as numpy booleans, null as False (one array: ChunkedArray.to_numpy goes through pandas)."""
    if isinstance(result, pa.ChunkedArray):
        result = result.combine_chunks()
    return pc.fill_null(result, False).to_numpy(zero_copy_only=False)


def parse_filter(params: Iterable[tuple[str, str]], columns: Columns) -> Filter:
    """The filter in a query string's (name, value) pairs; other parameters are left alone."""
    equals: dict[str, list[str]] = {}
    minimum: dict[str, float] = {}
    maximum: dict[str, float] = {}
    for name, value in params:
        prefix = next((p for p in PREFIXES if name.startswith(p)), None)
        if prefix is None:
            continue
        column = name[len(prefix):]
        if prefix == "eq.":
            if column not in columns.facets:
                raise UnknownColumn(f"no column {column!r} to filter by value (facets: {columns.facets})")
            equals.setdefault(column, []).append(value)
            continue
        if column not in columns.ranges:
            raise UnknownColumn(f"no column {column!r} to filter by range (ranges: {columns.ranges})")
        try:
            bound = float(value)
        except ValueError:
            bound = math.nan
        if not math.isfinite(bound):
            raise BadFilterValue(f"{name} must be a number, got {value!r}")
        (minimum if prefix == "min." else maximum)[column] = bound
    return Filter(tuple(sorted((k, tuple(sorted(set(v)))) for k, v in equals.items())),
                  tuple(sorted(minimum.items())), tuple(sorted(maximum.items())))
