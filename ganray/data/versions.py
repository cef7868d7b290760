"""Data versions: every import is a version, named by its data (the first 12 hex digits of its
manifest hash), listed in a data catalog with its counts, license and the version it derives from.

A catalog is a folder (local or s3://) holding one record per version:

    CATALOG/data-versions/<version>.json   created exclusively, never rewritten

An import writes its record to `import.catalog` if set, else to $GANRAY_DATA_CATALOG, else to its
import root: the folder that holds its dst (`./data` for `./data/utkface-64`), so the imports
under one folder are listed together. The import's manifest names the version and the catalog
(`data_version`, `data_catalog`), so whatever reads the data (training, lineage) finds its record.

The same data imported twice is the same version: the first record stays. A version's shards are
replaced when another import goes to the same dst; its record stays, and says where it was.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from typing import Any

from ganray import storage

CATALOG_ENV = "GANRAY_DATA_CATALOG"
DEFAULT_CATALOG = "./data"  # the import root of the shipped import configs (./data/utkface-64)
VERSIONS_DIR = "data-versions"
ID_LENGTH = 12
BUILT_IN = "built-in"  # the location of the built-in procedural faces (no import, no catalog)
_VERSION = re.compile(r"[0-9a-f]{6,64}")


class DataVersionError(ValueError):
    """An unknown or ambiguous data version, or a catalog record that cannot be read."""


def version_id(manifest_hash: str) -> str:
    return manifest_hash[:ID_LENGTH]


def version_of(manifest: dict[str, Any]) -> str:
    """The data version an import's manifest (or any dict with a manifest_hash) is."""
    return manifest.get("data_version") or version_id(manifest["manifest_hash"])


def import_root(dst: str) -> str:
    """The folder that holds the import at `dst` (dst itself when it is a bucket's top)."""
    url = storage.normalize_url(dst).rstrip("/")
    parent = url.rsplit("/", 1)[0]
    if storage.is_remote(url) and parent.endswith(":/"):  # s3://bucket: nothing above it
        return url
    return parent or "/"


def catalog_for_import(dst: str, catalog: str | None = None) -> str:
    """Where an import into `dst` records its version (see the module docstring)."""
    return storage.normalize_url(catalog or os.environ.get(CATALOG_ENV) or import_root(dst))


def default_catalog(catalog: str | None = None) -> str:
    """The catalog `ganray data list|show` read without --catalog."""
    return storage.normalize_url(catalog or os.environ.get(CATALOG_ENV) or DEFAULT_CATALOG)


def _record_url(catalog: str, version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise DataVersionError(f"{version!r} is not a data version (hex digits, e.g. 3f2a9c1b0d4e)")
    return storage.child(catalog, f"{VERSIONS_DIR}/{version}.json")


def make_record(manifest: dict[str, Any], *, dst: str, catalog: str, import_id: str | None,
                parent: dict[str, Any] | None, license: str | None, license_note: str | None) -> dict[str, Any]:
    """A version's catalog record, from its import's manifest."""
    return {
        "version": version_of(manifest),
        "manifest_hash": manifest["manifest_hash"],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "location": storage.normalize_url(dst),
        "catalog": catalog,
        "import_id": import_id,
        "source": manifest.get("source"),
        "resolution": manifest.get("resolution"),
        "attributes": manifest.get("attributes", {}),
        "counts": manifest.get("counts", {}),
        "label_histograms": manifest.get("label_histograms", {}),
        "balance": (manifest.get("settings") or {}).get("balance"),
        "license": license or "unknown",
        "license_note": license_note,
        "parent": parent,
    }


def write_record(record: dict[str, Any]) -> bool:
    """Add `record` to its catalog; False when the version was already there (that record stays)."""
    body = (json.dumps(record, indent=1) + "\n").encode()
    return storage.create_exclusive(_record_url(record["catalog"], record["version"]), body)


def list_versions(catalog: str) -> list[dict[str, Any]]:
    """Every version recorded in `catalog`, oldest first."""
    records = []
    for entry in storage.ls(storage.join(storage.normalize_url(catalog), VERSIONS_DIR)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".json") and _VERSION.fullmatch(name[:-5]) and not storage.is_temp(entry):
            records.append(_read(entry))
    return sorted(records, key=lambda r: (str(r.get("created_at")), str(r.get("version"))))


def _read(url: str) -> dict[str, Any]:
    try:
        record = json.loads(storage.read_bytes(url))
    except ValueError:
        raise DataVersionError(f"{url} is corrupt: not JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("version"), str):
        raise DataVersionError(f"{url} is corrupt: not a data version record")
    return record


def find_version(version: str, catalog: str) -> dict[str, Any]:
    """The record of `version` (its full id, or a prefix of at least 6 hex digits naming one version)."""
    catalog = storage.normalize_url(catalog)
    exact = _record_url(catalog, version)
    if storage.exists(exact):
        return _read(exact)
    matches = [r for r in list_versions(catalog) if r["version"].startswith(version[:ID_LENGTH])
               and r["manifest_hash"].startswith(version)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = [r["version"] for r in list_versions(catalog)]
        raise DataVersionError(f"unknown data version {version!r} in catalog {catalog}: "
                               + (f"it holds {', '.join(known)}" if known else "it holds no versions"))
    raise DataVersionError(f"{version!r} names {len(matches)} data versions in {catalog}: give more digits")


def looks_like_version(text: str) -> bool:
    """Whether `text` is spelled like a data version id (or a prefix of one)."""
    return bool(_VERSION.fullmatch(text))


def is_current(record: dict[str, Any]) -> bool:
    """Whether the import at the record's location is still this version (not replaced since)."""
    from ganray.data.manifest import read_manifest

    try:
        manifest = read_manifest(record["location"])
    except (OSError, ValueError):
        return False
    return manifest is not None and manifest.get("manifest_hash") == record.get("manifest_hash")


def training_data_version(data: dict[str, Any], manifest_hash: str) -> dict[str, Any]:
    """What a training run records of its data (`data`: its `data:` config as JSON): the version,
    where the data was read, and the catalog that lists the version (None for the built-in faces)."""
    if data.get("source", "synthetic") == "synthetic":
        return {"version": version_id(manifest_hash), "manifest_hash": manifest_hash, "location": BUILT_IN,
                "catalog": None}
    from ganray.data.manifest import read_manifest

    url = storage.normalize_url(data["url"])
    manifest = read_manifest(url) or {}
    catalog = manifest.get("data_catalog") or catalog_for_import(url)
    return {"version": version_id(manifest_hash), "manifest_hash": manifest_hash, "location": url,
            "catalog": catalog}


def resolve_parent(parent: str, catalog: str) -> dict[str, Any]:
    """`import.parent` as {"version", "catalog", "location"}: a version in `catalog`, or the folder of
    an import (its current version)."""
    from ganray.data.manifest import read_manifest

    if _VERSION.fullmatch(parent):
        record = find_version(parent, catalog)
        return {"version": record["version"], "catalog": record["catalog"], "location": record["location"]}
    manifest = read_manifest(parent)
    if manifest is None:
        raise DataVersionError(f"import.parent: {parent!r} is neither a data version in {catalog} nor the "
                               "folder of a ganray import")
    return {"version": version_of(manifest), "location": storage.normalize_url(parent),
            "catalog": manifest.get("data_catalog") or catalog_for_import(parent)}
