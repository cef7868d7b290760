"""`ganray data import SRC DST`: a folder or ZIP of images (any fsspec URL) -> training shards.

The steps, and where each runs:
1. driver: list the image files (names only, never bytes: ganray.data.sources) and look up their
   labels (ganray.data.source_labels); files without labels are dropped as `bad_label`.
2. Ray Data: `from_items(paths)` -> `map_batches` that reads each file with fsspec (ZIP members
   through fsspec too), hashes it and preprocesses it (ganray.data.preprocess) -> materialized.
3. driver: pulls only (path, hash, drop reason, labels) back to find exact duplicates: the first
   file in sorted path order keeps its place, later copies are dropped as `duplicate`; with
   `leave_out_heldout`, images in that content-hash split are dropped as `held_out`.
4. Ray: the kept rows, still in sorted path order, are cut into `shard_rows` slices and one task
   writes each slice as a Parquet shard under a fresh prefix, `imports/<import id>/`, that no
   manifest names yet.
5. commit: `manifest.json`, naming the new shards by paths relative to dst, replaces the old one in
   one atomic write (local rename, S3 single PUT). Only then are the previous import's shards and
   the leftovers of crashed imports (prefixes under `imports/` that the manifest does not name)
   removed. A crash at any point leaves dst holding either the previous import or the new one,
   complete; the next import cleans up what a crash left behind.
6. the import is a data version (ganray.data.versions): the manifest names it, and its record goes
   to the data catalog once the manifest is in place.

Layout of dst:

    manifest.json                           the import: counts, labels, "shards": [{"file", "rows"}]
    imports/<import id>/shard-00000.parquet the shards it names (paths relative to dst)

The manifest and the shard paths it names are read by ganray.data.manifest.
Every path read from a manifest goes through `storage.child`: an absolute path, '..', or a URL
is refused (UnsafePathError), never read or deleted. An import written by an older ganray
(shards at the top of dst) still reads, and is replaced by the next import.

One import at a time per dst: a second import running concurrently into the same dst may remove
the first one's unreferenced prefix as a crash leftover.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ganray.config import ConfigError, ImportConfig
from ganray.data import balance as balancing
from ganray.data import preprocess
from ganray.data import versions
from ganray.data.hash_split import HELDOUT_RULE, heldout_mask
from ganray.data.manifest import (FORMAT, IMPORT_ID, IMPORTS_DIR, MANIFEST_NAME, SHARD_NAME, WEIGHT_COLUMN,
                                  manifest_hash, read_manifest, shard_paths)
from ganray.data.source_labels import infer_values, make_source_labels
from ganray.data.sources import list_images, read_sources
from ganray.images import encode_png
from ganray import storage
from ganray.storage import sha256_hex, atomic_write, join, to_url, url_to_fs


# ---------------------------------------------------------------------------------------------
# The Ray steps


def _output_schema(label_names: list[str]) -> pa.Schema:
    return pa.schema(
        [("image", pa.binary()), *[(n, pa.int64()) for n in label_names],
         ("source_path", pa.string()), ("content_hash", pa.string()), ("drop_reason", pa.string())]
    )


def preprocess_batch(batch: dict[str, np.ndarray], *, src: str, label_names: list[str], resolution: int,
                     min_size: int, blank_std: float, blur_threshold: float) -> pa.Table:
    """Read, hash and preprocess one batch of source files. Dropped rows keep an empty image."""
    paths = [str(p) for p in batch["path"]]
    images, hashes, reasons = [], [], []
    for data in read_sources(src, paths):
        if data is None:
            images.append(b"")
            hashes.append("")
            reasons.append("undecodable")
            continue
        image, reason = preprocess.preprocess(
            data, resolution, min_size=min_size, blank_std=blank_std, blur_threshold=blur_threshold
        )
        images.append(b"" if image is None else encode_png(image))
        hashes.append(sha256_hex(data))
        reasons.append(reason or "")
    columns = {"image": images, **{n: batch[n].astype(np.int64) for n in label_names},
               "source_path": paths, "content_hash": hashes, "drop_reason": reasons}
    return pa.table(columns, schema=_output_schema(label_names))


def keep_rows(batch: pa.Table, *, left_out: set[str], copies: dict[str, int] | None = None,
              weights: dict[str, float] | None = None) -> pa.Table:
    """The rows that passed every check and are not left out (a later copy of an earlier file, a held-out image).

    Balancing (ganray.data.balance): `copies` says how often each kept path is written (0: left out;
    copies follow their row), `weights` adds a float64 `weight` column.
    """
    keep = [r == "" and p not in left_out
            for r, p in zip(batch["drop_reason"].to_pylist(), batch["source_path"].to_pylist())]
    kept = batch.filter(pa.array(keep, type=pa.bool_())).drop_columns(["drop_reason"])
    paths = kept["source_path"].to_pylist()
    if copies is not None:
        kept = kept.take(pa.array([i for i, p in enumerate(paths) for _ in range(copies[p])], type=pa.int64()))
        paths = kept["source_path"].to_pylist()
    if weights is not None:
        kept = kept.append_column(WEIGHT_COLUMN, pa.array([weights[p] for p in paths], type=pa.float64()))
    return kept


@ray.remote
def write_shard(url: str, *tables: pa.Table) -> int:
    table = pa.concat_tables(tables)
    fs, path = url_to_fs(url)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="none")  # PNG bytes do not compress further
    return table.num_rows


# ---------------------------------------------------------------------------------------------
# Destination and manifest


def _previous_import(cfg: ImportConfig) -> dict | None:
    """The manifest already at dst (to be replaced), or None; refuses a foreign non-empty dst, and
    a manifest whose shard paths leave dst (its files are never touched)."""
    fs, root = url_to_fs(cfg.dst)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return None
    if not fs.isdir(root):
        raise ConfigError(f"import.dst: {cfg.dst} is a file, not a folder")
    if not fs.ls(root, detail=False):
        return None
    previous = read_manifest(cfg.dst)
    if previous is None and _holds_only_crash_leftovers(fs, root):
        return None  # a first import that failed part way (e.g. the endpoint went away): finish it
    if previous is None and not cfg.overwrite:
        raise ConfigError(
            f"import.dst: {cfg.dst} is not empty and is not a previous import (no {MANIFEST_NAME}); "
            "choose an empty folder or set import.overwrite=true"
        )
    if previous is not None:
        try:
            shard_paths(root, previous)
        except ValueError as e:
            raise ConfigError(f"import.dst: refusing to replace the import at {cfg.dst}: {e}. Nothing was "
                              f"written or deleted; remove that {MANIFEST_NAME} by hand if the folder is yours") from None
    return previous


def _holds_only_crash_leftovers(fs, root: str) -> bool:
    """Whether everything under `root` is what a failed import leaves behind when it could not
    clean up (its shards under imports/<import id>/, a temporary manifest): the next import may
    write there, and removes them once its manifest is in place."""
    for path in fs.find(root):
        parts = path[len(root.rstrip("/")) + 1:].split("/")
        if len(parts) >= 2 and parts[0] == IMPORTS_DIR and IMPORT_ID.fullmatch(parts[1]):
            continue
        if len(parts) == 1 and parts[0].startswith(MANIFEST_NAME + storage.TEMP_MARKER):
            continue
        return False
    return True



# ---------------------------------------------------------------------------------------------


def run_import(cfg: ImportConfig) -> dict:
    """Import cfg.src into cfg.dst (see the module docstring); returns the manifest written."""
    # Credentials, buckets and the endpoint checked before anything (StorageAccessError, exit 2).
    storage.check_reachable(storage.normalize_url(cfg.src), "import.src")
    storage.check_reachable(storage.normalize_url(cfg.dst), "import.dst")
    previous = _previous_import(cfg)
    catalog = versions.catalog_for_import(cfg.dst, cfg.catalog)
    storage.check_reachable(catalog, "import.catalog")
    try:
        parent = versions.resolve_parent(cfg.parent, catalog) if cfg.parent else None
    except versions.DataVersionError as e:
        raise ConfigError(f"import.parent: {e}") from None
    paths = list_images(cfg.src)
    source_labels = make_source_labels(cfg.labels)
    labels = {p: source_labels.lookup(p) for p in paths}
    dropped: dict[str, list[str]] = {reason: [] for reason in preprocess.DROP_REASONS}
    dropped["bad_label"] = [p for p in paths if labels[p] is None]
    labeled = [p for p in paths if labels[p] is not None]
    attributes = source_labels.values or infer_values(source_labels.names, [labels[p] for p in labeled])
    value_index = {n: {v: i for i, v in enumerate(vs)} for n, vs in attributes.items()}
    items = [{"path": p, **{n: value_index[n][labels[p][n]] for n in attributes}} for p in labeled]
    if cfg.balance is not None:
        balancing.check_attributes(cfg.balance, attributes)  # before any Ray work
    if not items:
        raise ValueError(f"import: no labeled images in {cfg.src} ({len(paths)} image files seen)")

    source = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / cfg.batch_size))
    # Sorted path order must survive every step: it decides which duplicate is kept and what each
    # shard holds. Set on this dataset's own context (shared by the datasets derived from it).
    source.context.execution_options.preserve_order = True
    label_names = list(attributes)
    processed = source.map_batches(
        preprocess_batch, batch_size=cfg.batch_size, batch_format="numpy",
        fn_kwargs=dict(src=cfg.src, label_names=label_names, resolution=cfg.resolution, min_size=cfg.min_size,
                       blank_std=cfg.blank_std, blur_threshold=cfg.blur_threshold),
    ).materialize()

    index = processed.select_columns(["source_path", "content_hash", "drop_reason", *label_names]).take_all()
    index.sort(key=lambda row: row["source_path"])
    first_with_hash: dict[str, str] = {}
    kept_rows = []
    for row in index:
        if row["drop_reason"]:
            dropped[row["drop_reason"]].append(row["source_path"])
        elif cfg.deduplicate and row["content_hash"] in first_with_hash:
            dropped["duplicate"].append(row["source_path"])
        else:
            first_with_hash[row["content_hash"]] = row["source_path"]
            kept_rows.append(row)
    if cfg.leave_out_heldout is not None:
        held = heldout_mask([r["content_hash"] for r in kept_rows], cfg.leave_out_heldout)
        dropped["held_out"] = [r["source_path"] for r, h in zip(kept_rows, held) if h]
        kept_rows = [r for r, h in zip(kept_rows, held) if not h]
    if not kept_rows:
        raise ValueError(f"import: every image in {cfg.src} was dropped: "
                         f"{ {r: len(p) for r, p in dropped.items() if p} }")

    balanced = balancing.balance(kept_rows, attributes, cfg.balance) if cfg.balance is not None else None
    copies = balanced.copies if balanced is not None else [1] * len(kept_rows)
    weights = balanced.weights if balanced is not None else None
    manifest = {
        "format": FORMAT,
        "source": cfg.src,
        "resolution": cfg.resolution,
        "attributes": attributes,
        "settings": {"min_size": cfg.min_size, "blank_std": cfg.blank_std, "blur_threshold": cfg.blur_threshold,
                     "deduplicate": cfg.deduplicate, "labels": cfg.labels.model_dump()},
        "counts": {"seen": len(paths), "kept": len(kept_rows), "dropped": sum(map(len, dropped.values()))},
        "dropped": {reason: len(ps) for reason, ps in dropped.items()},
        "dropped_examples": {reason: sorted(ps)[: cfg.examples_per_reason] for reason, ps in dropped.items() if ps},
        "label_histograms": {  # rows as written (after balancing; weights mode: each row once)
            n: {v: c for v, c in zip(vs, np.bincount([r[n] for r in kept_rows], weights=copies,
                                                     minlength=len(vs)).astype(int).tolist())}
            for n, vs in attributes.items()
        },
    }
    if cfg.leave_out_heldout is not None:  # only then, as with balance below
        manifest["settings"]["leave_out_heldout"] = {"rule": HELDOUT_RULE, "fraction": cfg.leave_out_heldout}
    if balanced is not None:  # only then: an unbalanced import keeps the settings (and hash) it always had
        manifest["settings"]["balance"] = cfg.balance.model_dump()
        manifest["counts"]["rows"] = sum(copies)
        manifest["balance"] = balanced.section
    rows_digest = hashlib.sha256("".join(
        f"{r['content_hash']} {[r[n] for n in label_names]}{'' if weights is None else f' {weights[i]!r}'}\n" * copies[i]
        for i, r in enumerate(kept_rows)).encode()).hexdigest()

    manifest["manifest_hash"] = manifest_hash(manifest, rows_digest)
    _add_version(manifest, cfg, catalog, parent, previous)
    paths_kept = [r["source_path"] for r in kept_rows]
    kept = processed.map_batches(keep_rows, batch_format="pyarrow", fn_kwargs={
        "left_out": set(dropped["duplicate"]) | set(dropped.get("held_out", [])),
        "copies": dict(zip(paths_kept, copies)) if balanced is not None else None,
        "weights": dict(zip(paths_kept, weights)) if weights is not None else None})
    import_id = _write_and_commit(cfg, kept, sum(copies), manifest, previous)
    versions.write_record(versions.make_record(
        manifest, dst=cfg.dst, catalog=catalog, import_id=import_id, parent=manifest["parent"],
        license=cfg.license, license_note=cfg.license_note))
    return manifest


def _add_version(manifest: dict, cfg: ImportConfig, catalog: str, parent: dict | None, previous: dict | None) -> None:
    """Name the data version in the manifest (outside the hashed identity): its id, catalog, license
    and parent; without import.parent, the parent is the import this one replaces if it came from
    the same src (a re-import with other settings derives from it)."""
    if parent is None and previous is not None and previous.get("source") == cfg.src \
            and previous.get("manifest_hash") not in (None, manifest["manifest_hash"]):
        parent = {"version": versions.version_of(previous), "location": storage.normalize_url(cfg.dst),
                  "catalog": previous.get("data_catalog") or catalog}
    manifest.update(data_version=versions.version_id(manifest["manifest_hash"]), data_catalog=catalog,
                    license=cfg.license or "unknown", license_note=cfg.license_note, parent=parent)


# The commit's named points, in the order they are reached; "clean_up_failed" is reached only on an
# error before the new manifest is in place. Tests set `commit_point_hook` to a function that raises
# at one of them, which stops the import there as a crash would (tests/test_import.py); it is None
# otherwise.
COMMIT_POINTS = ("write_shards", "switch_manifest", "remove_previous", "remove_leftovers", "clean_up_failed")
commit_point_hook: Callable[[str], None] | None = None


def _commit_point(name: str) -> None:
    if commit_point_hook is not None:
        commit_point_hook(name)


def new_import_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def _write_and_commit(cfg: ImportConfig, kept: ray.data.Dataset, n_kept: int, manifest: dict,
                      previous: dict | None) -> str:
    """Write the shards under a fresh prefix, switch manifest.json to them, then clean up; returns
    the import id.

    Until the switch nothing that a manifest names changes (the previous import stays valid);
    if anything fails before it, the new prefix is removed.
    """
    fs, root = url_to_fs(cfg.dst)
    import_id = new_import_id()
    prefix = f"{IMPORTS_DIR}/{import_id}"
    starts = list(range(cfg.shard_rows, n_kept, cfg.shard_rows))
    slices = kept.split_at_indices(starts) if starts else [kept.materialize()]
    files = [f"{prefix}/{SHARD_NAME.format(i)}" for i in range(len(slices))]
    created_root = not fs.exists(root)
    try:
        _commit_point("write_shards")
        fs.makedirs(join(root, prefix), exist_ok=True)
        writes = [write_shard.remote(to_url(fs, join(root, file)), *part.to_arrow_refs())
                  for file, part in zip(files, slices)]
        ray.wait(writes, num_returns=len(writes))  # all ended, failed ones too: none writes after a clean-up
        rows = ray.get(writes)
        if sum(rows) != n_kept:
            raise RuntimeError(f"import: wrote {sum(rows)} rows but kept {n_kept}")
        manifest["shards"] = [{"file": file, "rows": n} for file, n in zip(files, rows)]
        _commit_point("switch_manifest")
        atomic_write(to_url(fs, join(root, MANIFEST_NAME)), json.dumps(manifest, indent=1).encode())
    except BaseException:
        _commit_point("clean_up_failed")
        # An S3 PUT can fail on the client after the server stored it: never remove what is named.
        if not _names_prefix(read_manifest(cfg.dst), prefix):
            storage.remove(join(cfg.dst, prefix))
            _remove_empty_folders(fs, [join(root, IMPORTS_DIR)] + ([root] if created_root else []))
        raise

    _commit_point("remove_previous")
    if previous is not None:
        current = set(shard_paths(root, manifest))
        stale = [path for path in shard_paths(root, previous) if path not in current and fs.exists(path)]
        if stale:
            fs.rm(stale)
    _commit_point("remove_leftovers")
    _remove_leftovers(cfg.dst, keep=import_id)
    return import_id


def _names_prefix(manifest: dict | None, prefix: str) -> bool:
    """Whether `manifest` names a shard under `prefix` (read as data: any shape is tolerated)."""
    shards = manifest.get("shards") if manifest is not None else None
    return isinstance(shards, list) and any(
        isinstance(s, dict) and str(s.get("file", "")).startswith(prefix + "/") for s in shards)


def _remove_leftovers(dst: str, keep: str) -> None:
    """Remove what earlier imports left behind: every import prefix except `keep` (the one the
    manifest names), and temporary manifest files of a killed local write."""
    for entry in storage.ls(join(dst, IMPORTS_DIR)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if IMPORT_ID.fullmatch(name) and name != keep:  # nothing else under imports/ is ours
            storage.remove(entry)
    for entry in storage.ls(dst):
        if entry.rsplit("/", 1)[-1].startswith(MANIFEST_NAME + storage.TEMP_MARKER):
            storage.remove(entry)


def _remove_empty_folders(fs, folders: list[str]) -> None:
    """Remove each folder that exists and is empty (local disks; object stores have no folders)."""
    for folder in folders:
        fs.invalidate_cache(folder)
        if fs.isdir(folder) and not fs.ls(folder, detail=False):
            fs.rmdir(folder)
