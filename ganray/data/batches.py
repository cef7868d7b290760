"""Training batches from `IndexedRows`: read ahead on the host as uint8, made float on the device.

The next batch is read (object store fetch, gather, flips) in a background thread while the
current step computes. Images stay uint8 on the host, a quarter of float32's bytes to copy, and
on a CUDA device they are copied from pinned memory, so that `non_blocking` really overlaps the
copy with compute; they become float32 in [-1, 1] on the device, with the same arithmetic (and so
the same values) as `to_training_batch`.

Which rows come next is the sampler's (`EpochSampler`, a pure function of its position): the
prefetcher draws them in the caller's thread and reports as its position the batch it has not
handed out yet, so a checkpoint taken between steps resumes exactly where training stood.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ganray.data.dataset import EpochSampler, IndexedRows


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


class BatchPrefetcher:
    """This worker's batches, in the sampler's order, each read while the previous one trains."""

    def __init__(self, rows: IndexedRows, sampler: EpochSampler, label_columns: list[str] | None,
                 device: torch.device):
        self.rows, self.sampler, self.label_columns, self.device = rows, sampler, label_columns, device
        # Pinned memory only for a CUDA device (elsewhere it buys nothing, and needs a CUDA build).
        self.pin = device.type == "cuda" and torch.cuda.is_available()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ganray-batches")
        self._next: Future | None = None
        self._position = sampler.state_dict()  # of the batch not handed out yet

    def _read(self, indices: np.ndarray, flip: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = host_batch(self.rows.read(indices), flip, self.label_columns)
        if self.pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def _request(self) -> None:
        self._position = self.sampler.state_dict()
        indices, flip = self.sampler.next()
        self._next = self._reader.submit(self._read, indices, flip)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 [-1, 1] NCHW, labels int64) on the device; the batch after it is already
        being read when this returns."""
        if self._next is None:
            self._request()
        images, labels = self._next.result()
        self._request()
        images = images.to(self.device, non_blocking=self.pin)
        labels = labels.to(self.device, non_blocking=self.pin)
        return to_unit_range(images), labels

    def state_dict(self) -> dict[str, int]:
        """The data position of the next batch `next` returns (what a checkpoint saves)."""
        return dict(self._position) if self._next is not None else self.sampler.state_dict()

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
        self._reader.shutdown(wait=True)
