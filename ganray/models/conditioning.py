"""Which attributes a model conditions on, and the check on the labels it is called with.

Shared by every architecture: labels are a LongTensor (B, n_cond) of value indices, one column per
name in the model's `condition_names`, in the order of `condition_values`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ganray.config import BaseModelConfig


def conditions_for(cfg: BaseModelConfig, attributes: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The attributes a model conditions on, name -> values, in label-column order ({} = none)."""
    if not cfg.conditional:
        return {}
    if not attributes:
        raise ValueError("model.conditional is true but no attributes were given to condition on")
    names = cfg.condition_on or list(attributes)
    for name in names:
        if name not in attributes:
            raise ValueError(f"model.condition_on: unknown attribute {name!r} (known: {sorted(attributes)})")
        if not attributes[name]:
            raise ValueError(f"attribute {name!r} has no values to condition on")
    return {name: list(attributes[name]) for name in names}


def check_labels(labels: Tensor | None, condition_values: dict[str, list[str]], batch_size: int) -> None:
    if not condition_values:
        if labels is not None:
            raise ValueError("this model is unconditional: call it with labels=None")
        return
    names = list(condition_values)
    if labels is None:
        raise ValueError(f"this model is conditional: labels (B, {len(names)}) are required, columns {names}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an integer (long) tensor of value indices, got {labels.dtype}")
    if labels.shape != (batch_size, len(names)):
        raise ValueError(f"labels must have shape ({batch_size}, {len(names)}) for columns {names}, "
                         f"got {tuple(labels.shape)}")
    if batch_size == 0:
        return
    # The range check stays on the labels' device: no host sync per forward pass on a GPU (where a
    # bad index fails as a device-side assert); on CPU it raises at once and is explained here.
    sizes = [len(condition_values[name]) for name in names]
    in_range = labels.amin() >= 0  # python bounds only: a tensor of them would be a host-to-device copy
    for column, n in enumerate(sizes):
        in_range = in_range & (labels[:, column].amax() < n)
    try:
        torch._assert_async(in_range, f"labels out of range for columns {names} with {sizes} values each")
    except RuntimeError:
        lowest, highest = labels.amin(0).tolist(), labels.amax(0).tolist()
        for name, lo, hi in zip(names, lowest, highest):
            n = len(condition_values[name])
            if lo < 0 or hi >= n:
                bad = lo if lo < 0 else hi
                raise ValueError(f"label {bad} for attribute {name!r} is out of range: it has {n} values "
                                 f"{condition_values[name]}") from None
        raise
