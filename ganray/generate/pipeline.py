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
from ganray.data.hf_features import HF_LAYOUT, hf_table
from ganray.generate.output import (
    PNG_METADATA_FILE,
    OutputLayout,
    folder_checksum,
    json_bytes,
)
from ganray.generate.lease import check_not_superseded
from ganray.generate.plan import ConditionPlan, ShardRange, StyleMix, render_environment
from ganray.generate.webdataset_shards import class_source, tar_bytes


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

        mine = render_environment(device, precision)
        if mine != environment:
            raise RuntimeError(f"this generator actor runs on {mine}, but the job renders on {environment}: "
                               "the bytes could differ, so it refuses to render. Run the job on nodes of one kind.")
        precision = mine["precision"]  # "auto" resolved, as in the job's identity
        from ganray.models.face import prepare_for_render

        # The fastest layout that keeps every face's bytes (the same one Serve renders with).
        self.generator = prepare_for_render(Registry(registry_url).load_generator(version, device=device).generator,
                                            precision)
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
        h, w = row["height"], row["width"]
        images = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(-1, h, w, 3)  # kept faces only, if labeled
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


def labeled_rows(meta: dict[str, Any], plan: ConditionPlan, *, label_attributes: list[str], quality: bool,
                 closed_loop: bool, psi: float, width: int, height: int, model_version: str, job_id: str,
                 images: list[bytes] | None = None) -> dict[str, list]:
    """The columns of a labeled shard's rows (the faces in `meta`, i.e. the kept ones), in column order."""
    faces = meta["faces"]
    n = len(faces)
    columns: dict[str, list] = {
        "face_id": [f["face_id"] for f in faces],
        "seed": [f["seed"] for f in faces],
        **({"image": images} if images is not None else {}),
        "width": [width] * n,
        "height": [height] * n,
        "model_version": [model_version] * n,
        "psi": [psi] * n,
        "conditions": [json.dumps(f["conditions"]) for f in faces],
        **{name: [f["conditions"][name] for f in faces] for name in plan.condition_values},
    }
    if closed_loop:
        columns["stratum"] = [meta["stratum"]] * n
        columns["attempt"] = [f["attempt"] for f in faces]
    for name in label_attributes:
        columns[f"label_{name}"] = [f["labels"][name] for f in faces]
        columns[f"label_{name}_confidence"] = [f["confidence"][name] for f in faces]
    if quality:
        columns["quality_contrast"] = [f["contrast"] for f in faces]
        columns["quality_sharpness"] = [f["sharpness"] for f in faces]
    columns["job_id"] = [job_id] * n
    return columns


_COLUMN_TYPES = {"face_id": pa.int64(), "seed": pa.int64(), "image": pa.binary(), "width": pa.int32(),
                 "height": pa.int32(), "model_version": pa.string(), "psi": pa.float64(),
                 "conditions": pa.string(), "job_id": pa.string(), "file": pa.string(), "attempt": pa.int64(),
                 "quality_contrast": pa.float32(), "quality_sharpness": pa.float32(),
                 "mix_seed": pa.int64(), "crossover": pa.int32()}


def _column_type(name: str) -> pa.DataType:
    if name.startswith("label_") and name.endswith("_confidence"):
        return pa.float32()
    return _COLUMN_TYPES.get(name, pa.string())


def class_names(plan: ConditionPlan, labeling: dict[str, Any] | None) -> dict[str, list[str]]:
    """Column -> its names in a fixed order (the model's conditions, the labeler's values): the
    columns a hf-datasets/1 shard stores as ClassLabel. A label without known names stays a string."""
    names = {attribute: list(values) for attribute, values in plan.condition_values.items() if values}
    for attribute, values in ((labeling or {}).get("label_values") or {}).items():
        if values:
            names[f"label_{attribute}"] = list(values)
    return names


def _parquet_bytes(columns: dict[str, list], layout: OutputLayout, names: dict[str, list[str]]) -> bytes:
    if layout.table_layout == HF_LAYOUT:
        table = hf_table(columns, {name: _column_type(name) for name in columns},
                         {name: values for name, values in names.items() if name in columns})
    else:
        table = pa.table({name: pa.array(values, _column_type(name)) for name, values in columns.items()})
    buf = io.BytesIO()
    if len(table) == 0:
        # A shard with no faces (a closed-loop stratum that got none) has no row group at all:
        # `datasets` fails on a row group of 0 rows ("BatchSize must be greater than 0").
        pq.ParquetWriter(buf, table.schema, compression="none").close()
        return buf.getvalue()
    # One row group per shard; no compression: PNG bytes do not compress further.
    pq.write_table(table, buf, compression="none", row_group_size=len(table))
    return buf.getvalue()


def write_shard(batch: pa.Table, *, layout: OutputLayout, plan: ConditionPlan, seed_offset: int, psi: float,
                mix: StyleMix | None = None, model_version: str, job_id: str, superseded_url: str,
                labeling: dict[str, Any] | None = None) -> pa.Table:
    """Write each shard's files into place, then its manifest entry (the commit); return commit records.

    `superseded_url` is the lease key that exists once another driver has taken the output over:
    then the shard is not committed (that driver's cleanup may already have removed its files).
    `labeling` ({"label_attributes", "quality", "closed_loop"}): rows come from the shard's `meta`
    (the kept faces, their labels and verdict counts), which also goes into the commit entry; a
    closed-loop shard whose stratum ran out of attempts under on_budget_exhausted 'error' is not
    written at all (its record says so; the driver fails the job).
    """
    records = []
    for row in batch.to_pylist():
        shard, pngs = _shard(row), row["pngs"]
        meta = json.loads(row["meta"]) if labeling is not None else None
        if meta is not None and meta.get("fail"):
            records.append({"shard": shard.index, "rows": 0, "bytes": 0, "short": row["meta"]})
            continue
        if meta is None:
            row_args = dict(seed_offset=seed_offset, psi=psi, mix=mix, width=row["width"], height=row["height"],
                            model_version=model_version, job_id=job_id)

            def rows_of(images=None):
                return face_rows(shard, plan, images=images, **row_args)
        else:
            label_args = dict(label_attributes=labeling["label_attributes"], quality=labeling["quality"],
                              closed_loop=labeling["closed_loop"], psi=psi, width=row["width"],
                              height=row["height"], model_version=model_version, job_id=job_id)

            def rows_of(images=None):
                return labeled_rows(meta, plan, images=images, **label_args)
        files: dict[str, dict[str, Any]] = {}
        names = class_names(plan, labeling)
        if layout.writes_parquet:
            data = _parquet_bytes(rows_of(pngs), layout, names)
            relpath = layout.parquet_relpath(shard)
            storage.atomic_write(layout.path(relpath), data)
            files[relpath] = {"bytes": len(data), "sha256": storage.sha256_hex(data)}
        if layout.writes_png:
            relpath = layout.png_relpath(shard)
            columns = rows_of()
            files_in = [f"{face_id:09d}.png" for face_id in columns["face_id"]]
            folder = dict(zip(files_in, pngs))
            folder[PNG_METADATA_FILE] = _parquet_bytes({**columns, "file": [relpath + n for n in files_in]},
                                                       layout, names)
            storage.atomic_write_many(layout.path(relpath), folder)
            files[relpath] = {"files": len(folder), "bytes": sum(map(len, folder.values())),
                              "sha256": folder_checksum(folder)}
        if layout.writes_webdataset:
            relpath = layout.webdataset_relpath(shard)
            class_of = (class_source(layout.class_attribute, plan.condition_values,
                                     (labeling or {}).get("label_values") or {})
                        if layout.class_attribute is not None else None)
            data = tar_bytes(rows_of(), pngs, class_of)
            storage.atomic_write(layout.path(relpath), data)
            files[relpath] = {"bytes": len(data), "sha256": storage.sha256_hex(data)}
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
        if meta is not None:  # what the report adds up: verdict counts of this shard's candidates
            entry["verdicts"] = {k: v for k, v in meta.items() if k != "faces"}
        check_not_superseded(superseded_url)
        storage.atomic_write(layout.entry_url(shard), json_bytes(entry))  # LAST: commits the shard
        records.append({"shard": shard.index, "rows": entry["rows"], "bytes": entry["bytes"], "short": ""})
    return pa.Table.from_pylist(records, schema=pa.schema([("shard", pa.int64()), ("rows", pa.int64()),
                                                           ("bytes", pa.int64()), ("short", pa.string())]))


# -- labels, the quality gate and closed-loop quotas -------------------------------------------------


class FaceLabeler:
    """Ray Data actor (the label stage): a rendered shard -> its kept faces' pixels + `meta` (JSON).

    Every face of the shard goes through the quality gate and the labeler (FaceVerifier); a face
    the gate rejects is dropped here (never written) and counted under its reason in `meta`.
    """

    def __init__(self, plan: ConditionPlan, seed_offset: int, labeler: Any, quality: Any, registry_url: str,
                 label_attributes: list[str]):
        from ganray.generate.closedloop import FaceVerifier

        self.plan, self.seed_offset = plan, seed_offset
        self.verifier = FaceVerifier(labeler, quality, registry_url, label_attributes)
        self.batch_size = labeler.batch_size if labeler is not None else 64

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ganray.generate.closedloop import json_dumps

        pixels, metas = [], []
        for k in range(len(batch["shard"])):
            shard = _shard({key: batch[key][k] for key in ("shard", "start", "stop")})
            h, w = int(batch["height"][k]), int(batch["width"][k])
            images = np.frombuffer(batch["pixels"][k], dtype=np.uint8).reshape(-1, h, w, 3)
            face_ids = list(range(shard.start, shard.stop))
            seeds = [self.seed_offset + i for i in face_ids]
            conditions = [self.plan.for_face(i, s) for i, s in zip(face_ids, seeds)]
            verdicts = []
            for lo in range(0, len(images), self.batch_size):
                verdicts += self.verifier.verify(images[lo:lo + self.batch_size], conditions[lo:lo + self.batch_size])
            keep = [v["reject"] is None for v in verdicts]
            rejects: dict[str, int] = {}
            for v in verdicts:
                if v["reject"] is not None:
                    rejects[v["reject"]] = rejects.get(v["reject"], 0) + 1
            faces = [{"face_id": i, "seed": s, "conditions": c, **{key: v[key] for key in v if key != "reject"}}
                     for i, s, c, v, kept in zip(face_ids, seeds, conditions, verdicts, keep) if kept]
            pixels.append(images[np.array(keep, dtype=bool)].tobytes())
            metas.append(json_dumps({"faces": faces, "examined": len(face_ids), "rejects": dict(sorted(rejects.items()))}))
        return {**batch, "pixels": np.array(pixels, dtype=object), "meta": np.array(metas, dtype=object)}


class StratumSearcher:
    """Ray Data actor of a closed-loop job: one stratum in, its missing shards out (one row each).

    It walks the stratum's candidates k = start_attempt, start_attempt + 1, ... in batches of
    `batch_size`: renders them (conditioned on the stratum where the model can be), verifies them
    (FaceVerifier: gate + labeler, in this actor: the walk needs each verdict before it goes on) and
    takes accepted faces in k order until a shard's part of the quota is full; it yields that shard
    (if it is one of the missing ones) and goes on with the next. Candidates rendered past the last
    one a shard needed are dropped: they are the next shard's candidates, and are verified again
    there, so results never depend on where a batch ends.
    """

    def __init__(self, registry_url: str, version: str, plan: ConditionPlan, closed: Any, psi: float,
                 batch_size: int, precision: str, device: str, environment: dict[str, str], labeler: Any,
                 quality: Any, label_attributes: list[str]):
        from ganray.generate.closedloop import FaceVerifier
        from ganray.registry import Registry

        mine = render_environment(device, precision)
        if mine != environment:
            raise RuntimeError(f"this generator actor runs on {mine}, but the job renders on {environment}: "
                               "the bytes could differ, so it refuses to render. Run the job on nodes of one kind.")
        precision = mine["precision"]  # "auto" resolved, as in the job's identity
        from ganray.models.face import prepare_for_render

        self.generator = prepare_for_render(Registry(registry_url).load_generator(version, device=device).generator,
                                            precision)
        self.plan, self.closed, self.psi = plan, closed, psi
        self.batch_size, self.precision = batch_size, precision
        self.verifier = FaceVerifier(labeler, quality, registry_url, label_attributes)

    def _candidates(self, s: int, attempts: range) -> tuple[np.ndarray, list[int], list[dict[str, str]], list[dict]]:
        from ganray.generate.closedloop import candidate_seed
        from ganray.models.face import complete_conditions, labels_for_rows, render_faces

        name = self.closed.name(s)
        stratum = dict(zip(self.closed.attributes, self.closed.strata[s]))
        seeds = [candidate_seed(self.closed.seed_offset, name, k) for k in attempts]
        asked = {**self.plan.fixed, **{a: v for a, v in stratum.items() if a in self.plan.condition_values}}
        conditions = [complete_conditions(self.plan.condition_values, asked, seed) for seed in seeds]
        images = render_faces(self.generator, seeds, self.psi, labels_for_rows(self.generator, conditions),
                              self.precision)
        return images, seeds, conditions, self.verifier.verify(images, conditions)

    def __call__(self, batch: dict[str, np.ndarray]):
        from ganray.generate.closedloop import json_dumps, stratum_verdict

        for row in range(len(batch["stratum"])):
            s = int(batch["stratum"][row])
            missing = set(json.loads(batch["missing"][row]))
            parts = self.closed.parts(s)
            part = int(batch["start_part"][row])
            attempt = int(batch["start_attempt"][row])
            budget = self.closed.budgets[s]
            values = self.closed.strata[s]
            pending: list[tuple[np.ndarray, dict]] = []
            stats = _new_stats(attempt)
            while part < len(parts):
                if attempt >= budget:  # out of attempts: this part is short, the ones after it empty
                    for p in range(part, len(parts)):
                        if parts[p].index in missing:
                            yield self._emit(parts[p], s, pending, stats, attempt, exhausted=True)
                        pending, stats = [], _new_stats(attempt)
                        if self.closed.on_budget_exhausted == "error":
                            break
                    break
                attempts = range(attempt, min(attempt + self.batch_size, budget))
                images, seeds, conditions, verdicts = self._candidates(s, attempts)
                for j, k in enumerate(attempts):
                    why = stratum_verdict(verdicts[j], self.closed.attributes, values, self.closed.min_confidence)
                    _count(stats, verdicts[j], why, self.closed.attributes, values)
                    attempt = k + 1
                    if why is None:
                        pending.append((images[j], {"seed": seeds[j], "attempt": k, "conditions": conditions[j],
                                                    **{key: verdicts[j][key] for key in verdicts[j] if key != "reject"}}))
                    if len(pending) == parts[part].stop - parts[part].start:
                        if parts[part].index in missing:
                            yield self._emit(parts[part], s, pending, stats, attempt, exhausted=False)
                        part, pending, stats = part + 1, [], _new_stats(attempt)
                        if part == len(parts):
                            break

    def _emit(self, shard: ShardRange, s: int, pending: list, stats: dict, attempt: int,
              exhausted: bool) -> dict[str, np.ndarray]:
        from ganray.generate.closedloop import json_dumps

        res = self.generator.resolution
        images = np.stack([p[0] for p in pending]) if pending else np.zeros((0, res, res, 3), np.uint8)
        faces = [{"face_id": shard.start + r, **meta} for r, (_, meta) in enumerate(pending)]
        meta = {"faces": faces, "stratum": self.closed.name(s), "quota": shard.stop - shard.start,
                "attempts": [stats["from"], attempt], **{k: v for k, v in stats.items() if k != "from"},
                "exhausted": exhausted}
        if exhausted and self.closed.on_budget_exhausted == "error":
            meta["fail"] = True
        return {"shard": np.array([shard.index]), "start": np.array([shard.start]), "stop": np.array([shard.stop]),
                "pixels": np.array([images.tobytes()], dtype=object), "height": np.array([res]),
                "width": np.array([res]), "meta": np.array([json_dumps(meta)], dtype=object)}


def _new_stats(attempt: int) -> dict[str, Any]:
    return {"from": attempt, "examined": 0, "accepted": 0, "rejects": {}, "labeled": 0, "agree": 0,
            "agree_by_attribute": {}}


def _count(stats: dict[str, Any], verdict: dict, why: str | None, attributes, values) -> None:
    """Add one candidate to a shard's verdict counts (what the balance report adds up)."""
    stats["examined"] += 1
    if why is None:
        stats["accepted"] += 1
    else:
        stats["rejects"][why] = stats["rejects"].get(why, 0) + 1
    if verdict["reject"] is None:  # it passed the gate, so the labeler saw it
        stats["labeled"] += 1
        matches = [verdict["labels"].get(a) == v for a, v in zip(attributes, values)]
        stats["agree"] += all(matches)
        for a, m in zip(attributes, matches):
            stats["agree_by_attribute"][a] = stats["agree_by_attribute"].get(a, 0) + int(m)
