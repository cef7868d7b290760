"""The training dataset: a Ray Dataset in the TRAINING SCHEMA, from either source.

TRAINING SCHEMA: `image` is a fixed-shape uint8 tensor column (H, W, 3) at the configured
resolution, followed by one int64 column per attribute, in the order of `dataset_attributes`.
Train workers read their shard with `iter_batches(batch_format="numpy")` and hand each batch to
`to_training_batch`.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import ray
import torch

from ganray.config import ConfigError, DataConfig
from ganray.data import preprocess
from ganray.storage import pyarrow_filesystem, url_to_fs
from ganray.data.importer import MANIFEST_NAME, read_manifest, shard_paths
from ganray.data.synthetic import ATTRIBUTES, RENDERER_VERSION, synthetic_dataset


def shards_manifest(cfg: DataConfig) -> dict:
    """The manifest of the import at data.url; a clear ConfigError when there is none."""
    manifest = read_manifest(cfg.url)
    if manifest is None:
        raise ConfigError(f"data.url: no ganray import at {cfg.url} (missing or foreign {MANIFEST_NAME}); "
                          "make one with `ganray data import`")
    return manifest


def build_train_dataset(cfg: DataConfig) -> ray.data.Dataset:
    """The training images and labels in the TRAINING SCHEMA (lazy: nothing runs until iterated)."""
    if cfg.source == "synthetic":
        return synthetic_dataset(cfg.synthetic.count, cfg.resolution, cfg.synthetic.seed)
    manifest = shards_manifest(cfg)
    fs, root = url_to_fs(cfg.url)
    label_names = list(manifest["attributes"])
    shards = shard_paths(root, manifest)  # exactly the listed files; one outside data.url is refused
    return ray.data.read_parquet(
        shards, filesystem=pyarrow_filesystem(fs), columns=["image", *label_names]
    ).map_batches(
        preprocess.decode_png_batch, batch_format="pyarrow",
        fn_kwargs={"resolution": cfg.resolution, "label_names": label_names},
    )


def dataset_attributes(cfg: DataConfig) -> dict[str, list[str]]:
    """{attribute: [values]} of the label columns, in column order."""
    if cfg.source == "synthetic":
        return dict(ATTRIBUTES)
    return shards_manifest(cfg)["attributes"]


def dataset_manifest_hash(cfg: DataConfig) -> str:
    """Identity of the training data (recorded with models trained on it)."""
    if cfg.source == "synthetic":
        identity = {"renderer": RENDERER_VERSION, "count": cfg.synthetic.count, "seed": cfg.synthetic.seed,
                    "resolution": cfg.resolution}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return shards_manifest(cfg)["manifest_hash"]


def to_training_batch(batch: dict[str, np.ndarray], hflip: bool,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A numpy batch in the TRAINING SCHEMA -> (images NCHW float32 in [-1, 1], labels int64 [B, n_attrs]).

    Flips are drawn from `generator` (one draw per image, only when hflip is on), so checkpointing
    the generator's state makes the augmentation resumable.
    """
    # astype copies into a fresh writable array (Ray's batches can be read-only views of Arrow).
    x = torch.from_numpy(batch["image"].astype(np.float32)).permute(0, 3, 1, 2).div_(127.5).sub_(1.0)
    if hflip:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    label_names = [k for k in batch if k != "image"]  # column order = attribute order
    if label_names:
        # np.stack copies: Ray hands out read-only arrays, which torch warns about sharing.
        labels = torch.from_numpy(np.stack([batch[k] for k in label_names], axis=1).astype(np.int64))
    else:
        labels = torch.zeros((x.shape[0], 0), dtype=torch.int64)
    return x.contiguous(), labels
