"""Hugging Face `datasets` features in a Parquet shard: writing them, and reading such a shard back.

A shard in the `hf-datasets/1` table layout holds what `datasets.Dataset.to_parquet` writes, so
`datasets.load_dataset("parquet", ...)` gives PIL images and class labels with no glue:

    image                 struct<bytes: binary, path: string>    feature {"_type": "Image"}
    <attribute>, label_*  int64 index into a fixed list of names  feature {"_type": "ClassLabel", "names": [...]}
    every other column    as it is                                feature {"_type": "Value", "dtype": ...}
    schema metadata       huggingface: {"info": {"features": {...}}}

ganray itself reads rows as PNG bytes and label strings: `decode_columns` turns either layout into
that (a shard without the metadata, the `plain/1` layout, comes back unchanged).
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

HF_LAYOUT = "hf-datasets/1"  # image as Image, attribute labels as ClassLabel, features in the schema
PLAIN_LAYOUT = "plain/1"  # image as raw PNG bytes, labels as strings, no features
METADATA_KEY = b"huggingface"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

_VALUE_DTYPES = {pa.int64(): "int64", pa.int32(): "int32", pa.float32(): "float32", pa.float64(): "float64",
                 pa.string(): "string", pa.binary(): "binary", pa.bool_(): "bool"}


def value_feature(dtype: pa.DataType) -> dict[str, str]:
    return {"dtype": _VALUE_DTYPES[dtype], "_type": "Value"}


def hf_table(columns: dict[str, list], types: dict[str, pa.DataType],
             class_names: dict[str, list[str]]) -> pa.Table:
    """A table in the hf-datasets/1 layout from ganray's rows (PNG bytes in `image`, labels as strings).

    `class_names`: column -> its names in index order (the attribute's vocabulary); a value outside
    them raises ValueError naming the column, since datasets could not decode it.
    """
    arrays, features = {}, {}
    for name, values in columns.items():
        if name == "image":
            arrays[name] = pa.array([{"bytes": v, "path": None} for v in values], IMAGE_TYPE)
            features[name] = {"_type": "Image"}
        elif name in class_names:
            index = {v: i for i, v in enumerate(class_names[name])}
            unknown = sorted({v for v in values if v not in index})
            if unknown:
                raise ValueError(f"column {name!r} holds {unknown}, outside its names {class_names[name]}")
            arrays[name] = pa.array([index[v] for v in values], pa.int64())
            features[name] = {"names": list(class_names[name]), "_type": "ClassLabel"}
        else:
            arrays[name] = pa.array(values, types[name])
            features[name] = value_feature(types[name])
    table = pa.table(arrays)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps({"info": {"features": features}}).encode()})


def features_of(schema: pa.Schema) -> dict[str, Any] | None:
    """The datasets features a shard's schema declares, or None for a shard without them (plain/1)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None


def table_layout(schema: pa.Schema) -> str:
    return HF_LAYOUT if features_of(schema) is not None else PLAIN_LAYOUT


def decode_columns(table: pa.Table, features: dict[str, Any] | None) -> pa.Table:
    """`table` as ganray reads rows: Image columns as their PNG bytes, ClassLabel columns as their
    names; other columns unchanged, and no datasets metadata left. `features` None: unchanged."""
    if not features:
        return table
    columns = {}
    for name in table.column_names:
        column, feature = table.column(name), features.get(name) or {}
        if feature.get("_type") == "Image":
            column = pc.struct_field(column, "bytes")
        elif feature.get("_type") == "ClassLabel":
            column = pc.take(pa.array(feature["names"], pa.string()), column)
        columns[name] = column
    return pa.table(columns)


def to_ganray_table(table: pa.Table) -> pa.Table:
    """decode_columns with the features `table`'s own schema declares."""
    return decode_columns(table, features_of(table.schema))
