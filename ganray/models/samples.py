"""Grids a person wants to see of a generator: a truncation (psi) sweep and a style-mixing grid.

Every cell is a face of `ganray.models.face.render_faces` (the bulk job's and the API's face for the
same seed, psi, conditions and mix), laid out edge to edge:

- psi sweep: row i = seeds[i], column j = psis[j]. At psi = 0 every face of one condition sits on
  the model's average latent (per condition, where a StyleGAN2 tracks one): that column is one
  face per condition, except that a StyleGAN2 face there still differs from seed to seed by its
  own noise inputs (as much as the model's learned noise strengths let it).
- style mixing (style-based models): the classic layout. Top row: the source seeds' faces; left
  column: the destination seeds' faces; the cell (destination d, source s) takes the styles below
  `crossover` (the coarse ones: pose, face shape) from s and the rest (and their noise) from d,
  i.e. render_faces([s], mix_seeds=[d], crossover). The top-left corner is black.

Conditions: `conditions` are fixed for every face; attributes left out are drawn from each face's
seed (the source's seed in a mixing cell), as everywhere else.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from ganray.models.face import check_mixing, is_style_based, labels_for_conditions, render_faces


def tile(cells: np.ndarray) -> np.ndarray:
    """(rows, cols, H, W, 3) uint8 -> one (rows * H, cols * W, 3) image."""
    rows, cols, h, w, c = cells.shape
    return cells.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def psi_values(steps: int) -> list[float]:
    """`steps` values of psi from 0 to 1, evenly spaced (both ends included)."""
    if steps < 2:
        raise ValueError(f"a psi sweep needs at least 2 steps (0 and 1), got {steps}")
    return [round(j / (steps - 1), 6) for j in range(steps)]


def psi_sweep(generator: nn.Module, seeds: Sequence[int], psis: Sequence[float],
              conditions: Mapping[str, str] | None = None, precision: str = "auto") -> np.ndarray:
    """The sweep grid (len(seeds) * H, len(psis) * W, 3): rows are seeds, columns psi values."""
    labels = labels_for_conditions(generator, conditions, len(seeds), seeds=seeds)
    columns = [render_faces(generator, seeds, psi, labels, precision) for psi in psis]
    return tile(np.stack(columns, axis=1))


def style_mixing_grid(generator: nn.Module, sources: Sequence[int], destinations: Sequence[int], crossover: int,
                      psi: float = 1.0, conditions: Mapping[str, str] | None = None,
                      precision: str = "auto") -> np.ndarray:
    """The mixing grid ((1 + len(destinations)) * H, (1 + len(sources)) * W, 3), see the module docstring.

    ValueError for a generator without styles or a crossover outside 0..num_ws (check_mixing's).
    """
    check_mixing(generator, [0], [0], crossover)
    labels = labels_for_conditions(generator, conditions, len(sources), seeds=sources)
    top = render_faces(generator, sources, psi, labels, precision)
    left = render_faces(generator, destinations, psi,
                        labels_for_conditions(generator, conditions, len(destinations), seeds=destinations),
                        precision)
    r = generator.resolution
    cells = np.zeros((1 + len(destinations), 1 + len(sources), r, r, 3), dtype=np.uint8)
    cells[0, 1:], cells[1:, 0] = top, left
    for i, destination in enumerate(destinations):
        cells[1 + i, 1:] = render_faces(generator, sources, psi, labels, precision,
                                        mix_seeds=[destination] * len(sources), crossover=crossover)
    return tile(cells)


def default_crossover(generator: nn.Module) -> int | None:
    """The coarse styles of the StyleGAN papers' mixing figures (w 0..3: 4x4 and 8x8), within num_ws;
    None for a generator without styles."""
    return min(4, generator.num_ws) if is_style_based(generator) else None
