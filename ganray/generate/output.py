"""The output folder of a generation job: layout, ownership, shard commits and the run manifest.

    OUT/job.json                          job id + the parameters that determine the bytes (written FIRST)
    OUT/parquet/shard-00000.parquet       format parquet|both: one row per face, PNG bytes in `image`
    OUT/png/shard-00000/000000042.png     format png|both: one file per face ...
    OUT/png/shard-00000/metadata.parquet  ... and the shard's rows without the image column
    OUT/_manifest/shard-00000.json        the shard's commit: rows, bytes, sha256 (written LAST)
    OUT/manifest.json                     every shard + the job, when all shards are committed
    OUT/summary.json                      the run's throughput and wall time

Exactly once: a shard exists only once its `_manifest` entry does, and the entry is written after
the shard's files are in place. Before (re)running, anything that is not a committed, intact shard
is removed (temporary files of a killed writer, files of a shard whose entry never appeared), so
the missing shards are rewritten from scratch and the finished output holds each face once.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ganray import storage
from ganray.generate.plan import ShardRange

JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
ENTRIES_DIR = "_manifest"
PARQUET_DIR = "parquet"
PNG_DIR = "png"
PNG_METADATA_FILE = "metadata.parquet"

_SHARD_NAME = re.compile(r"^shard-(\d{5,})(\.parquet|\.json)?$")


class GenerateError(ValueError):
    """A generation job that cannot run as asked (bad model, conditions or output). CLI exit 2."""


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


sha256 = storage.sha256_hex


def folder_checksum(files: dict[str, bytes]) -> str:
    """sha256 over a folder's (name, sha256 of content) pairs in name order."""
    return sha256("".join(f"{name}:{sha256(data)}\n" for name, data in sorted(files.items())).encode())


@dataclass(frozen=True)
class OutputLayout:
    url: str
    format: str  # parquet | png | both

    def path(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    @property
    def writes_parquet(self) -> bool:
        return self.format in ("parquet", "both")

    @property
    def writes_png(self) -> bool:
        return self.format in ("png", "both")

    def entry_url(self, shard: ShardRange) -> str:
        return self.path(ENTRIES_DIR, f"{shard.name}.json")

    def parquet_relpath(self, shard: ShardRange) -> str:
        return f"{PARQUET_DIR}/{shard.name}.parquet"

    def png_relpath(self, shard: ShardRange) -> str:
        return f"{PNG_DIR}/{shard.name}/"


# -- ownership ---------------------------------------------------------------------------------


def _nearest_existing_local_dir(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output(layout: OutputLayout, job: dict[str, Any]) -> bool:
    """Check that the job may write to the output, without writing anything.

    Returns True when the output already belongs to this job (a resume), False when it is new.
    Raises GenerateError for output that belongs to another job (naming what differs), for a
    folder that is not a ganray output, and for a location that cannot be written.
    """
    fs, path = storage.url_to_fs(layout.url)
    if fs.exists(path):
        if fs.isfile(path):
            raise GenerateError(f"output {layout.url} is a file, not a folder")
        if storage.exists(layout.path(JOB_FILE)):
            theirs = json.loads(storage.read_bytes(layout.path(JOB_FILE)))
            if theirs["job_id"] == job["job_id"]:
                return True
            mine, other = job["parameters"], theirs.get("parameters", {})
            differences = [f"{key}: {other.get(key)!r} there, {mine.get(key)!r} in this job"
                           for key in sorted(set(mine) | set(other)) if mine.get(key) != other.get(key)]
            raise GenerateError(
                f"output {layout.url} belongs to another job (job id {theirs['job_id']}, this job {job['job_id']}); "
                "nothing was written. What differs:\n  " + "\n  ".join(differences)
                + "\nUse another output folder, or the same parameters to resume that job.")
        if storage.ls(layout.url):
            raise GenerateError(f"output {layout.url} is not empty and holds no {JOB_FILE}: "
                                "it is not a ganray generate output; nothing was written")
        return False
    if storage.is_local(layout.url):
        parent = _nearest_existing_local_dir(path)
        if not os.path.isdir(parent):
            raise GenerateError(f"cannot create output {layout.url}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise GenerateError(f"cannot create output {layout.url}: {parent} is not writable")
    else:
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            raise GenerateError(f"cannot create output {layout.url}: bucket {bucket!r} does not exist")
    return False


def create_output(layout: OutputLayout, job: dict[str, Any]) -> None:
    """Claim a new output for the job: job.json is the first thing written."""
    try:
        storage.atomic_write(layout.path(JOB_FILE), json_bytes(job))
    except OSError as e:
        raise GenerateError(f"cannot write to output {layout.url}: {e}") from None


# -- shards ------------------------------------------------------------------------------------


def _intact(layout: OutputLayout, entry: dict[str, Any]) -> bool:
    """The committed shard's files are all there with the sizes the entry records.

    Sizes, not checksums: reading back every byte of a large output on each resume would cost as
    much as writing it; the sha256 in the entry lets a consumer verify content when it needs to.
    """
    fs, _ = storage.url_to_fs(layout.url)
    for relpath, expected in entry["files"].items():
        if relpath.endswith("/"):
            found = [f for f in storage.ls(layout.path(relpath), detail=True)
                     if f["type"] == "file" and not storage.is_temp(f["name"])]
            if len(found) != expected["files"] or sum(f["size"] for f in found) != expected["bytes"]:
                return False
        else:
            _, path = storage.url_to_fs(layout.path(relpath))
            try:
                if fs.size(path) != expected["bytes"]:
                    return False
            except FileNotFoundError:
                return False
    return True


def _shard_index(url: str) -> int | None:
    match = _SHARD_NAME.match(url.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def committed_shards(layout: OutputLayout, shards: list[ShardRange]) -> set[int]:
    """Indices of committed, intact shards, after removing everything else a killed run left behind."""
    wanted = {s.index for s in shards}
    committed = set()
    for url in storage.ls(layout.path(ENTRIES_DIR)):
        index = _shard_index(url)
        if index is None:
            storage.remove(url)  # a temporary entry of a killed writer
            continue
        entry_url = layout.entry_url(shards[index]) if index in wanted else None
        if entry_url and _intact(layout, json.loads(storage.read_bytes(entry_url))):
            committed.add(index)
        else:
            storage.remove(entry_url or url)
    for folder in (PARQUET_DIR, PNG_DIR):
        for url in storage.ls(layout.path(folder)):
            if _shard_index(url) not in committed:
                storage.remove(url)  # a shard (or its temporary copy) that was never committed
    for url in storage.ls(layout.url):
        if storage.is_temp(url):
            storage.remove(url)
    return committed


def shard_entries(layout: OutputLayout, shards: list[ShardRange]) -> list[dict[str, Any]]:
    return [json.loads(storage.read_bytes(layout.entry_url(s))) for s in shards]


def write_run_manifest(layout: OutputLayout, job: dict[str, Any], shards: list[ShardRange]) -> dict[str, Any]:
    """manifest.json: the job and every shard, written once all shards are committed."""
    entries = shard_entries(layout, shards)
    manifest = {
        **job,
        "faces": sum(e["rows"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "shards": entries,
    }
    storage.atomic_write(layout.path(MANIFEST_FILE), json_bytes(manifest))
    return manifest
