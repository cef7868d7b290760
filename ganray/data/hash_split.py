"""Splits of a dataset fixed by each image's content hash (rule HELDOUT_RULE).

An image falls in the first `fraction` of the unit interval when the sha256 of its content, read as
a number in [0, 1), is below `fraction`. The split depends on nothing but the images: not on row
order, sharding or which other images a dataset holds, so the same photo lands on the same side in
every import of it, at every resolution. The attribute classifier holds these images out for
testing (ganray.labels.dataset); an import can leave them out so a generator never trains on them.
"""
from __future__ import annotations

import numpy as np

HELDOUT_RULE = "sha256-unit-interval/1"  # int(content sha256[:16], 16) / 2**64 < fraction: held out


def hash_units(content_hashes) -> np.ndarray:
    """Each content hash (hex sha256) as a number in [0, 1)."""
    return np.array([int(h[:16], 16) / 2.0 ** 64 for h in content_hashes], dtype=np.float64)


def heldout_mask(content_hashes, fraction: float) -> np.ndarray:
    """True for the images the held-out split takes (see HELDOUT_RULE)."""
    return hash_units(content_hashes) < fraction


def hash_band_mask(content_hashes, low: float, high: float) -> np.ndarray:
    """True for the images whose content hash lies in [low, high): the validation split is the band
    just above the held-out one, so the two never share an image."""
    units = hash_units(content_hashes)
    return (units >= low) & (units < high)
