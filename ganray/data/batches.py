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

from ganray.data.dataset import EpochSampler, IndexedRows, host_batch, to_unit_range  # noqa: F401 (re-exported)


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
