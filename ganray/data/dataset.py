"""The training dataset: a Ray Dataset in the TRAINING SCHEMA, from either source.

TRAINING SCHEMA: `image` is a fixed-shape uint8 tensor column (H, W, 3) at the configured
resolution, followed by one int64 column per attribute, in the order of `dataset_attributes`.

Training reads rows by index, in an order that is a pure function of (seed, epoch, batch) so that a
run is reproducible and a resumed run sees exactly the batches an uninterrupted one would:
`IndexedRows` holds the decoded dataset in Ray's object store in a fixed row order, `EpochSampler`
says which rows (and which flips) each worker takes for each global batch, and `to_training_batch`
turns a numpy batch into tensors.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import ray
import ray.data
import torch

from ganray.config import ConfigError, DataConfig
from ganray.data import preprocess
from ganray.storage import url_to_fs
from ganray.data.manifest import MANIFEST_NAME, WEIGHT_COLUMN, read_columns, read_dataset, read_manifest, shard_paths
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
    return read_dataset(fs, shards, ["image", *label_names]).map_batches(
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


def to_training_batch(batch: dict[str, np.ndarray], flip: np.ndarray | None,
                      label_columns: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A numpy batch in the TRAINING SCHEMA -> (images NCHW float32 in [-1, 1], labels int64 [B, n]).

    `flip` (bool per image, from `EpochSampler`) mirrors those images horizontally; None: no flips.
    `label_columns`: the attributes the labels hold, in that column order (a conditional model's
    `condition_on` may pick some of the dataset's attributes, in another order); None: every
    attribute of the batch, in dataset order. The training loops do the same in two halves:
    `host_batch` where the batch is read, `to_unit_range` on the device (ganray.data.batches).
    """
    images, labels = host_batch(batch, flip, label_columns)
    return to_unit_range(images), labels


def host_batch(batch: dict[str, np.ndarray], flip: np.ndarray | None,
               label_columns: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A numpy batch in the TRAINING SCHEMA -> (images NCHW uint8, labels int64 [B, n]), on the host.

    `flip` (bool per image) mirrors those images horizontally; `label_columns`: the label columns,
    in that order (None: every attribute of the batch, in dataset order)."""
    images = np.asarray(batch["image"])
    if flip is not None:
        images = np.where(np.asarray(flip, dtype=bool)[:, None, None, None], images[:, :, ::-1], images)
    # A fresh contiguous NCHW copy (batches can be read-only views of the object store).
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    label_names = [k for k in batch if k != "image"] if label_columns is None else list(label_columns)
    missing = [k for k in label_names if k not in batch]
    if missing:
        raise KeyError(f"label columns {missing} are not in the batch (it has {sorted(batch)})")
    if label_names:
        labels = torch.from_numpy(np.stack([batch[k] for k in label_names], axis=1).astype(np.int64))
    else:
        labels = torch.zeros((x.shape[0], 0), dtype=torch.int64)
    return x, labels


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (x / 127.5 - 1), on whatever device they are."""
    return images.float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------------
# Reproducible, resumable reading: rows by index, in an order fixed by (seed, epoch, batch)


@ray.remote(num_cpus=0.1)  # a bookkeeping task: a fraction of a CPU, so it never waits on training
def _block_layout(block: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    return len(block["image"]), list(block)


class IndexedRows:
    """The decoded training rows in Ray's object store, addressable by global row index.

    Ray Data does the parallel read and PNG decode once (from local or S3 shards, or the renderer),
    with `preserve_order` so that row i is the same row in every run. Its streaming split hands
    blocks to workers in whatever order they finish, which is why training does not iterate the
    Dataset: each worker fetches the blocks that hold the rows its sampler names. On the node that
    holds a block a fetch is a zero-copy view of shared memory; another node pulls the whole block
    into its own object store as an evictable copy, so over an epoch a node of a multi-node run
    caches most blocks (or re-pulls those evicted). The store holds the decoded dataset once per
    cluster, N * resolution^2 * 3 bytes (10^5 faces at 64 px: 1.2 GB; 10^6: 12 GB), and spills to
    local disk beyond its capacity: that is the bound, as for the materialized dataset this
    replaces. A worker's own memory holds only the rows of its current batch.

    Pickling an instance pickles object refs, which Ray tracks: it can travel in
    `train_loop_config` as long as the driver keeps the original alive.
    """

    def __init__(self, block_refs: list[ray.ObjectRef], block_rows: list[int], columns: list[str]):
        self.block_refs = list(block_refs)
        self.block_starts = np.concatenate([[0], np.cumsum(block_rows, dtype=np.int64)])
        self.columns = list(columns)  # image first, then the labels in attribute order
        self.weights: np.ndarray | None = None  # per-row sampling weights (a weights-balanced import)

    @classmethod
    def from_dataset(cls, dataset: ray.data.Dataset) -> "IndexedRows":
        """Run `dataset` (built while `preserve_order` is on) into the object store."""
        refs = dataset.to_numpy_refs()
        layouts = ray.get([_block_layout.remote(ref) for ref in refs])
        kept = [(ref, n, columns) for ref, (n, columns) in zip(refs, layouts) if n > 0]  # skip empty blocks
        if not kept:
            raise ValueError("the training dataset has no rows")
        return cls([k[0] for k in kept], [k[1] for k in kept], kept[0][2])

    @property
    def num_rows(self) -> int:
        return int(self.block_starts[-1])

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `indices` (global, any order) as a numpy batch in the TRAINING SCHEMA, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_rows):
            raise IndexError(f"row index out of range 0..{self.num_rows - 1}")
        block_of = np.searchsorted(self.block_starts, indices, side="right") - 1
        needed = np.unique(block_of)
        blocks = dict(zip(needed.tolist(), ray.get([self.block_refs[b] for b in needed])))
        out: dict[str, np.ndarray] = {}
        for column in self.columns:
            sample = blocks[int(needed[0])][column]
            out[column] = np.empty((len(indices), *sample.shape[1:]), dtype=sample.dtype)
            for b, block in blocks.items():
                where = block_of == b
                out[column][where] = block[column][indices[where] - self.block_starts[b]]
        return out


def row_weights(cfg: DataConfig) -> np.ndarray | None:
    """The `weight` column of an import balanced with mode weights, in row order; None otherwise."""
    if cfg.source != "shards":
        return None
    manifest = shards_manifest(cfg)
    if (manifest.get("balance") or {}).get("mode") != "weights":
        return None
    fs, root = url_to_fs(cfg.url)
    parts = []
    for path in shard_paths(root, manifest):  # the shards in the order their rows are numbered
        parts.append(read_columns(fs, path, [WEIGHT_COLUMN])[WEIGHT_COLUMN].to_numpy())
    weights = np.concatenate(parts).astype(np.float64)
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        raise ConfigError(f"data.url: the import at {cfg.url} has a {WEIGHT_COLUMN} column that is not finite, "
                          "non-negative weights")
    return weights


def build_indexed_rows(cfg: DataConfig) -> IndexedRows:
    """The training dataset in a fixed row order (shard order, then row order; faces 0..N-1), with
    the rows' sampling weights when the import was balanced by weights."""
    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # blocks come out in input order, not finish order
    try:
        rows = IndexedRows.from_dataset(build_train_dataset(cfg))
    finally:
        context.execution_options.preserve_order = preserve_order
    rows.weights = row_weights(cfg)
    if rows.weights is not None and len(rows.weights) != rows.num_rows:
        raise ConfigError(f"data.url: {len(rows.weights)} weights for {rows.num_rows} rows in {cfg.url}")
    return rows


class EpochSampler:
    """Which rows each worker trains on, batch after batch: a pure function of the position.

    Epoch e visits the rows in the order of a permutation drawn from (seed, e) (with `weights`, one
    per row: num_rows draws with replacement, each row with probability weight / sum of weights, so
    a weights-balanced import trains as if its strata were equal in size); global batch b of
    the epoch is its slice [b*B, (b+1)*B) (the last partial batch is dropped), and worker r of W
    takes the r-th of W equal parts of it. So the global batches do not depend on the number of
    workers, and two runs with the same seed see the same batches in the same order. Horizontal
    flips are drawn from (seed, e, b) per global batch, so they too follow the position.

    The whole state is the position (epoch, batch): saved in a checkpoint, it resumes the stream
    exactly. A permutation costs 8 bytes per row (8 MB for 10^6 rows), once per epoch.
    """

    _ORDER, _FLIP = 0, 1  # separate random streams for the order and the flips

    def __init__(self, num_rows: int, global_batch: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 hflip: bool = False, weights: np.ndarray | None = None):
        if weights is not None and len(weights) != num_rows:
            raise ValueError(f"{len(weights)} weights for {num_rows} rows")
        self.probabilities = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        if num_rows < global_batch:
            raise ValueError(f"the dataset has {num_rows} rows, fewer than one batch of {global_batch}")
        if global_batch % world_size:
            raise ValueError(f"batch of {global_batch} does not split evenly over {world_size} workers")
        self.num_rows, self.global_batch, self.seed = num_rows, global_batch, seed
        self.local_batch = global_batch // world_size
        self.rank, self.hflip = rank, hflip
        self.batches_per_epoch = num_rows // global_batch
        self.epoch, self.batch = 0, 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation), cached

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= self.batch < self.batches_per_epoch:
            raise ValueError(f"data position batch {self.batch} is outside an epoch of "
                             f"{self.batches_per_epoch} batches")

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, self._ORDER, epoch])
            order = rng.permutation(self.num_rows) if self.probabilities is None else \
                rng.choice(self.num_rows, size=self.num_rows, replace=True, p=self.probabilities)
            self._order = (epoch, order)
        return self._order[1]

    def next(self) -> tuple[np.ndarray, np.ndarray | None]:
        """This worker's row indices for the next global batch, and its flips (None without hflip)."""
        start = self.batch * self.global_batch + self.rank * self.local_batch
        indices = self.epoch_order(self.epoch)[start:start + self.local_batch]
        flip = None
        if self.hflip:
            flips = np.random.default_rng([self.seed, self._FLIP, self.epoch, self.batch]).random(self.global_batch)
            flip = flips[self.rank * self.local_batch:(self.rank + 1) * self.local_batch] < 0.5
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return indices, flip
