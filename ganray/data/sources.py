"""An import's source: the image files inside a folder or a ZIP file (any fsspec URL), listed by
name on the driver and read in the Ray tasks that preprocess them."""
from __future__ import annotations

import zipfile
import zlib
from typing import Iterator

from ganray.config import ConfigError
from ganray.data import preprocess
from ganray.storage import join, url_to_fs

# Folder sources are fetched this many files per request batch: concurrency on object stores,
# bounded memory for large photos.
FETCH_CHUNK = 32


def is_image_name(path: str) -> bool:
    parts = path.split("/")
    # Hidden files and macOS archive debris (__MACOSX/, ._name) are never images of the set.
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return parts[-1].lower().endswith(preprocess.IMAGE_EXTENSIONS)


def list_images(src: str) -> list[str]:
    """Sorted paths of the image files inside `src` (a folder, or a .zip file), relative to it."""
    fs, root = url_to_fs(src)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        raise ConfigError(f"import.src: {src} does not exist")
    if root.lower().endswith(".zip") and fs.isfile(root):
        with fs.open(root, "rb") as f, zipfile.ZipFile(f) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    elif fs.isdir(root):
        names = [p[len(root) + 1:] for p in fs.find(root)]
    else:
        raise ConfigError(f"import.src: {src} is neither a folder nor a .zip file")
    return sorted(n for n in names if is_image_name(n))


def read_sources(src: str, paths: list[str]) -> Iterator[bytes | None]:
    """The bytes of each path inside `src`, one at a time; None for a ZIP member that cannot be extracted.

    Storage errors (missing object, network) raise: they are not a property of the file and
    must not silently shrink the dataset.
    """
    fs, root = url_to_fs(src)
    if root.lower().endswith(".zip"):
        with fs.open(root, "rb") as f, zipfile.ZipFile(f) as archive:
            for p in paths:
                try:
                    yield archive.read(p)
                except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError):
                    yield None  # corrupt member (bad CRC, broken deflate) or unknown compression
        return
    for start in range(0, len(paths), FETCH_CHUNK):
        full = [join(root, p) for p in paths[start:start + FETCH_CHUNK]]
        blobs = fs.cat(full)  # one call per chunk: concurrent requests on object stores
        for p in full:
            yield blobs[fs._strip_protocol(p)]
