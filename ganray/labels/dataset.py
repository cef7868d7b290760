"""Labeled images for the attribute classifier, and the held-out split fixed by content hash.

An image is held out when the sha256 of its content, read as a number in [0, 1), is below
`heldout.fraction` (ganray.data.hash_split: the split depends on nothing but the images). The
content hash is the imported dataset's `content_hash` column (sha256 of the source file's bytes);
for the built-in faces, which have no source file, it is the sha256 of the rendered pixels (uint8,
at the configured resolution).

The training rows may come from a finished `ganray generate` output instead of, or beside, the
dataset's training split (`source:` of the job); the held-out and validation splits stay the real
dataset's, so classifiers trained on different sources are tested on the same real images.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data

from ganray.config import ConfigError, DataConfig, HeldoutConfig
from ganray.data.dataset import IndexedRows, dataset_attributes, shards_manifest
from ganray.data.hash_split import HELDOUT_RULE, hash_band_mask, heldout_mask  # noqa: F401 (re-exported)
from ganray.config.labels import TrainingSourceConfig
from ganray.data.manifest import (column_names, generated_parquet_paths, read_columns, read_dataset,
                                  read_generated_manifest, shard_paths)
from ganray.data.synthetic import render_batch
from ganray.images import decode_png
from ganray.storage import normalize_url, url_to_fs


def choose_attributes(cfg: DataConfig, names: list[str], key: str = "attributes") -> dict[str, list[str]]:
    """The dataset's attributes named in `names` (all of them when empty), in the order given."""
    available = dataset_attributes(cfg)
    if not available:
        raise ConfigError(f"data: the dataset at {cfg.url or 'synthetic'} has no label columns: a classifier "
                          "needs a labeled import (import.labels)")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"{key}: {unknown} not among the dataset's attributes {list(available)}")
    return {n: available[n] for n in (names or available)}


def _synthetic_batch(batch: dict[str, np.ndarray], *, resolution: int, seed: int,
                     label_names: list[str]) -> dict[str, np.ndarray]:
    rendered = render_batch(batch["id"], resolution, seed)
    hashes = np.array([hashlib.sha256(image.tobytes()).hexdigest() for image in rendered["image"]], dtype=object)
    return {"image": rendered["image"], **{n: rendered[n] for n in label_names}, "content_hash": hashes}


def _shard_batch(batch: pa.Table, *, resolution: int, label_names: list[str]) -> dict[str, np.ndarray]:
    images = np.stack([decode_png(png, resolution) for png in batch["image"].to_pylist()])
    return {"image": images, **{n: batch[n].to_numpy().astype(np.int64) for n in label_names},
            "content_hash": np.array(batch["content_hash"].to_pylist(), dtype=object)}


def labeled_dataset(cfg: DataConfig, label_names: list[str]) -> ray.data.Dataset:
    """Rows `image` (uint8 HWC at data.resolution), one int64 column per name, `content_hash`."""
    if cfg.source == "synthetic":
        return ray.data.range(cfg.synthetic.count).map_batches(
            _synthetic_batch, batch_format="numpy",
            fn_kwargs={"resolution": cfg.resolution, "seed": cfg.synthetic.seed, "label_names": label_names})
    manifest = shards_manifest(cfg)
    fs, root = url_to_fs(cfg.url)
    return read_dataset(fs, shard_paths(root, manifest), ["image", *label_names, "content_hash"]).map_batches(_shard_batch, batch_format="pyarrow",
                  fn_kwargs={"resolution": cfg.resolution, "label_names": label_names})


def generated_label_columns(url: str, attributes: dict[str, list[str]], labels: str) -> tuple[list[str], dict[str, str]]:
    """A generate output's Parquet shards and, per attribute, the column its labels are read from
    (`label_<attribute>` when the job labeled it and `labels` is "labeler", else the condition)."""
    manifest = read_generated_manifest(url)
    if manifest is None:
        raise ConfigError(f"source.generated: {url} is not a finished `ganray generate` output (no readable "
                          "manifest.json)")
    paths = generated_parquet_paths(url, manifest)
    if not paths:
        raise ConfigError(f"source.generated: {url} has no Parquet shards (generated with format png?)")
    fs, _ = url_to_fs(url)
    present = set(column_names(fs, paths[0]))
    columns = {}
    for name in attributes:
        labeled = f"label_{name}"
        columns[name] = labeled if labels == "labeler" and labeled in present else name
    missing = sorted(n for n, c in columns.items() if c not in present)
    if missing:
        raise ConfigError(f"source.generated: the faces of {url} carry no label or condition for {missing}; the "
                          f"classifier learns {list(attributes)}")
    for name, column in columns.items():  # every value known, before any image is decoded
        found = {v for path in paths for v in read_columns(fs, path, [column])[column].to_pylist()}
        unknown = sorted(str(v) for v in found - set(attributes[name]))
        if unknown:
            raise ConfigError(f"source.generated: {column} values {unknown} of {url} are not among the dataset's "
                              f"{name} values {attributes[name]}")
    return paths, columns


def _generated_batch(batch: pa.Table, *, resolution: int, columns: dict[str, str],
                     attributes: dict[str, list[str]]) -> dict[str, np.ndarray]:
    images = np.stack([decode_png(png, resolution) for png in batch["image"].to_pylist()])
    out = {"image": images}
    for name, column in columns.items():
        index = {value: i for i, value in enumerate(attributes[name])}  # values checked by generated_label_columns
        out[name] = np.array([index[v] for v in batch[column].to_pylist()], dtype=np.int64)
    return out


def generated_training_dataset(source: TrainingSourceConfig, attributes: dict[str, list[str]],
                               resolution: int) -> ray.data.Dataset:
    """A generate output's faces in the training schema (image, one int64 column per attribute, numbered
    as the real dataset numbers its values)."""
    url = normalize_url(source.generated)
    paths, columns = generated_label_columns(url, attributes, source.labels)
    fs, _ = url_to_fs(url)
    return read_dataset(fs, paths, ["image", *sorted(set(columns.values()))]).map_batches(
        _generated_batch, batch_format="pyarrow",
        fn_kwargs={"resolution": resolution, "columns": columns, "attributes": attributes})


def _select(batch: dict[str, np.ndarray], *, fraction: float, heldout: bool, keep_hash: bool,
            validation: float = 0.0, band: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    if band is not None:
        rows = hash_band_mask(batch["content_hash"], *band)
    elif heldout:
        rows = heldout_mask(batch["content_hash"], fraction)
    else:  # training: neither held out nor in the validation band above it
        rows = ~heldout_mask(batch["content_hash"], fraction + validation)
    return {k: v[rows] for k, v in batch.items() if keep_hash or k != "content_hash"}


@dataclass
class LabeledSplit:
    train: IndexedRows                  # the training rows, in the training schema (image, labels)
    heldout: dict[str, np.ndarray]      # image, one column per attribute, content_hash (driver memory)
    attributes: dict[str, list[str]]
    validation: dict[str, np.ndarray] | None = None  # as heldout; None without heldout.validation_fraction


def heldout_arrays(cfg: DataConfig, attributes: dict[str, list[str]], heldout: HeldoutConfig,
                   dataset: ray.data.Dataset | None = None, band: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """The held-out images and labels, in dataset order (the first `heldout.max_images` when set);
    with `band`, the images whose hash lies in that band instead (the validation split), all of them."""
    names = list(attributes)
    dataset = dataset if dataset is not None else labeled_dataset(cfg, names)
    selected = dataset.map_batches(_select, batch_format="numpy",
                                   fn_kwargs={"fraction": heldout.fraction, "heldout": True, "keep_hash": True,
                                              "band": band})
    if heldout.max_images is not None and band is None:
        selected = selected.limit(heldout.max_images)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in selected.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            parts.setdefault(k, []).append(np.asarray(v))
    if not parts or sum(len(p) for p in parts["image"]) == 0:
        key = "heldout.validation_fraction" if band is not None else "heldout.fraction"
        raise ConfigError(f"{key} {getattr(heldout, key.split('.')[1])} holds out no image of the dataset: raise it")
    return {k: np.concatenate(v) for k, v in parts.items()}


def split_rows(cfg: DataConfig, attributes: dict[str, list[str]], heldout: HeldoutConfig,
               source: TrainingSourceConfig | None = None) -> LabeledSplit:
    """Decode the dataset once (in a fixed row order) and split it into training rows and held-out arrays;
    `source` (the job's `source:`) may put a generate output's faces in, or beside, the training rows."""
    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # row i is the same row in every run
    try:
        decoded = labeled_dataset(cfg, list(attributes)).materialize()
        validation = getattr(heldout, "validation_fraction", 0.0)
        train = decoded.map_batches(_select, batch_format="numpy",
                                    fn_kwargs={"fraction": heldout.fraction, "heldout": False, "keep_hash": False,
                                               "validation": validation})
        if source is not None and source.use != "real":
            generated = generated_training_dataset(source, attributes, cfg.resolution)
            train = generated if source.use == "generated" else train.union(generated)
        rows = IndexedRows.from_dataset(train)
        held = heldout_arrays(cfg, attributes, heldout, decoded)
        val = heldout_arrays(cfg, attributes, heldout, decoded,
                             band=(heldout.fraction, heldout.fraction + validation)) if validation else None
    finally:
        context.execution_options.preserve_order = preserve_order
    return LabeledSplit(rows, held, attributes, val)
