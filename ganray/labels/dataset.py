"""Labeled images for the attribute classifier, and the held-out split fixed by content hash.

An image is held out when the sha256 of its content, read as a number in [0, 1), is below
`heldout.fraction` (rule HELDOUT_RULE). The split therefore depends on nothing but the images: not
on row order, sharding, worker count or which other images the dataset holds, and the same photo
is held out in every import of it at every resolution. The content hash is the imported dataset's
`content_hash` column (sha256 of the source file's bytes); for the built-in faces, which have no
source file, it is the sha256 of the rendered pixels (uint8, at the configured resolution).
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
from ganray.data.manifest import read_dataset, shard_paths
from ganray.data.synthetic import render_batch
from ganray.images import decode_png
from ganray.storage import url_to_fs

HELDOUT_RULE = "sha256-unit-interval/1"  # int(content sha256[:16], 16) / 2**64 < fraction: held out


def heldout_mask(content_hashes, fraction: float) -> np.ndarray:
    """True for the images the held-out split takes (see HELDOUT_RULE)."""
    return np.array([int(h[:16], 16) / 2.0 ** 64 < fraction for h in content_hashes], dtype=bool)


def hash_band_mask(content_hashes, low: float, high: float) -> np.ndarray:
    """True for the images whose content hash (as in HELDOUT_RULE) lies in [low, high): the
    validation split is the band just above the held-out one, so the two never share an image."""
    units = np.array([int(h[:16], 16) / 2.0 ** 64 for h in content_hashes], dtype=np.float64)
    return (units >= low) & (units < high)


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


def split_rows(cfg: DataConfig, attributes: dict[str, list[str]], heldout: HeldoutConfig) -> LabeledSplit:
    """Decode the dataset once (in a fixed row order) and split it into training rows and held-out arrays."""
    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # row i is the same row in every run
    try:
        decoded = labeled_dataset(cfg, list(attributes)).materialize()
        validation = getattr(heldout, "validation_fraction", 0.0)
        train = decoded.map_batches(_select, batch_format="numpy",
                                    fn_kwargs={"fraction": heldout.fraction, "heldout": False, "keep_hash": False,
                                               "validation": validation})
        rows = IndexedRows.from_dataset(train)
        held = heldout_arrays(cfg, attributes, heldout, decoded)
        val = heldout_arrays(cfg, attributes, heldout, decoded,
                             band=(heldout.fraction, heldout.fraction + validation)) if validation else None
    finally:
        context.execution_options.preserve_order = preserve_order
    return LabeledSplit(rows, held, attributes, val)
