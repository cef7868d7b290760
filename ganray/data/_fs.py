"""fsspec helpers for the data package: any URL fsspec knows (local path, s3://, ...).

S3 endpoints and credentials come from the environment (AWS_ENDPOINT_URL etc.), as boto does it.
"""
from __future__ import annotations

import uuid

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL or local path."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def join(root: str, name: str) -> str:
    return f"{root}/{name}" if root else name


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The inverse of url_to_fs: a URL another process can open."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def pyarrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The same filesystem for pyarrow / ray.data.read_parquet (keeps fsspec's S3 endpoint handling)."""
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def temp_name(name: str, run_id: str) -> str:
    """A hidden sibling name for `name`, written first and renamed into place when complete."""
    return f".tmp-{run_id}-{name}"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to a temporary sibling, then rename: readers never see a half-written file."""
    parent, _, name = path.rpartition("/")
    tmp = join(parent, temp_name(name, new_run_id()))
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)
