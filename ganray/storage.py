"""One way to reach files on any fsspec URL (a local path, file://, s3://, ...), and atomic writes.

S3: `AWS_ENDPOINT_URL`, when set, is passed to s3fs explicitly, so that a local S3-protocol server
(moto, MinIO) works whatever the installed botocore makes of that variable.

Atomic writes: a reader sees either the old file or the complete new one, never a partial file.
On a local disk the bytes go to a temporary name in the same folder and are then renamed over
the target (rename is atomic within a filesystem). On an object store a single PUT is already
atomic: the object appears only once the upload completes, so the bytes go to the key directly.
Temporary names contain TEMP_MARKER, so that leftovers of a killed writer can be found and removed.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

TEMP_MARKER = ".tmp-"


def _storage_options(url: str) -> dict[str, Any]:
    if not url.startswith(("s3://", "s3a://")):
        return {}
    # No listing cache: jobs list folders that other processes are writing to.
    options: dict[str, Any] = {"use_listings_cache": False}
    if os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return options


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path or any fsspec URL."""
    return fsspec.core.url_to_fs(url, **_storage_options(url))


def is_local(url: str) -> bool:
    return isinstance(url_to_fs(url)[0], LocalFileSystem)


def normalize_url(url: str) -> str:
    """An absolute form of `url` that means the same on every process: local paths become absolute
    (Ray workers do not share the driver's working directory); remote URLs are kept as given."""
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/")
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def temp_name(path: str) -> str:
    """A unique sibling name for `path` that `is_temp` recognises."""
    return f"{path}{TEMP_MARKER}{uuid.uuid4().hex[:12]}"


def is_temp(path: str) -> bool:
    return TEMP_MARKER in posixpath.basename(path.rstrip("/"))


def atomic_write(url: str, data: bytes) -> None:
    """Write `data` to `url` so that readers never see a partial file."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temp_name(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def atomic_write_many(folder_url: str, files: dict[str, bytes]) -> None:
    """Write a folder of files (name -> bytes) so that each file appears whole.

    On a local disk the files are written into a temporary sibling folder that is then renamed
    into place (an existing `folder_url` is replaced). On an object store the files are PUT
    concurrently, each atomically.
    """
    fs, path = url_to_fs(folder_url)
    if isinstance(fs, LocalFileSystem):
        tmp = temp_name(path)
        os.makedirs(tmp)
        try:
            for name, data in files.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            if os.path.exists(path):
                fs.rm(path, recursive=True)
            os.rename(tmp, path)
        except BaseException:
            fs.rm(tmp, recursive=True)
            raise
    else:
        fs.pipe({posixpath.join(path, name): data for name, data in files.items()})


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def ls(url: str, detail: bool = False) -> list[Any]:
    """Entries directly under `url` ([] when it does not exist), as URLs of the same form as `url`
    (fsspec itself drops the s3:// prefix); with detail, fsspec info dicts with "name" as such a URL."""
    fs, path = url_to_fs(url)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    children = []
    for entry in entries:
        child = join(url, posixpath.basename(entry["name"].rstrip("/")))
        if child.rstrip("/") == url.rstrip("/"):
            continue  # some filesystems list a folder marker object as the folder itself
        children.append({**entry, "name": child} if detail else child)
    return children


def remove(url: str) -> None:
    """Remove a file or a folder tree; a missing path is not an error."""
    fs, path = url_to_fs(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The inverse of url_to_fs: a URL that another process can open."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def pyarrow_filesystem(fs: fsspec.AbstractFileSystem):
    """The same filesystem for pyarrow / ray.data.read_parquet (keeps this module's S3 settings)."""
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def sha256_hex(data: bytes) -> str:
    """The content hash ganray uses everywhere (shards, imported images, registry versions)."""
    return hashlib.sha256(data).hexdigest()


class UnsafePathError(ValueError):
    """A path read from a manifest that would leave its root (absolute, '..', a URL, empty)."""


def child(root: str, relpath: str) -> str:
    """`root` joined with `relpath`, a path read from a manifest, after checking that it names a
    file inside `root`: relative, no '..' or '.' parts, no scheme, no backslashes. Anything else is
    refused (UnsafePathError) and never read or deleted: a manifest is data, not an instruction."""
    if not isinstance(relpath, str) or not relpath or "\\" in relpath or "\x00" in relpath:
        raise UnsafePathError(f"unsafe path {relpath!r} in a manifest under {root}")
    parts = relpath.split("/")
    if (relpath.startswith("/") or "://" in relpath or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise UnsafePathError(f"unsafe path {relpath!r} in a manifest under {root}: "
                              "manifest paths must be relative and stay inside their folder")
    return join(root, relpath)
