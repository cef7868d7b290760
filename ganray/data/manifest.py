"""The dataset format: an import's manifest, its shard list, and the one shard reader.

An imported dataset (`ganray data import`, docs/CONTRACTS.md "Imported datasets") is a
`manifest.json` naming Parquet shards by paths relative to its folder; a finished `ganray generate`
output has its own manifest (ganray/generate/output.py) whose shards are Parquet files as well.
Every reader of either (training, the labeler's dataset, eval, the human-evaluation page) reads the
manifest and the shards through this module, so paths are checked (`storage.child`) and shards are
opened the same way everywhere. `read_face_rows` gives a shard's rows in ganray's terms (`image`:
PNG bytes, labels: strings) whatever its table layout (ganray/data/hf_features.py) or format
(Parquet, or a generated output's WebDataset tar).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ganray import storage
from ganray.data.hf_features import decode_columns, features_of
from ganray.storage import join, url_to_fs

MANIFEST_NAME = "manifest.json"
FORMAT = "ganray-shards/1"
SHARD_NAME = "shard-{:05d}.parquet"
WEIGHT_COLUMN = "weight"  # import.balance.mode weights: a row's sampling weight
IMPORTS_DIR = "imports"  # each import's shards live under IMPORTS_DIR/<import id>/
# An import id: UTC start time (sorts by age for a reader of the folder) and a random part (unique).
IMPORT_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{12}")
GENERATED_MANIFEST = "manifest.json"  # a finished `ganray generate` output's manifest


# ---------------------------------------------------------------------------------------------
# Manifests


def read_manifest(url: str) -> dict | None:
    """The manifest of the import at `url`, or None if there is no (ganray) manifest there."""
    fs, root = url_to_fs(url)
    path = join(root, MANIFEST_NAME)
    fs.invalidate_cache(root)
    if not fs.exists(path):
        return None
    try:
        manifest = json.loads(fs.cat_file(path))
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def shard_paths(root: str, manifest: dict) -> list[str]:
    """The shard files a manifest names, under `root` (a URL or a filesystem path), in order.

    Each name goes through storage.child: a manifest naming anything outside `root` raises
    UnsafePathError before a single file is opened or deleted.
    """
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise ValueError(f"the {MANIFEST_NAME} under {root} has no list of shards")
    return [storage.child(root, shard.get("file")) for shard in shards]


def manifest_hash(manifest: dict, rows_digest: str) -> str:
    """Identity of the imported data: what was kept, its labels and how it was preprocessed.

    The source URL is left out on purpose: the same data imported from another place is the same
    dataset.
    """
    identity = {k: manifest[k] for k in ("format", "resolution", "attributes", "settings")}
    identity["rows"] = rows_digest
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def read_generated_manifest(url: str) -> dict[str, Any] | None:
    """A finished `ganray generate` output's manifest, or None when it is missing or unreadable."""
    try:
        return json.loads(storage.read_bytes(join(url, GENERATED_MANIFEST)))
    except (FileNotFoundError, ValueError):
        return None


def generated_parquet_paths(url: str, manifest: dict[str, Any]) -> list[str]:
    """The Parquet shards a generate output's manifest names, as filesystem paths in face order
    (each checked by storage.child); empty for an output written as PNG files only."""
    parquet = sorted(rel for shard in manifest.get("shards", []) for rel in shard.get("files", {})
                     if rel.endswith(".parquet"))
    return [url_to_fs(storage.child(url, rel))[1] for rel in parquet]


# ---------------------------------------------------------------------------------------------
# The shard reader (fs: the fsspec filesystem of the dataset's URL; paths from the functions above)


def read_face_rows(fs, path: str, columns: list[str] | None = None,
                   row_groups: list[int] | None = None) -> pa.Table:
    """Rows of one shard as ganray reads them, whatever its layout: `image` as PNG bytes, every
    attribute label as its string (a ClassLabel's name), other columns as stored.

    `columns` None reads them all; `row_groups` (indices into the Parquet file) reads only those
    groups, in the order given. A WebDataset `.tar` shard is read whole as one row group: its
    `KEY.json` rows, with `image` from `KEY.png`.
    """
    if path.endswith(".tar"):
        if row_groups not in (None, [0]):
            raise ValueError(f"{path} is a tar shard: it has one row group, 0, not {row_groups}")
        return _tar_rows(fs, path, columns)
    shard = pq.ParquetFile(path, filesystem=storage.pyarrow_filesystem(fs))
    table = shard.read(columns=columns) if row_groups is None else shard.read_row_groups(row_groups, columns=columns)
    return decode_columns(table, features_of(shard.schema_arrow))


def _tar_rows(fs, path: str, columns: list[str] | None) -> pa.Table:
    rows: dict[str, dict[str, Any]] = {}
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            key, _, ext = posixpath.basename(member.name).partition(".")
            if ext == "json":
                rows.setdefault(key, {}).update(json.loads(tar.extractfile(member).read()))
            elif ext == "png" and (columns is None or "image" in columns):
                rows.setdefault(key, {})["image"] = tar.extractfile(member).read()
    table = pa.Table.from_pylist(list(rows.values()))
    names = _with_image(table.column_names)
    return table.select(names if columns is None else [c for c in columns if c in names])


def _with_image(names: list[str]) -> list[str]:
    """A tar shard's columns in a Parquet shard's order: `image` after `seed`, as the writer puts it."""
    rest = [n for n in names if n != "image"]
    if "image" not in names:
        return rest
    at = rest.index("seed") + 1 if "seed" in rest else 0
    return rest[:at] + ["image"] + rest[at:]


def read_columns(fs, path: str, columns: list[str]) -> pa.Table:
    """The given columns of one shard (read_face_rows)."""
    return read_face_rows(fs, path, columns)


def column_names(fs, path: str) -> list[str]:
    """The columns of one shard (its schema only: no rows are read)."""
    if path.endswith(".tar"):  # the first sample's JSON row, and the image
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    return _with_image(["image", *json.loads(tar.extractfile(member).read())])
        return []
    return list(pq.read_schema(path, filesystem=storage.pyarrow_filesystem(fs)).names)


def first_rows(fs, paths: list[str], column: str, count: int) -> list:
    """Up to `count` values of `column` from the start of the shards, in order; shards after the last
    one needed are not opened."""
    values: list = []
    for path in paths:
        if len(values) >= count:
            break
        values += read_columns(fs, path, [column])[column].to_pylist()[: count - len(values)]
    return values


def rows_at(fs, paths: list[str], indices: list[int], column: str = "image") -> dict[int, Any]:
    """{global row index: value of `column`} for the given rows of the shards read in `paths` order.
    Only the row groups holding a wanted row are read; shards after the last wanted row are not opened."""
    wanted, found, start = sorted(set(indices)), {}, 0
    for path in paths:
        if len(found) == len(wanted):
            break
        shard = pq.ParquetFile(path, filesystem=storage.pyarrow_filesystem(fs))
        for group in range(shard.metadata.num_row_groups):
            rows = shard.metadata.row_group(group).num_rows
            here = [i for i in wanted if start <= i < start + rows]
            if here:
                values = read_face_rows(fs, path, [column], row_groups=[group])[column]
                found.update({i: values[i - start].as_py() for i in here})
            start += rows
    return found


def read_dataset(fs, paths: list[str], columns: list[str]):
    """The shards as a lazy Ray Dataset of `columns`, rows in shard order (ray.data.read_parquet),
    decoded as read_face_rows decodes them."""
    import ray.data

    dataset = ray.data.read_parquet(paths, filesystem=storage.pyarrow_filesystem(fs), columns=columns)
    features = features_of(pq.read_schema(paths[0], filesystem=storage.pyarrow_filesystem(fs))) if paths else None
    if not features:
        return dataset
    return dataset.map_batches(decode_columns, fn_kwargs={"features": features}, batch_format="pyarrow",
                               batch_size=None, zero_copy_batch=True)
