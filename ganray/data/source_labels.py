"""The labels of an import's source files: from their names (UTKFace preset, a regex with named
groups) or from a sidecar table, looked up on the driver by path; never from image bytes.

These are the dataset's own labels (`import.labels`); ganray.labels' labelers, which look at
generated faces, are another thing.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Callable

import fsspec

from ganray.config import UTKFACE_AGE_BAND_STARTS, ConfigError, LabelConfig
from ganray.data.bands import age_band_index, age_band_names

# UTKFace names are AGE_GENDER_RACE_DATETIME.jpg.chip.jpg (one real file lacks the dot before "jpg").
UTKFACE_PATTERN = re.compile(r"(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_[^_]+")
UTKFACE_GENDERS = ["male", "female"]
UTKFACE_RACES = ["white", "black", "asian", "indian", "other"]


def utkface_attributes(age_band_starts=UTKFACE_AGE_BAND_STARTS) -> dict[str, list[str]]:
    """The UTKFace preset's label vocabulary, with age bands from `import.labels.age_band_starts`."""
    return {"age_group": age_band_names(age_band_starts), "gender": list(UTKFACE_GENDERS),
            "race": list(UTKFACE_RACES)}


UTKFACE_ATTRIBUTES = utkface_attributes()  # with the default bands


@dataclass
class SourceLabels:
    """The labels of the source's files: a path inside the source -> {attribute: value}, or None when
    its labels cannot be found."""

    names: list[str]
    lookup: Callable[[str], dict[str, str] | None]
    values: dict[str, list[str]] | None = None  # fixed vocabularies (presets); None = infer from the data


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _utkface_labels(age_band_starts: list[int]) -> SourceLabels:
    attributes = utkface_attributes(age_band_starts)

    def lookup(path: str) -> dict[str, str] | None:
        m = UTKFACE_PATTERN.fullmatch(_basename(path))
        if m is None:
            return None
        return {
            "age_group": attributes["age_group"][age_band_index(int(m["age"]), age_band_starts)],
            "gender": attributes["gender"][int(m["gender"])],
            "race": attributes["race"][int(m["race"])],
        }

    return SourceLabels(list(attributes), lookup, attributes)


def _pattern_labels(pattern: str) -> SourceLabels:
    regex = re.compile(pattern)

    def lookup(path: str) -> dict[str, str] | None:
        m = regex.fullmatch(_basename(path))
        if m is None or any(v is None for v in m.groupdict().values()):
            return None
        return m.groupdict()

    return SourceLabels(list(regex.groupindex), lookup)


def load_sidecar(url: str, key: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A CSV (header row) or JSON (list of records, or {file: {label: value}}) -> (label names, table)."""
    try:
        with fsspec.open(url, "rt", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"import.labels.sidecar: {url} not found") from None
    if url.lower().endswith(".json"):
        data = json.loads(text)
        records = data if isinstance(data, list) else [{key: name, **labels} for name, labels in data.items()]
    else:
        records = list(csv.DictReader(io.StringIO(text)))
    if not records or key not in records[0]:
        raise ConfigError(f"import.labels.sidecar: {url} has no '{key}' column (import.labels.sidecar_key)")
    names = [k for k in records[0] if k != key]
    table = {str(r[key]): {n: "" if r.get(n) is None else str(r[n]).strip() for n in names} for r in records}
    return names, table


def _sidecar_labels(url: str, key: str) -> SourceLabels:
    names, table = load_sidecar(url, key)

    def lookup(path: str) -> dict[str, str] | None:
        labels = table.get(path) or table.get(_basename(path))
        if labels is None or any(v == "" for v in labels.values()):
            return None
        return labels

    return SourceLabels(names, lookup)


def make_source_labels(cfg: LabelConfig) -> SourceLabels:
    """The label lookup `import.labels` configures (preset, file name pattern or sidecar; none: no labels)."""
    if cfg.preset == "utkface":
        return _utkface_labels(cfg.age_band_starts)
    if cfg.pattern is not None:
        return _pattern_labels(cfg.pattern)
    if cfg.sidecar is not None:
        return _sidecar_labels(cfg.sidecar, cfg.sidecar_key)
    return SourceLabels([], lambda path: {})


def infer_values(names: list[str], labels: list[dict[str, str]]) -> dict[str, list[str]]:
    """Each attribute's values in sorted order (numeric order when every value is an integer)."""
    values = {}
    for name in names:
        seen = {lab[name] for lab in labels}
        numeric = all(re.fullmatch(r"-?\d+", v) for v in seen)
        values[name] = sorted(seen, key=int) if numeric else sorted(seen)
    return values
