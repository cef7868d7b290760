"""The Ray Data stages of a generation job. One row = one whole shard all the way through:

    {shard, start, stop}                       from_items: the missing shards' face-id ranges
    -> FaceRenderer (actor pool)   + pixels     render the shard's faces, batch by batch
    -> encode_pngs (tasks)         + pngs       one PNG per face
    -> write_shard (tasks)         -> commit    files in place, then the manifest entry; returns
                                                {shard, rows, bytes}, all the driver ever sees

Keeping a shard in one row means no stage can see part of a shard (Ray Data splits blocks
between rows, never inside one), so each writer holds everything its shard needs.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ganray import storage
from ganray.generate.output import (
    PNG_METADATA_FILE,
    OutputLayout,
    folder_checksum,
    json_bytes,
)
from ganray.generate.lease import check_not_superseded
from ganray.generate.plan import ConditionPlan, ShardRange, StyleMix, render_environment


def _shard(row: dict[str, Any]) -> ShardRange:
    return ShardRange(int(row["shard"]), int(row["start"]), int(row["stop"]))


class FaceRenderer:
    """Ray Data actor: a shard's face-id range -> the faces' uint8 pixels (N, H, W, 3) as bytes.

    The generator is loaded once per actor from the registry (by resolved version id, so every
    actor, including one restarted after a failure, renders with the same weights). An actor on
    another torch build or device kind than the job's identity records refuses to start: its bytes
    could differ, and one output must not mix them.
    """

    def __init__(self, registry_url: str, version: str, plan: ConditionPlan, seed_offset: int, psi: float,
                 batch_size: int, precision: str, device: str, environment: dict[str, str],
                 mix: StyleMix | None = None):
        import torch

        from ganray.registry import Registry

        mine = render_environment(device)
        if mine != environment:
            raise RuntimeError(f"this generator actor runs on {mine}, but the job renders on {environment}: "
                               "the bytes could differ, so it refuses to render. Run the job on nodes of one kind.")
        from ganray.models.face import prepare_for_render

        # The fastest layout that keeps every face's bytes (the same one Serve renders with).
        self.generator = prepare_for_render(Registry(registry_url).load_generator(version, device=device).generator)
        self.plan, self.seed_offset, self.psi, self.mix = plan, seed_offset, psi, mix
        self.batch_size, self.precision = batch_size, precision

    def _render(self, face_ids: range) -> np.ndarray:
        from ganray.models.face import labels_for_rows, render_faces

        seeds = [self.seed_offset + i for i in face_ids]
        labels = labels_for_rows(self.generator, [self.plan.for_face(i, s) for i, s in zip(face_ids, seeds)])
        if self.mix is None:
            return render_faces(self.generator, seeds, self.psi, labels, self.precision)
        return render_faces(self.generator, seeds, self.psi, labels, self.precision,
                            mix_seeds=self.mix.seeds(face_ids), crossover=self.mix.crossover)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels, heights, widths = [], [], []
        for k in range(len(batch["shard"])):
            shard = _shard({key: batch[key][k] for key in ("shard", "start", "stop")})
            images = np.concatenate([self._render(range(lo, min(lo + self.batch_size, shard.stop)))
                                     for lo in range(shard.start, shard.stop, self.batch_size)])
            pixels.append(images.tobytes())
            heights.append(images.shape[1])
            widths.append(images.shape[2])
        return {**batch, "pixels": np.array(pixels, dtype=object),
                "height": np.array(heights), "width": np.array(widths)}


def encode_pngs(batch: pa.Table) -> pa.Table:
    """pixels -> one PNG per face (a list<binary> column); the raw pixels are dropped."""
    from ganray.images import encode_png

    pngs = []
    for row in batch.to_pylist():
        n, h, w = row["stop"] - row["start"], row["height"], row["width"]
        images = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(n, h, w, 3)
        pngs.append([encode_png(image) for image in images])
    return batch.drop_columns(["pixels"]).append_column("pngs", pa.array(pngs, pa.list_(pa.binary())))


def face_rows(shard: ShardRange, plan: ConditionPlan, *, seed_offset: int, psi: float, mix: StyleMix | None = None,
              width: int, height: int, model_version: str, job_id: str,
              images: list[bytes] | None = None) -> dict[str, list]:
    """The columns of a shard's rows, in column order; the `image` column only when `images` are given,
    `mix_seed` and `crossover` only in a style-mixing job."""
    face_ids = list(range(shard.start, shard.stop))
    seeds = [seed_offset + i for i in face_ids]
    conditions = [plan.for_face(i, s) for i, s in zip(face_ids, seeds)]
    n = len(face_ids)
    return {
        "face_id": face_ids,
        "seed": seeds,
        **({"image": images} if images is not None else {}),
        "width": [width] * n,
        "height": [height] * n,
        "model_version": [model_version] * n,
        "psi": [psi] * n,
        **({"mix_seed": mix.seeds(face_ids), "crossover": [mix.crossover] * n} if mix is not None else {}),
        "conditions": [json.dumps(c) for c in conditions],
        **{name: [c[name] for c in conditions] for name in plan.condition_values},
        "job_id": [job_id] * n,
    }


_COLUMN_TYPES = {"face_id": pa.int64(), "seed": pa.int64(), "image": pa.binary(), "width": pa.int32(),
                 "height": pa.int32(), "model_version": pa.string(), "psi": pa.float64(),
                 "conditions": pa.string(), "job_id": pa.string(), "file": pa.string(),
                 "mix_seed": pa.int64(), "crossover": pa.int32()}


def _parquet_bytes(columns: dict[str, list]) -> bytes:
    table = pa.table({name: pa.array(values, _COLUMN_TYPES.get(name, pa.string()))
                      for name, values in columns.items()})
    buf = io.BytesIO()
    # One row group per shard; no compression: PNG bytes do not compress further.
    pq.write_table(table, buf, compression="none", row_group_size=max(1, len(table)))
    return buf.getvalue()


def write_shard(batch: pa.Table, *, layout: OutputLayout, plan: ConditionPlan, seed_offset: int, psi: float,
                mix: StyleMix | None = None, model_version: str, job_id: str, superseded_url: str) -> pa.Table:
    """Write each shard's files into place, then its manifest entry (the commit); return commit records.

    `superseded_url` is the lease key that exists once another driver has taken the output over:
    then the shard is not committed (that driver's cleanup may already have removed its files).
    """
    records = []
    for row in batch.to_pylist():
        shard, pngs = _shard(row), row["pngs"]
        row_args = dict(seed_offset=seed_offset, psi=psi, mix=mix, width=row["width"], height=row["height"],
                        model_version=model_version, job_id=job_id)
        files: dict[str, dict[str, Any]] = {}
        if layout.writes_parquet:
            data = _parquet_bytes(face_rows(shard, plan, images=pngs, **row_args))
            relpath = layout.parquet_relpath(shard)
            storage.atomic_write(layout.path(relpath), data)
            files[relpath] = {"bytes": len(data), "sha256": storage.sha256_hex(data)}
        if layout.writes_png:
            relpath = layout.png_relpath(shard)
            columns = face_rows(shard, plan, **row_args)
            names = [f"{face_id:09d}.png" for face_id in columns["face_id"]]
            folder = dict(zip(names, pngs))
            folder[PNG_METADATA_FILE] = _parquet_bytes({**columns, "file": [relpath + n for n in names]})
            storage.atomic_write_many(layout.path(relpath), folder)
            files[relpath] = {"files": len(folder), "bytes": sum(map(len, folder.values())),
                              "sha256": folder_checksum(folder)}
        entry = {
            "job_id": job_id,
            "shard": shard.index,
            "name": shard.name,
            "face_ids": [shard.start, shard.stop],
            "rows": len(pngs),
            "bytes": sum(f["bytes"] for f in files.values()),
            "sha256": storage.sha256_hex("".join(f["sha256"] for f in files.values()).encode()),
            "files": files,
        }
        check_not_superseded(superseded_url)
        storage.atomic_write(layout.entry_url(shard), json_bytes(entry))  # LAST: commits the shard
        records.append({"shard": shard.index, "rows": entry["rows"], "bytes": entry["bytes"]})
    return pa.Table.from_pylist(records, schema=pa.schema([("shard", pa.int64()), ("rows", pa.int64()),
                                                           ("bytes", pa.int64())]))
