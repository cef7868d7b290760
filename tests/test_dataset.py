"""The training dataset reader (both sources) and the per-worker batch transform."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ganray.config import ConfigError, DataConfig, ImportConfig
from ganray.data.dataset import build_train_dataset, dataset_attributes, dataset_manifest_hash, to_training_batch
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


def check_shards_dataset(cfg: DataConfig, manifest: dict) -> None:
    assert dataset_attributes(cfg) == {"smile": ["no", "yes"]}
    assert dataset_manifest_hash(cfg) == manifest["manifest_hash"]
    batch = build_train_dataset(cfg).take_batch(FACES, batch_format="numpy")
    assert list(batch) == ["image", "smile"]
    assert batch["image"].shape == (FACES, cfg.resolution, cfg.resolution, 3)
    assert batch["image"].dtype == np.uint8 and batch["smile"].dtype == np.int64
    assert sorted(batch["smile"].tolist()) == [0, 0, 0, 1, 1, 1]


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
    check_shards_dataset(DataConfig(source="shards", url=str(tmp_path / "shards"), resolution=32), manifest)
    check_shards_dataset(DataConfig(source="shards", url=str(tmp_path / "shards"), resolution=64), manifest)


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

    x, labels = to_training_batch(batch, hflip=False, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert labels.dtype == torch.int64 and labels.tolist() == [[i, i % 2] for i in range(8)]

    flipped, _ = to_training_batch(batch, hflip=True, generator=torch.Generator().manual_seed(0))
    again, _ = to_training_batch(batch, hflip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flipped, again)  # same generator state -> same flips
    was_flipped = flipped[:, :, :, 0] == 1.0
    assert 0 < int(was_flipped.all(dim=(1, 2)).sum()) < 8
    for i in range(8):
        expected = x[i].flip(-1) if was_flipped[i].all() else x[i]
        assert torch.equal(flipped[i], expected)
