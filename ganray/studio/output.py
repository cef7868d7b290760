"""A finished `ganray generate` output, opened for looking at: its shard index and lazy reads.

Opening reads job.json, manifest.json and every shard's Parquet footer (its row groups), nothing
else; the footers stay in memory, so a page reads only the row groups holding its rows, and only
the columns it shows. The small columns filters need are read shard by shard when a filter first
asks for them (and by a background thread, so that counts become exact), never the images.
A shard that cannot be read is reported by name when a page needs it; the rest stays readable.
"""
from __future__ import annotations

import base64
import bisect
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ganray import storage
from ganray.data.manifest import GENERATED_MANIFEST, read_face_rows
from ganray.studio.columns import IMAGE, Columns
from ganray.studio.query import Filter

JOB_FILE = "job.json"  # written first by every generate job (ganray/generate/output.py)
PNG_FOLDER_ROWS = "metadata.parquet"  # format png: a shard folder's rows, without the image column
FOOTER_THREADS = 16  # footers are small reads: many at once, mostly waiting on the disk or S3
CACHED_FILTERS = 16


class OutputError(Exception):
    """An output (or one of its shards) the studio cannot read; the message names the file and why."""


@dataclass
class Shard:
    rel: str  # path inside the output, from its manifest (checked by storage.child)
    path: str  # filesystem path
    start: int  # global index of its first row
    rows: int
    metadata: pq.FileMetaData | None = None
    group_starts: list[int] = field(default_factory=list)  # each row group's first row, inside the shard
    error: str | None = None


@dataclass
class _Matches:
    """A filter's matching rows, found shard by shard as far as pages have needed them."""

    found: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    next_shard: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _unreadable(what: str, exc: BaseException) -> OutputError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutputError(f"{what} cannot be read: {reason}")


class StudioOutput:
    """One output: its job, manifest, columns and shard index; reads pages of rows lazily."""

    def __init__(self, url: str):
        self.url = storage.normalize_url(url)
        self.fs, self.root = storage.url_to_fs(self.url)
        self.arrow_fs = pafs.LocalFileSystem() if storage.is_local(self.url) else storage.pyarrow_filesystem(self.fs)
        self.job = self._json(JOB_FILE, "is not a ganray generate output")
        self.manifest = self._json(GENERATED_MANIFEST, "is not a finished ganray generate output (re-run its job "
                                                       "to finish it)")
        self.shards = self._shard_index()
        self.total = sum(s.rows for s in self.shards)
        self._starts = [s.start for s in self.shards]
        with ThreadPoolExecutor(FOOTER_THREADS) as pool:
            list(pool.map(self._read_footer, self.shards))
        schema = next((s.metadata.schema.to_arrow_schema() for s in self.shards if s.metadata is not None), None)
        if schema is None and self.shards:
            raise OutputError(f"no shard of {self.url} can be read: {self.shards[0].error}")
        self.columns = Columns.of(schema if schema is not None else pa.schema([]))
        self._filter_tables: dict[int, pa.Table] = {}
        self._filter_lock = threading.Lock()
        self._matches: OrderedDict[tuple, _Matches] = OrderedDict()
        self._warmer: threading.Thread | None = None
        self._facets: dict[str, Any] | None = None

    # -- opening -----------------------------------------------------------------------------

    def _json(self, name: str, missing: str) -> dict[str, Any]:
        try:
            value = json.loads(storage.read_bytes(storage.join(self.url, name)))
        except FileNotFoundError:
            if not storage.exists(self.url):
                raise OutputError(f"{self.url} does not exist") from None
            raise OutputError(f"{self.url} {missing}: it has no {name}") from None
        except (OSError, ValueError) as e:
            raise _unreadable(f"{self.url}/{name}", e) from None
        if not isinstance(value, dict):
            raise OutputError(f"{self.url}/{name} is not a JSON object")
        return value

    def _shard_index(self) -> list[Shard]:
        entries = self.manifest.get("shards")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise OutputError(f"{self.url}/{GENERATED_MANIFEST} has no list of shards")
        shards, start = [], 0
        for entry in sorted(entries, key=lambda e: e.get("shard", 0)):
            files = sorted(entry.get("files") or {})
            # Parquet rows, else a PNG folder's metadata.parquet; WebDataset tars alone are not read here.
            rel = next((f for f in files if f.endswith(".parquet")), None) or next(
                (f.rstrip("/") + "/" + PNG_FOLDER_ROWS for f in files if f.endswith("/")), None)
            if rel is None:
                raise OutputError(f"{self.url}/{GENERATED_MANIFEST}: shard {entry.get('shard')} has no Parquet "
                                  f"rows or PNG folder (files: {files}); the studio reads those")
            try:
                path = storage.url_to_fs(storage.child(self.url, rel))[1]
            except storage.UnsafePathError as e:
                raise OutputError(str(e)) from None
            rows = int(entry.get("rows", 0))
            shards.append(Shard(rel, path, start, rows))
            start += rows
        return shards

    def _read_footer(self, shard: Shard) -> None:
        try:
            metadata = pq.read_metadata(shard.path, filesystem=self.arrow_fs)  # the footer only
        except (OSError, pa.ArrowException) as e:
            shard.error = str(_unreadable(f"shard {shard.rel}", e))
            return
        sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        if sum(sizes) != shard.rows:
            shard.error = (f"shard {shard.rel} cannot be read: it holds {sum(sizes)} rows, its manifest entry "
                           f"says {shard.rows}")
            return
        shard.metadata, shard.group_starts = metadata, list(np.cumsum([0, *sizes[:-1]]))

    # -- rows ------------------------------------------------------------------------------------

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row inside it) of a global row index."""
        if not 0 <= index < self.total:
            raise IndexError(index)
        s = bisect.bisect_right(self._starts, index) - 1
        return s, index - self.shards[s].start

    def _read(self, shard: Shard, columns: list[str], row_groups: list[int] | None = None) -> pa.Table:
        """Those columns and row groups of a shard, as PNG bytes and label strings in either layout."""
        if shard.error:
            raise OutputError(shard.error)
        try:
            return read_face_rows(self.fs, shard.path, columns, row_groups)
        except (OSError, pa.ArrowException, ValueError) as e:
            raise _unreadable(f"shard {shard.rel}", e) from None

    def rows(self, indices: list[int], columns: list[str], images: bool = False) -> list[dict[str, Any]]:
        """The rows at these global indices (in this order), with these columns as plain values and,
        with `images`, the PNG as base64 in `image`. Reads only the row groups holding them."""
        wanted = [c for c in columns if c in self.columns.names and c != IMAGE]
        png_in_rows = images and self.columns.has_image
        read = wanted + ([IMAGE] if png_in_rows else []) + (["file"] if images and not png_in_rows else [])
        by_group: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for position, index in enumerate(indices):
            s, local = self.locate(index)
            shard = self.shards[s]
            if shard.error:
                raise OutputError(shard.error)
            group = bisect.bisect_right(shard.group_starts, local) - 1
            by_group.setdefault((s, group), []).append((position, local))
        out: list[dict[str, Any]] = [{} for _ in indices]
        for (s, group), wanted_rows in by_group.items():
            shard = self.shards[s]
            try:
                table = self._read(shard, read, [group])
                offset = shard.group_starts[group]
                values = table.take([local - offset for _, local in wanted_rows]).to_pylist()
            except (OSError, pa.ArrowException) as e:
                raise _unreadable(f"shard {shard.rel}", e) from None
            for (position, local), row in zip(wanted_rows, values):
                if images:
                    png = row.pop(IMAGE) if png_in_rows else self._png_file(row.pop("file"))
                    row[IMAGE] = base64.b64encode(png).decode("ascii") if png is not None else None
                out[position] = {"index": shard.start + local, **row}
        return out

    def _png_file(self, rel: str | None) -> bytes | None:
        if rel is None:
            return None
        try:
            return storage.read_bytes(storage.child(self.url, rel))
        except (OSError, storage.UnsafePathError) as e:
            raise _unreadable(f"face file {rel}", e) from None

    def png(self, index: int) -> bytes:
        row = self.rows([index], [], images=True)[0]
        if not row.get(IMAGE):
            raise OutputError(f"row {index} has no image")
        return base64.b64decode(row[IMAGE])

    # -- filters -----------------------------------------------------------------------------

    def filter_table(self, s: int) -> pa.Table:
        """Shard s's filterable columns as plain values (read once, then kept)."""
        with self._filter_lock:
            table = self._filter_tables.get(s)
        if table is not None:
            return table
        shard = self.shards[s]
        names = self.columns.filterable
        table = self._read(shard, names)
        with self._filter_lock:
            self._filter_tables[s] = table
        return table

    @property
    def filters_complete(self) -> bool:
        return len(self._filter_tables) == len(self.shards)

    def start_filter_index(self) -> None:
        """Read every shard's filter columns in the background, so counts and facets become exact."""
        def warm() -> None:
            # Arrow's compute kernels load on first use: here, not in the first filtered request.
            Filter((("f", ("a",)),), (("g", 0.0),)).mask(pa.table({"f": ["a"], "g": [1.0]}))
            for s, shard in enumerate(self.shards):
                if not shard.error:
                    try:
                        self.filter_table(s)
                    except OutputError:
                        pass  # reported by the page that needs this shard
        if self._warmer is None:
            self._warmer = threading.Thread(target=warm, name="studio-filter-index", daemon=True)
            self._warmer.start()

    def wait_for_filter_index(self, timeout: float | None = None) -> bool:
        if self._warmer is not None:
            self._warmer.join(timeout)
        return self.filters_complete

    def matching(self, flt: Filter, need: int) -> tuple[np.ndarray, int | None]:
        """The first `need` matching rows' global indices, and the total count when every shard has
        been looked at (else None: more may match)."""
        if flt.empty:
            return np.arange(min(need, self.total)), self.total
        with self._filter_lock:
            matches = self._matches.pop(flt.key, None) or _Matches()
            self._matches[flt.key] = matches
            while len(self._matches) > CACHED_FILTERS:
                self._matches.popitem(last=False)
        with matches.lock:
            everything = self.filters_complete
            while matches.next_shard < len(self.shards) and (everything or matches.count < need):
                s = matches.next_shard
                found = np.flatnonzero(flt.mask(self.filter_table(s))) + self.shards[s].start
                matches.found.append(found)
                matches.count += len(found)
                matches.next_shard += 1
            total = matches.count if matches.next_shard == len(self.shards) else None
            first = np.concatenate(matches.found)[:need] if matches.found else np.arange(0)
        return first, total

    def facet_values(self) -> dict[str, Any]:
        """{facet: {value: count}} over the shards read so far, and whether that is all of them."""
        if self._facets is not None:
            return self._facets
        counts: dict[str, dict[str, int]] = {}
        with self._filter_lock:
            tables = list(self._filter_tables.values())
        complete = len(tables) == len(self.shards)
        for name in self.columns.facets:
            merged: dict[str, int] = {v: 0 for v in self.columns.classes.get(name, [])}
            for table in tables:
                for item in table.column(name).value_counts().to_pylist():
                    key = "" if item["values"] is None else str(item["values"])
                    merged[key] = merged.get(key, 0) + item["counts"]
            counts[name] = dict(sorted(merged.items()))
        result = {"complete": complete, "facets": counts}
        if complete:
            self._facets = result  # every shard counted: it cannot change
        return result
