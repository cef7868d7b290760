"""`train.runner: local`: the attribute classifier's training loop in this process, without Ray.

For a long run on a machine whose one Ray is wanted by others (a laptop, a shared CI box): the
same loop (ganray.labels.train.run_loop), the same data split by content hash, the same checkpoint
layout, resume and bit-exact state as a one-worker Ray Train run, read and written on local paths
only. `LocalRows` stands in for the object-store rows and `LocalWorker` for the Ray Train worker.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np
import torch

from ganray import checkpoints
from ganray.config import ConfigError, DataConfig, HeldoutConfig
from ganray.data.dataset import shards_manifest
from ganray.data.manifest import read_columns, shard_paths
from ganray.labels.dataset import LabeledSplit, _shard_batch, _synthetic_batch, hash_band_mask, heldout_mask
from ganray.storage import url_to_fs
from ganray.worker import set_rng_state, use_deterministic_kernels

_CHUNK = 2048  # rows decoded at a time


class LocalRows:
    """Decoded training rows in this process's memory, with IndexedRows' reading interface."""

    def __init__(self, arrays: dict[str, np.ndarray], columns: list[str]):
        self.arrays, self.columns, self.weights = arrays, list(columns), None

    @property
    def num_rows(self) -> int:
        return int(len(self.arrays[self.columns[0]]))

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        return {c: self.arrays[c][indices] for c in self.columns}


def _decoded_batches(cfg: DataConfig, names: list[str]):
    """The labeled dataset (ganray.labels.dataset.labeled_dataset's rows) in dataset order, in chunks."""
    if cfg.source == "synthetic":
        for start in range(0, cfg.synthetic.count, _CHUNK):
            ids = np.arange(start, min(start + _CHUNK, cfg.synthetic.count))
            yield _synthetic_batch({"id": ids}, resolution=cfg.resolution, seed=cfg.synthetic.seed, label_names=names)
        return
    if not cfg.url or "://" in cfg.url and not cfg.url.startswith("file://"):
        raise ConfigError("train.runner 'local' reads local imports only: use the ray runner for "
                          f"data.url {cfg.url!r}")
    manifest = shards_manifest(cfg)
    fs, root = url_to_fs(cfg.url)
    for path in shard_paths(root, manifest):
        table = read_columns(fs, path, ["image", *names, "content_hash"])
        for start in range(0, table.num_rows, _CHUNK):
            yield _shard_batch(table.slice(start, _CHUNK), resolution=cfg.resolution, label_names=names)


def local_split(cfg: DataConfig, attributes: dict[str, list[str]], heldout: HeldoutConfig) -> LabeledSplit:
    """split_rows without Ray: the same three splits by content hash, in dataset order."""
    names = list(attributes)
    low, high = heldout.fraction, heldout.fraction + heldout.validation_fraction
    parts: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, "heldout": {}, "validation": {}}
    for batch in _decoded_batches(cfg, names):
        masks = {"heldout": heldout_mask(batch["content_hash"], low),
                 "validation": hash_band_mask(batch["content_hash"], low, high),
                 "train": ~heldout_mask(batch["content_hash"], high)}
        for split, mask in masks.items():
            for k, v in batch.items():
                parts[split].setdefault(k, []).append(np.asarray(v)[mask])
    arrays = {split: {k: np.concatenate(v) for k, v in columns.items()} for split, columns in parts.items()}
    held = arrays["heldout"]
    if heldout.max_images is not None:
        held = {k: v[:heldout.max_images] for k, v in held.items()}
    if not len(held.get("image", [])):
        raise ConfigError(f"heldout.fraction {heldout.fraction} holds out no image of the dataset: raise it")
    validation = arrays["validation"] if heldout.validation_fraction else None
    if validation is not None and not len(validation["image"]):
        raise ConfigError(f"heldout.validation_fraction {heldout.validation_fraction} holds no image of the "
                          "dataset: raise it")
    train = LocalRows(arrays["train"], ["image", *names])
    return LabeledSplit(train, held, attributes, validation)


class LocalWorker:
    """Rank 0 of 1 on this process's CPU: resume from the run's newest complete checkpoint, and
    write checkpoints straight into the run's folder (the newest `num_to_keep` are kept)."""

    def __init__(self, storage_path: str, run_name: str, threads: int, deterministic: bool, num_to_keep: int):
        self.rank, self.world_size, self.device = 0, 1, torch.device("cpu")
        self.storage_path, self.run_name = storage_path, run_name
        self.run_dir = url_to_fs(checkpoints.run_url(storage_path, run_name))[1]
        self.num_to_keep = num_to_keep
        torch.set_num_threads(threads)
        if deterministic:
            use_deterministic_kernels(False)

    def resume(self, offered, run_url: str, say: Callable[[str], None]) -> dict[str, Any] | None:
        usable = checkpoints.latest_checkpoint(self.storage_path, self.run_name) if os.path.isdir(self.run_dir) \
            else None
        if usable is None:
            return None
        state = checkpoints.load_state(usable)
        set_rng_state(state["rng"][0])
        return state

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def report(self, metrics: dict[str, Any], checkpoint_step: int | None, write: Callable[[str], None]) -> None:
        if checkpoint_step is None:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        final = os.path.join(self.run_dir, checkpoints.checkpoint_dir_name(checkpoint_step))
        staging = tempfile.mkdtemp(prefix=".staging-", dir=self.run_dir)
        write(staging)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(staging, final)  # complete or absent: meta.json was written last inside it
        for old in checkpoints.list_checkpoints(self.storage_path, self.run_name)[:-self.num_to_keep]:
            shutil.rmtree(os.path.join(self.run_dir, os.path.basename(old.rstrip("/"))), ignore_errors=True)
