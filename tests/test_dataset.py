"""The training dataset reader (both sources), reading rows by index in a seeded order, and the batch transform."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ganray.config import ConfigError, DataConfig, ImportConfig
from ganray.data.dataset import (EpochSampler, build_indexed_rows, build_train_dataset, dataset_attributes,
                                 dataset_manifest_hash, to_training_batch)
from ganray.data.importer import run_import
from ganray.data.synthetic import ATTRIBUTES, render_face

FACES = 6


def write_faces(write) -> None:
    """FACES labeled PNGs named `face<i>_<smile>.png` through `write(name, bytes)`."""
    for i in range(FACES):
        buf = io.BytesIO()
        Image.fromarray(render_face(i, 48)[0]).save(buf, format="PNG")
        write(f"face{i}_{'yes' if i % 2 else 'no'}.png", buf.getvalue())


def import_faces(src: str, dst: str) -> dict:
    return run_import(ImportConfig(src=src, dst=dst, resolution=32, shard_rows=4,
                                   labels={"pattern": r"face\d+_(?P<smile>yes|no)\.png"}))


def check_shards_dataset(cfg: DataConfig, manifest: dict) -> dict[str, np.ndarray]:
    """All rows, read by index (the way training reads them); returns them."""
    assert dataset_attributes(cfg) == {"smile": ["no", "yes"]}
    assert dataset_manifest_hash(cfg) == manifest["manifest_hash"]
    rows = build_indexed_rows(cfg)
    assert rows.num_rows == FACES
    batch = rows.read(np.arange(FACES))
    assert list(batch) == ["image", "smile"]
    assert batch["image"].shape == (FACES, cfg.resolution, cfg.resolution, 3)
    assert batch["image"].dtype == np.uint8 and batch["smile"].dtype == np.int64
    assert sorted(batch["smile"].tolist()) == [0, 0, 0, 1, 1, 1]
    return batch


def test_synthetic_source(ray_session):
    cfg = DataConfig(source="synthetic", resolution=32, synthetic={"count": 8, "seed": 1})
    batch = build_train_dataset(cfg).take_batch(8, batch_format="numpy")
    assert batch["image"].shape == (8, 32, 32, 3) and list(batch)[1:] == list(ATTRIBUTES)
    assert dataset_attributes(cfg) == ATTRIBUTES
    assert dataset_manifest_hash(cfg) == dataset_manifest_hash(cfg.model_copy())
    assert dataset_manifest_hash(cfg) != dataset_manifest_hash(cfg.model_copy(update={"resolution": 64}))


def test_shards_source_local_resized(ray_session, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_faces(lambda name, data: (src / name).write_bytes(data))
    manifest = import_faces(str(src), str(tmp_path / "shards"))
    cfg = DataConfig(source="shards", url=str(tmp_path / "shards"), resolution=32)
    first = check_shards_dataset(cfg, manifest)
    # Row i is the same row in every build (shard order, then row order): the seeded epoch order
    # of training indexes into it.
    again = build_indexed_rows(cfg).read(np.arange(FACES))
    assert all(np.array_equal(first[k], again[k]) for k in first)
    check_shards_dataset(cfg.model_copy(update={"resolution": 64}), manifest)


def test_shards_source_s3(ray_session, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    write_faces(lambda name, data: fs.pipe_file(f"{s3_bucket}/faces/{name}", data))
    manifest = import_faces(f"s3://{s3_bucket}/faces", f"s3://{s3_bucket}/shards")
    check_shards_dataset(DataConfig(source="shards", url=f"s3://{s3_bucket}/shards", resolution=32), manifest)


def test_shards_source_without_import(tmp_path):
    with pytest.raises(ConfigError, match="data.url"):
        build_train_dataset(DataConfig(source="shards", url=str(tmp_path)))


def test_to_training_batch():
    images = np.stack([render_face(i, 16)[0] for i in range(8)])
    images[:, :, 0] = 0  # a black left column: shows which images were flipped
    images[:, :, -1] = 255
    batch = {"image": images, "a": np.arange(8), "b": np.arange(8) % 2}

    x, labels = to_training_batch(batch, flip=None)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert labels.dtype == torch.int64 and labels.tolist() == [[i, i % 2] for i in range(8)]

    flip = np.array([True, False, False, True, True, False, True, False])
    flipped, _ = to_training_batch(batch, flip=flip)
    for i in range(8):
        assert torch.equal(flipped[i], x[i].flip(-1) if flip[i] else x[i])
    assert (flipped[:, :, :, 0] == 1.0).all(dim=(1, 2)).tolist() == flip.tolist()  # the white column moved


def test_indexed_rows_read_any_rows_in_the_asked_order(ray_session):
    cfg = DataConfig(source="synthetic", resolution=32, synthetic={"count": 40, "seed": 3})
    rows = build_indexed_rows(cfg)
    assert rows.num_rows == 40 and len(rows.block_refs) > 1  # reads gather across blocks
    assert rows.columns == ["image", *ATTRIBUTES]
    wanted = [39, 0, 17, 17, 5]
    batch = rows.read(np.array(wanted))
    for j, i in enumerate(wanted):
        image, labels = render_face(i, 32, seed=3)  # row i is face i: the order is fixed
        assert np.array_equal(batch["image"][j], image)
        assert [int(batch[name][j]) for name in ATTRIBUTES] == [labels[name] for name in ATTRIBUTES]
    with pytest.raises(IndexError, match="0..39"):
        rows.read(np.array([40]))


def _stream(sampler: EpochSampler, n: int) -> list[tuple[list[int], list[bool] | None]]:
    out = []
    for _ in range(n):
        indices, flip = sampler.next()
        out.append((indices.tolist(), None if flip is None else flip.tolist()))
    return out


def test_epoch_sampler_order_is_seeded_and_split_into_fixed_parts_of_each_global_batch():
    rows, batch = 50, 8  # 6 global batches per epoch, 2 rows left out of each
    whole = _stream(EpochSampler(rows, batch, seed=7, hflip=True), 12)
    parts = [_stream(EpochSampler(rows, batch, seed=7, rank=r, world_size=2, hflip=True), 12) for r in range(2)]
    # Worker r takes the r-th half of every global batch, flips included: the global batches do
    # not depend on the number of workers.
    for b in range(12):
        assert parts[0][b][0] + parts[1][b][0] == whole[b][0]
        assert parts[0][b][1] + parts[1][b][1] == whole[b][1]
    first, second = [sum((b[0] for b in whole[e * 6:(e + 1) * 6]), []) for e in range(2)]
    assert len(set(first)) == len(set(second)) == 48  # an epoch visits 48 distinct rows once
    assert first != second  # and the next epoch reshuffles
    assert any(f for b in whole for f in b[1]) and not all(f for b in whole for f in b[1])
    assert whole == _stream(EpochSampler(rows, batch, seed=7, hflip=True), 12)  # same seed, same stream
    assert [b[0] for b in whole] != [b[0] for b in _stream(EpochSampler(rows, batch, seed=8), 12)]
    assert all(b[1] is None for b in _stream(EpochSampler(rows, batch, seed=7), 3))  # hflip off


def test_epoch_sampler_resumes_from_its_position():
    running = EpochSampler(50, 8, seed=1, rank=1, world_size=2, hflip=True)
    _stream(running, 9)  # into the second epoch
    assert running.state_dict() == {"epoch": 1, "batch": 3}
    resumed = EpochSampler(50, 8, seed=1, rank=1, world_size=2, hflip=True)
    resumed.load_state_dict(running.state_dict())
    assert _stream(resumed, 7) == _stream(running, 7)
    with pytest.raises(ValueError, match="outside an epoch of 6 batches"):
        resumed.load_state_dict({"epoch": 0, "batch": 6})
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochSampler(7, 8, seed=0)


def test_to_training_batch_picks_and_orders_the_label_columns_a_model_conditions_on():
    """model.condition_on may pick the dataset's attributes in another order: labels follow it."""
    images = np.stack([render_face(i, 16)[0] for i in range(4)])
    batch = {"image": images, "age": np.arange(4), "gender": np.arange(4) % 2, "race": np.arange(4) + 10}
    _, labels = to_training_batch(batch, flip=None, label_columns=["race", "gender"])
    assert labels.tolist() == [[10 + i, i % 2] for i in range(4)]
    with pytest.raises(KeyError, match="skin"):
        to_training_batch(batch, flip=None, label_columns=["skin"])


def test_the_shard_reader_reads_rows_by_index_across_shards_and_row_groups(tmp_path):
    """rows_at (eval's closest pairs) and first_rows (the human-evaluation page) over shards of
    several row groups: the rows asked for, in global row order, whatever their shard and group."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ganray.data.manifest import column_names, first_rows, read_columns, rows_at

    paths = []
    for shard, rows in enumerate(([0, 1, 2, 3, 4], [5, 6], [7, 8, 9, 10])):
        paths.append(str(tmp_path / f"shard-{shard}.parquet"))
        pq.write_table(pa.table({"image": [f"row{i}".encode() for i in rows], "smile": rows}), paths[-1],
                       row_group_size=2)
    fs = fsspec.filesystem("file")
    assert rows_at(fs, paths, [9, 0, 4, 5, 4]) == {0: b"row0", 4: b"row4", 5: b"row5", 9: b"row9"}
    assert rows_at(fs, paths, [6], column="smile") == {6: 6}
    assert first_rows(fs, paths, "smile", 7) == [0, 1, 2, 3, 4, 5, 6]
    assert first_rows(fs, paths, "smile", 99) == list(range(11))
    assert column_names(fs, paths[0]) == ["image", "smile"]
    assert read_columns(fs, paths[2], ["smile"])["smile"].to_pylist() == [7, 8, 9, 10]


def test_shards_are_read_only_through_the_manifest_module():
    """One owner of the dataset format: no other module of the package opens Parquet shards itself.
    The importer and the bulk job write shards; ganray.generate (which sits beside ganray.data, not
    above it) verifies and reports on its own output."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "ganray"
    readers = ("read_table(", "ParquetFile(", "read_parquet(", "read_schema(")
    allowed = {package / "data" / "manifest.py"}
    offenders = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
                 if path not in allowed and not path.is_relative_to(package / "generate")
                 and any(reader in path.read_text() for reader in readers)]
    assert not offenders
