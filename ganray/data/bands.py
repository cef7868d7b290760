"""Age bands: the one definition of their names, shared by the importer (UTKFace's `age_group`
label), conditional generators trained on it, and labelers that estimate an age in years.

Bands are given by their first ages (`import.labels.age_band_starts`, e.g. 0, 3, 10, ..., 70):
band i covers [start_i, start_(i+1) - 1] and is named "start_i-end_i"; the last band is
"start_n+". A single-year band is named "a-a".
"""
from __future__ import annotations

from collections.abc import Sequence


def age_band_names(starts: Sequence[int]) -> list[str]:
    """["0-2", "3-9", ..., "70+"] for starts (0, 3, ..., 70)."""
    ends = [b - 1 for b in starts[1:]]
    return [f"{lo}-{hi}" for lo, hi in zip(starts, ends)] + [f"{starts[-1]}+"]


def age_band_index(age: float, starts: Sequence[int]) -> int:
    """The band an age (years, may be fractional or negative: clamped to band 0) falls in."""
    index = 0
    for i, start in enumerate(starts):
        if age >= start:
            index = i
    return index


def age_band_starts_from_names(names: Sequence[str]) -> list[int] | None:
    """The starts back from band names made by `age_band_names` (None if they are not such names):
    a labeler that estimates years uses a dataset's own bands."""
    starts = []
    for name in names:
        head = name[:-1] if name.endswith("+") else name.split("-")[0]
        if not head.isdigit():
            return None
        starts.append(int(head))
    if not starts or list(names) != age_band_names(starts):
        return None
    return starts
