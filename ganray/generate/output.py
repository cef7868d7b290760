"""The output folder of a generation job: layout, ownership, shard commits and the run manifest.

    OUT/_lease/lease-00000001.json        the writing driver's lease (ganray/generate/lease.py)
    OUT/job.json                          job id + the parameters that determine the bytes (written FIRST)
    OUT/data/train-00000-of-00040.parquet format parquet|both: one row per face, PNG bytes in `image`
    OUT/png/shard-00000/000000042.png     format png|both: one file per face ...
    OUT/png/shard-00000/metadata.parquet  ... and the shard's rows without the image column
    OUT/webdataset/shard-00000.tar        format webdataset: KEY.png + KEY.json (+ KEY.cls) per face
    OUT/_manifest/shard-00000.json        the shard's commit: job id, rows, bytes, sha256 (written LAST)
    OUT/manifest.json                     every shard + the job, when all shards are committed
    OUT/summary.json                      the run's throughput and wall time

Exactly once: a shard exists only once its `_manifest` entry does, and the entry is written after
the shard's files are in place. Before (re)running, the driver holding the output's lease removes
anything that is not a committed, intact shard (temporary files of a killed writer, files of a
shard whose entry never appeared, a shard whose bytes no longer match its entry's sha256 or whose
entry names another job), so those shards are rewritten from scratch and the finished output
holds each face once. Paths read from an entry go through storage.child: an entry naming a path
outside the output is refused (GenerateError), and nothing it names is read or deleted.

Parquet files are written in a table layout (ganray/data/hf_features.py), recorded in job.json as
`table_layout`: new jobs write `hf-datasets/1`; an output started before that key existed has none
and keeps `plain/1` when its job is resumed (keep_existing_layout), so one output never mixes them.
Parquet shards are named as Hugging Face names a sharded split (`parquet_files`: HUB_FILES), the
first pattern `datasets.load_dataset("parquet", data_dir=OUT)` looks for, so it reads the shards
alone whatever else OUT holds; an output started before that key keeps `parquet/shard-NNNNN.parquet`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ganray import storage
from ganray.data.hf_features import HF_LAYOUT, PLAIN_LAYOUT
from ganray.generate.lease import LEASE_DIR
from ganray.generate.plan import ShardRange, planned_shards

JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
ENTRIES_DIR = "_manifest"
PARQUET_DIR = "parquet"  # SHARD_FILES' folder
HUB_DIR = "data"  # HUB_FILES' folder
# How Parquet shards are named (job.json `parquet_files`; absent: SHARD_FILES, as before the key existed).
HUB_FILES = "data/train-NNNNN-of-NNNNN.parquet"
SHARD_FILES = "parquet/shard-NNNNN.parquet"
PNG_DIR = "png"
PNG_METADATA_FILE = "metadata.parquet"
WEBDATASET_DIR = "webdataset"

# Parameters that name where the faces are rendered rather than what they are.
RENDER_ENVIRONMENT_KEYS = {"torch", "device_kind", "device"}
# Committed shards are checked (read back and hashed) this many at a time: object stores serve
# concurrent reads much faster than one after another.
VERIFY_CONCURRENCY = 8

# A shard's files and entry: shard-00007(.parquet|.json|.tar), PNG folder shard-00007, train-00007-of-00040.parquet.
_SHARD_NAME = re.compile(r"^(?:shard-(\d{5,})(?:\.parquet|\.json|\.tar)?|train-(\d{5,})-of-\d{5,}\.parquet)$")


class GenerateError(ValueError):
    """A generation job that cannot run as asked (bad model, conditions or output). CLI exit 2."""


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def folder_checksum(files: dict[str, bytes]) -> str:
    """sha256 over a folder's (name, sha256 of content) pairs in name order."""
    pairs = "".join(f"{name}:{storage.sha256_hex(data)}\n" for name, data in sorted(files.items()))
    return storage.sha256_hex(pairs.encode())


@dataclass(frozen=True)
class OutputLayout:
    url: str
    format: str  # parquet | png | both | webdataset
    table_layout: str = HF_LAYOUT  # how Parquet files hold images and labels (hf_features.py)
    class_attribute: str | None = None  # webdataset: the attribute whose index is KEY.cls
    parquet_files: str = HUB_FILES  # how Parquet shards are named
    shard_count: int = 0  # the job's number of shards (HUB_FILES names carry it)

    def path(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    @property
    def writes_parquet(self) -> bool:
        return self.format in ("parquet", "both")

    @property
    def writes_png(self) -> bool:
        return self.format in ("png", "both")

    @property
    def writes_webdataset(self) -> bool:
        return self.format == "webdataset"

    def entry_url(self, shard: ShardRange) -> str:
        return self.path(ENTRIES_DIR, f"{shard.name}.json")

    def parquet_relpath(self, shard: ShardRange) -> str:
        if self.parquet_files == HUB_FILES:
            # Past 99,999 shards every name gets the wider width: datasets' sharded pattern then takes
            # none of them (rather than the first 100,000) and it reads them all by the word "train".
            width = max(5, len(str(self.shard_count)))
            return f"{HUB_DIR}/train-{shard.index:0{width}d}-of-{self.shard_count:0{width}d}.parquet"
        return f"{PARQUET_DIR}/{shard.name}.parquet"

    def png_relpath(self, shard: ShardRange) -> str:
        return f"{PNG_DIR}/{shard.name}/"

    def webdataset_relpath(self, shard: ShardRange) -> str:
        return f"{WEBDATASET_DIR}/{shard.name}.tar"


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
            differing = {key for key in set(mine) | set(other) if mine.get(key) != other.get(key)}
            advice = ("It was rendered with another torch build or on another kind of device, where the same "
                      "faces can have other bytes: resume it where it was started, or use another output folder."
                      if differing <= RENDER_ENVIRONMENT_KEYS else
                      "Use another output folder, or the same parameters to resume that job.")
            raise GenerateError(
                f"output {layout.url} belongs to another job (job id {theirs['job_id']}, this job {job['job_id']}); "
                "nothing was written. What differs:\n  " + "\n  ".join(differences) + "\n" + advice)
        names = {posixpath.basename(url.rstrip("/")) for url in storage.ls(layout.url)}
        if names and LEASE_DIR not in names:  # a lease without job.json: a driver is claiming it now
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


def parquet_dir(parameters: dict[str, Any]) -> str:
    """The folder holding the Parquet shards of an output with these job.json parameters."""
    return HUB_DIR if parameters.get("parquet_files", SHARD_FILES) == HUB_FILES else PARQUET_DIR


def output_parameters(layout: OutputLayout) -> dict[str, Any]:
    """What the output's layout adds to the job's parameters (they change the bytes written);
    `parquet_files` only where Parquet shards are written, so other jobs keep their identity."""
    return {"table_layout": layout.table_layout,
            **({"parquet_files": layout.parquet_files} if layout.writes_parquet else {}),
            **({"class_attribute": layout.class_attribute} if layout.class_attribute is not None else {})}


# Layout keys an output started before they existed lacks, and what their absence means.
LAYOUT_DEFAULTS = {"table_layout": PLAIN_LAYOUT, "parquet_files": SHARD_FILES}


def keep_existing_layout(layout: OutputLayout, job: dict[str, Any]) -> tuple[OutputLayout, dict[str, Any]]:
    """The layout and identity to write `layout.url` with: the output's own where it is this job
    started before some LAYOUT_DEFAULTS key existed (the same parameters, that key not recorded), so
    resuming it writes shards like its own under its own job id; else `layout`, `job` as given."""
    try:
        theirs = json.loads(storage.read_bytes(layout.path(JOB_FILE)))
        older = theirs["parameters"]
    except (OSError, ValueError, KeyError, TypeError):  # no output there yet (check_output says why not)
        return layout, job
    absent = {key for key in LAYOUT_DEFAULTS if key not in older}
    mine = {k: v for k, v in job["parameters"].items() if k not in absent}
    if not absent or older != mine:
        return layout, job
    kept = {key: older.get(key, default) for key, default in LAYOUT_DEFAULTS.items()}
    return dataclasses.replace(layout, **kept), theirs


def create_output(layout: OutputLayout, job: dict[str, Any]) -> None:
    """Claim a new output for the job: job.json is the first thing written."""
    try:
        storage.atomic_write(layout.path(JOB_FILE), json_bytes(job))
    except OSError as e:
        raise GenerateError(f"cannot write to output {layout.url}: {e}") from None


# -- shards ------------------------------------------------------------------------------------


def expected_files(layout: OutputLayout, shard: ShardRange) -> set[str]:
    """The paths (relative to the output) a committed shard's entry must name, no more, no fewer."""
    return ({layout.parquet_relpath(shard)} if layout.writes_parquet else set()) | (
        {layout.png_relpath(shard)} if layout.writes_png else set()) | (
        {layout.webdataset_relpath(shard)} if layout.writes_webdataset else set())


def _file_damage(layout: OutputLayout, relpath: str, expected: dict[str, Any]) -> str | None:
    """Why the file (or PNG folder) at `relpath` does not match its entry; None when it does."""
    url = storage.child(layout.url, relpath.rstrip("/")) + ("/" if relpath.endswith("/") else "")
    if relpath.endswith("/"):
        names = [u for u in storage.ls(url) if not storage.is_temp(u)]
        if not names:
            return f"{relpath} is missing"
        folder = {posixpath.basename(u.rstrip("/")): storage.read_bytes(u) for u in names}
        if len(folder) != expected.get("files") or folder_checksum(folder) != expected.get("sha256"):
            return f"{relpath} does not match its sha256 ({len(folder)} files, {expected.get('files')} committed)"
        return None
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        return f"{relpath} is missing"
    if storage.sha256_hex(data) != expected.get("sha256"):
        return f"{relpath} does not match its sha256"
    return None


def shard_damage(layout: OutputLayout, shard: ShardRange, job_id: str) -> str | None:
    """Why shard `shard` is not a committed, intact shard of job `job_id`; None when it is.

    Every byte of the shard's files is read back and hashed: sizes would miss a flipped bit.
    Raises storage.UnsafePathError when the entry names a path outside the output (not read).
    """
    try:
        entry = json.loads(storage.read_bytes(layout.entry_url(shard)))
    except FileNotFoundError:
        return "not committed"
    except ValueError:
        return "its commit entry is not valid JSON"
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        return "its commit entry has no files"
    for relpath in entry["files"]:
        storage.child(layout.url, relpath.rstrip("/"))  # refuse before anything is read
    if entry.get("job_id") != job_id:
        return f"it was committed by job {entry.get('job_id')}, not {job_id}"
    if entry.get("face_ids") != [shard.start, shard.stop]:
        return f"its entry covers face ids {entry.get('face_ids')}, not {[shard.start, shard.stop]}"
    if set(entry["files"]) != expected_files(layout, shard):
        return f"its entry names {sorted(entry['files'])}, not {sorted(expected_files(layout, shard))}"
    for relpath, expected in sorted(entry["files"].items()):
        damage = _file_damage(layout, relpath, expected if isinstance(expected, dict) else {})
        if damage:
            return damage
    return None


def _shard_index(url: str) -> int | None:
    match = _SHARD_NAME.match(url.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1) or match.group(2)) if match else None


def damaged_shards(layout: OutputLayout, shards: list[ShardRange], job_id: str) -> dict[int, str]:
    """shard index -> why it is not committed and intact, for every shard of the job (read-only).

    Raises GenerateError when an entry names a path outside the output.
    """
    def check(shard: ShardRange) -> tuple[int, str | None]:
        try:
            return shard.index, shard_damage(layout, shard, job_id)
        except storage.UnsafePathError as e:
            raise GenerateError(f"{layout.entry_url(shard)}: {e}; refused: nothing it names was read or "
                                "deleted. Inspect the output: it was not written by ganray generate as is.") from None

    with ThreadPoolExecutor(VERIFY_CONCURRENCY) as pool:
        return {index: why for index, why in pool.map(check, shards) if why is not None}


def committed_shards(layout: OutputLayout, shards: list[ShardRange], job_id: str) -> set[int]:
    """Indices of committed, intact shards, after removing everything else a killed run left behind.

    Only the lease holder calls this: it deletes what no committed shard owns.
    """
    committed = {s.index for s in shards} - set(damaged_shards(layout, shards, job_id))
    remove_uncommitted(layout, committed)
    return committed


def remove_uncommitted(layout: OutputLayout, committed: set[int]) -> None:
    """Remove every entry, shard file or temporary file that is not one of the `committed` shards'.

    What is removed is found by listing the output's own folders, never read from an entry.
    """
    for url in storage.ls(layout.path(ENTRIES_DIR)):
        if _shard_index(url) not in committed or not url.endswith(".json"):
            storage.remove(url)  # a temporary entry of a killed writer, or a damaged shard's entry
    for folder in (PARQUET_DIR, HUB_DIR, PNG_DIR, WEBDATASET_DIR):
        for url in storage.ls(layout.path(folder)):
            if _shard_index(url) not in committed:
                storage.remove(url)  # a shard (or its temporary copy) that was never committed
    for url in storage.ls(layout.url):
        if storage.is_temp(url):
            storage.remove(url)


def verify_output(url: str) -> dict[str, Any]:
    """Re-check every shard of a finished or partial output by sha256, without writing anything.

    Returns {"output", "job_id", "shards", "intact", "damaged": {shard name: why}}. Raises
    GenerateError for a folder that is not a ganray generate output, or an entry naming a path
    outside it. A damaged shard is rewritten by the next run of the job.
    """
    url = storage.normalize_url(url)
    try:
        job = json.loads(storage.read_bytes(storage.join(url, JOB_FILE)))
        parameters = job["parameters"]
        shards = planned_shards(parameters)
        layout = OutputLayout(url, parameters["format"], class_attribute=parameters.get("class_attribute"),
                              shard_count=len(shards),
                              **{key: parameters.get(key, absent) for key, absent in LAYOUT_DEFAULTS.items()})
    except FileNotFoundError:
        raise GenerateError(f"{url} holds no {JOB_FILE}: it is not a ganray generate output") from None
    except (ValueError, KeyError, TypeError) as e:
        raise GenerateError(f"{url}/{JOB_FILE} is damaged ({e!r}): cannot verify") from None
    damaged = damaged_shards(layout, shards, job["job_id"])
    return {"output": url, "job_id": job["job_id"], "shards": len(shards), "intact": len(shards) - len(damaged),
            "damaged": {shards[index].name: why for index, why in sorted(damaged.items())}}


def shard_entries(layout: OutputLayout, shards: list[ShardRange]) -> list[dict[str, Any]]:
    return [json.loads(storage.read_bytes(layout.entry_url(s))) for s in shards]


def write_run_manifest(layout: OutputLayout, job: dict[str, Any], shards: list[ShardRange]) -> dict[str, Any]:
    """manifest.json: the job and every shard, written once all shards are committed."""
    entries = shard_entries(layout, shards)
    manifest = {
        **job,
        "faces": sum(e["rows"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "table_layout": layout.table_layout,
        "shards": entries,
    }
    storage.atomic_write(layout.path(MANIFEST_FILE), json_bytes(manifest))
    return manifest
