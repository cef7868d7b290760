"""A generation shard as a WebDataset tar (`generate.format: webdataset`).

One sample per face, its members adjacent, keyed by the face id (9 digits: keys hold no dots):

    000000042.png    the face's PNG bytes (the same bytes the Parquet `image` column holds)
    000000042.json   every other column of its row: seed, psi, conditions, labels, confidences, ...
    000000042.cls    only with generate.class_attribute: the value's index in the attribute's names (ASCII)

The tar is deterministic (fixed mtime, owner and mode), so the same faces give the same bytes
and the shard's sha256 identifies it as a Parquet shard's does.
"""
from __future__ import annotations

import io
import json
import tarfile

from ganray.generate.output import GenerateError

KEY_FORMAT = "{:09d}"


def class_source(attribute: str, condition_values: dict[str, list[str]],
                 label_values: dict[str, list[str]]) -> tuple[str, list[str]]:
    """(column, names) a face's class comes from: the labeler's verified label where the job labels
    the attribute with known names, else the requested condition. GenerateError when neither."""
    if label_values.get(attribute):
        return f"label_{attribute}", list(label_values[attribute])
    if condition_values.get(attribute):
        return attribute, list(condition_values[attribute])
    known = sorted({*condition_values, *(a for a, v in label_values.items() if v)})
    raise GenerateError(f"generate.class_attribute: {attribute!r} is neither a condition of the model nor an "
                        f"attribute the job labels with known names (it has {known})")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(columns: dict[str, list], pngs: list[bytes], class_of: tuple[str, list[str]] | None) -> bytes:
    """The tar of one shard's rows (`columns`, without `image`) and their PNGs, in row order;
    `class_of`: class_source's (column, names) when the job writes KEY.cls."""
    names = [n for n in columns if n != "image"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for r, png in enumerate(pngs):
            key = KEY_FORMAT.format(columns["face_id"][r])
            _add(tar, f"{key}.png", png)
            row = {n: columns[n][r] for n in names}
            _add(tar, f"{key}.json", json.dumps(row).encode())
            if class_of is not None:
                _add(tar, f"{key}.cls", str(class_of[1].index(row[class_of[0]])).encode())
    return buf.getvalue()
