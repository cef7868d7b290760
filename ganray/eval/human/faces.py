"""Where the faces of a human evaluation come from, each addressed by (item, index).

- a registry model version: index = seed; rendered by ganray.models.face exactly as `ganray generate`
  renders face `seed` (open conditions drawn from the seed), at fp32 on this process's CPU;
- a finished `ganray generate` output folder: index = row of its Parquet shards (in shard order);
- an imported dataset (`ganray data import`), the real faces: index = row of its shards.

Folders are read once at start-up (their first `max_rows` rows), so issuing a pair never waits on
storage. Every face is a uint8 (H, W, 3) array; all items of one evaluation must share a resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ganray import storage
from ganray.data.manifest import (GENERATED_MANIFEST, first_rows, generated_parquet_paths, read_generated_manifest,
                                  read_manifest, shard_paths)
from ganray.images import decode_png
from ganray.models.face import labels_for_conditions, render_faces
from ganray.registry import Registry
from ganray.eval.human.store import REAL_ITEM

class HumanEvalError(ValueError):
    """An evaluation that cannot start as configured (missing folder, mismatched resolutions)."""


@dataclass
class ModelFaces:
    """Faces of one registry version, rendered on demand from seeds."""

    item: str
    generator: object
    resolution: int
    psi: float
    precision: str
    seeds: range
    describe: dict = field(default_factory=dict)

    def count(self) -> int:
        return len(self.seeds)

    def face(self, index: int) -> np.ndarray:
        seed = self.seeds[index]
        labels = labels_for_conditions(self.generator, {}, 1, seeds=[seed])
        return render_faces(self.generator, [seed], self.psi, labels, self.precision)[0]

    def reference(self, index: int) -> dict:
        return {**self.describe, "seed": self.seeds[index], "psi": self.psi}


@dataclass
class StoredFaces:
    """Faces already encoded as PNG in Parquet shards (a generated output or an imported dataset)."""

    item: str
    pngs: list[bytes]
    resolution: int
    describe: dict = field(default_factory=dict)

    def count(self) -> int:
        return len(self.pngs)

    def face(self, index: int) -> np.ndarray:
        return decode_png(self.pngs[index])

    def reference(self, index: int) -> dict:
        return {**self.describe, "row": index}


def model_faces(registry: Registry, ref: str, psi: float, precision: str, seeds: range) -> ModelFaces:
    loaded = registry.load_generator(ref)
    return ModelFaces(f"model:{loaded.version}", loaded.generator, loaded.info.resolution, psi, precision, seeds,
                      {"source": "model", "registry": registry.url, "version": loaded.version})


def dataset_faces(url: str, max_rows: int, key: str = "human.real") -> StoredFaces:
    """The first `max_rows` faces of an imported dataset (the real side)."""
    url = storage.normalize_url(url)
    manifest = read_manifest(url)
    if manifest is None:
        raise HumanEvalError(f"{key}: no imported dataset at {url} (no ganray manifest.json); "
                             "make one with `ganray data import`")
    fs, root = storage.url_to_fs(url)
    pngs = first_rows(fs, shard_paths(root, manifest), "image", max_rows)
    if not pngs:
        raise HumanEvalError(f"{key}: the dataset at {url} has no rows")
    return StoredFaces(REAL_ITEM, pngs, int(manifest["resolution"]),
                       {"source": "dataset", "dataset": url, "manifest_hash": manifest.get("manifest_hash")})


def output_faces(url: str, max_rows: int, key: str = "human.generated") -> StoredFaces:
    """The first `max_rows` faces of a finished `ganray generate` output (its Parquet shards)."""
    url = storage.normalize_url(url)
    manifest = read_generated_manifest(url)
    if manifest is None:
        raise HumanEvalError(f"{key}: {url} is not a finished `ganray generate` output "
                             f"(no readable {GENERATED_MANIFEST})")
    paths = generated_parquet_paths(url, manifest)
    if not paths:
        raise HumanEvalError(f"{key}: {url} has no Parquet shards (generated with format png?)")
    fs, _ = storage.url_to_fs(url)
    pngs = first_rows(fs, paths, "image", max_rows)
    parameters = manifest.get("parameters") or {}
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return StoredFaces(f"output:{name}", pngs, int(parameters.get("resolution") or decode_png(pngs[0]).shape[0]),
                       {"source": "output", "output": url, "model_version": parameters.get("model_version")})


def check_one_resolution(sources: list) -> int:
    sizes = {s.item: s.resolution for s in sources}
    if len(set(sizes.values())) != 1:
        raise HumanEvalError(f"faces must be compared at one resolution, got {sizes}: a sharper or blurrier side "
                             "would decide the choice")
    return next(iter(sizes.values()))
