"""Label counts of training data: joint counts over attribute strata ("match the training set").

A stratum is named by its values joined by "/" (ganray.config.STRATUM_SEPARATOR), in the order the
attributes are given. Imported datasets are read from their shards' label columns (the manifest's
per-attribute histograms are marginals: a joint target needs the rows); the built-in faces are
counted from their labels, which are a pure function of (seed, index).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ganray.config import STRATUM_SEPARATOR


def import_joint_counts(url: str, attributes: Sequence[str]) -> dict[str, int]:
    """Joint label counts of the imported dataset at `url` (`ganray data import` output)."""
    from ganray import storage
    from ganray.data.manifest import read_columns, read_manifest, shard_paths

    manifest = read_manifest(url)
    if manifest is None:
        raise ValueError(f"{url} holds no ganray import manifest")
    values = manifest["attributes"]
    unknown = [a for a in attributes if a not in values]
    if unknown:
        raise ValueError(f"the training data {url} has no labels for {unknown} (it has {list(values)})")
    counts: Counter[str] = Counter()
    fs, root = storage.url_to_fs(url)
    for path in shard_paths(root, manifest):
        table = read_columns(fs, path, list(attributes))
        columns = [table.column(a).to_pylist() for a in attributes]
        for row in zip(*columns):
            counts[STRATUM_SEPARATOR.join(values[a][int(i)] for a, i in zip(attributes, row))] += 1
    return dict(counts)


def synthetic_joint_counts(count: int, seed: int, attributes: Sequence[str]) -> dict[str, int]:
    """Joint label counts of the built-in faces 0..count-1 of dataset `seed`."""
    from ganray.data.synthetic import ATTRIBUTES, sample_labels

    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"the built-in faces have no labels for {unknown} (they have {list(ATTRIBUTES)})")
    counts: Counter[str] = Counter()
    for i in range(count):
        labels, _ = sample_labels(i, seed)
        counts[STRATUM_SEPARATOR.join(ATTRIBUTES[a][labels[a]] for a in attributes)] += 1
    return dict(counts)


def training_joint_counts(provenance: Mapping[str, Any], attributes: Sequence[str]) -> dict[str, int]:
    """Joint label counts of the data a registry version was trained on (its provenance's train_config)."""
    data = (provenance.get("train_config") or {}).get("data") or {}
    if data.get("source") == "shards" and data.get("url"):
        return import_joint_counts(data["url"], attributes)
    if data.get("source", "synthetic") == "synthetic" and "train_config" in provenance:
        synthetic = data.get("synthetic") or {}
        return synthetic_joint_counts(int(synthetic.get("count", 10_000)), int(synthetic.get("seed", 0)), attributes)
    raise ValueError("the model's provenance does not say what it was trained on (no train_config.data)")
