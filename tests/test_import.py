"""`ganray data import`: preprocessing rules, drop accounting, labels, S3, safety of the destination."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image, ImageFilter

from ganray import storage
from ganray.storage import UnsafePathError, sha256_hex, url_to_fs
from ganray.config import ConfigError, DataConfig, ImportConfig
from ganray.data import importer, preprocess
from ganray.data.hash_split import HELDOUT_RULE, heldout_mask
from ganray.data.dataset import build_train_dataset, dataset_manifest_hash
from ganray.data.importer import run_import
from ganray.data.manifest import read_manifest
from ganray.data.synthetic import render_face

from conftest import UTKFACE_ZIP

RES = 32
REGEX = r".*_(?P<smile>yes|no)\.(?:png|jpg)"
KEPT = ["a_good0_yes.png", "a_good1_no.png", "a_good2_yes.jpg", "a_good3_no.png", "b_gray_yes.png",
        "b_rgba_no.png", "b_palette_yes.png", "b_gray16_no.png", "b_exif6_yes.jpg"]
DROPPED = {
    "undecodable": ["c_corrupt_no.jpg", "c_truncated_yes.jpg"],
    "too_small": ["c_tiny_no.png"],
    "blank": ["c_blank_yes.png"],
    "blurry": ["c_blurry_no.png"],
    "duplicate": ["z_copy_of_good0_yes.png"],  # byte-identical to a_good0_yes.png, sorts after it
    "bad_label": ["nolabel.png"],
}


def face(index: int, size: int = 96) -> Image.Image:
    return Image.fromarray(render_face(index, size)[0])


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 120x80 JPEG whose EXIF says 'rotate 90 degrees clockwise to display' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(face(7, 120).crop((0, 20, 120, 100)), exif=exif)


def source_files() -> dict[str, bytes]:
    gray16 = (np.asarray(face(5).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    rgba = face(4).convert("RGBA")
    alpha = np.zeros((96, 96), np.uint8)
    alpha[16:80, 16:80] = 255  # opaque centre, fully transparent border
    rgba.putalpha(Image.fromarray(alpha))
    good0 = png_bytes(face(0))
    files = {
        "a_good0_yes.png": good0,
        "a_good1_no.png": png_bytes(face(1)),
        "a_good2_yes.jpg": jpeg_bytes(face(2, 150)),
        "a_good3_no.png": png_bytes(face(3, 100).crop((0, 0, 100, 70))),  # wide: centre-cropped
        "b_gray_yes.png": png_bytes(face(6).convert("L")),
        "b_rgba_no.png": png_bytes(rgba),
        "b_palette_yes.png": png_bytes(face(8).convert("P", palette=Image.Palette.ADAPTIVE)),
        "b_gray16_no.png": png_bytes(Image.fromarray(gray16)),
        "b_exif6_yes.jpg": exif_rotated_jpeg(),
        "c_corrupt_no.jpg": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "c_truncated_yes.jpg": jpeg_bytes(face(9))[:1500],
        "c_tiny_no.png": png_bytes(face(10, 16)),
        "c_blank_yes.png": png_bytes(Image.new("RGB", (64, 64), (120, 130, 140))),
        "c_blurry_no.png": png_bytes(face(11, 128).filter(ImageFilter.GaussianBlur(8))),
        "z_copy_of_good0_yes.png": good0,
        "nolabel.png": png_bytes(face(12)),
        "notes.txt": b"not an image: never listed",
    }
    sidecar = io.StringIO()
    writer = csv.writer(sidecar)
    writer.writerow(["file", "smile", "glasses"])
    for name in files:
        if name.endswith((".png", ".jpg")) and name != "nolabel.png":
            writer.writerow([name, name.rsplit("_", 1)[1].split(".")[0], "yes" if "good" in name else "no"])
    files["labels.csv"] = sidecar.getvalue().encode()
    return files


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for name, data in source_files().items():
        (root / name).write_bytes(data)
    return root


def read_shards(dst: str | Path) -> dict[str, dict]:
    """{source_path: row} over every shard listed in the manifest (local dst)."""
    manifest = json.loads((Path(dst) / "manifest.json").read_text())
    rows = {}
    for shard in manifest["shards"]:
        for row in pq.read_table(Path(dst) / shard["file"]).to_pylist():
            rows[row["source_path"]] = row
    return rows


def stored_files(dst: str | Path) -> list[str]:
    """Every file under dst (local or s3://), relative to it, sorted."""
    fs, root = url_to_fs(str(dst))
    return sorted(p[len(root.rstrip("/")) + 1:] for p in fs.find(root))


def assert_counts(manifest: dict) -> None:
    seen = len(KEPT) + sum(map(len, DROPPED.values()))
    assert manifest["counts"] == {"seen": seen, "kept": len(KEPT), "dropped": seen - len(KEPT)}
    assert manifest["dropped"] == {reason: len(names) for reason, names in DROPPED.items()}
    assert manifest["dropped_examples"] == DROPPED


# ---------------------------------------------------------------------------------------------
# Pure preprocessing rules


def test_modes_become_rgb8():
    gray16 = Image.fromarray(np.full((40, 40), 65535, np.uint16))
    assert gray16.mode.startswith("I")
    out = preprocess.to_rgb8(preprocess.decode(png_bytes(gray16)))
    assert out.mode == "RGB" and np.asarray(out).min() == 255
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(preprocess.to_rgb8(transparent)).min() == 255  # composited on white
    assert preprocess.to_rgb8(Image.new("P", (8, 8))).mode == "RGB"


def test_exif_orientation_applied():
    img = preprocess.decode(exif_rotated_jpeg())
    assert img.size == (80, 120)  # stored 120x80, displayed rotated


def test_sharpness_independent_of_size():
    flat = np.full((32, 32), 100.0)
    checker = np.indices((32, 32)).sum(0) % 2 * 255.0
    assert preprocess.laplacian_variance(flat) == 0
    assert preprocess.laplacian_variance(checker) > 1e4
    for size in (128, 256, 512):  # blur of the same relative width scores the same, far below sharp
        sharp, blurred = face(11, size), face(11, size).filter(ImageFilter.GaussianBlur(8 * size / 128))
        assert preprocess.sharpness(blurred) < 0.6 < 1.0 < 20 < preprocess.sharpness(sharp)


# ---------------------------------------------------------------------------------------------
# Imports through Ray


def test_import_folder_with_sidecar(ray_session, source_dir, tmp_path):
    dst = tmp_path / "out"
    cfg = ImportConfig(src=str(source_dir), dst=str(dst), resolution=RES, shard_rows=4,
                       labels={"sidecar": str(source_dir / "labels.csv")})
    manifest = run_import(cfg)
    assert_counts(manifest)
    assert manifest["attributes"] == {"smile": ["no", "yes"], "glasses": ["no", "yes"]}
    assert manifest["resolution"] == RES
    assert manifest["label_histograms"] == {"smile": {"no": 4, "yes": 5}, "glasses": {"no": 5, "yes": 4}}
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 1]
    assert json.loads((dst / "manifest.json").read_text()) == manifest
    assert stored_files(dst) == sorted(["manifest.json"] + [s["file"] for s in manifest["shards"]])
    assert all(re.fullmatch(r"imports/\d{8}T\d{6}Z-[0-9a-f]{12}/shard-\d{5}\.parquet", s["file"])
               for s in manifest["shards"])

    rows = read_shards(dst)
    assert sorted(rows) == sorted(KEPT)
    for name, row in rows.items():
        img = Image.open(io.BytesIO(row["image"]))
        assert img.mode == "RGB" and img.size == (RES, RES), name
        assert row["smile"] == (1 if name.rsplit("_", 1)[1].startswith("yes") else 0)
        assert row["glasses"] == (1 if "good" in name else 0)
        assert row["content_hash"] == sha256_hex((source_dir / name).read_bytes())
    gray = np.asarray(Image.open(io.BytesIO(rows["b_gray_yes.png"]["image"]))).astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgba = np.asarray(Image.open(io.BytesIO(rows["b_rgba_no.png"]["image"])))
    assert (rgba[0, 0] == 255).all()  # transparent corner composited on white
    gray16 = np.asarray(Image.open(io.BytesIO(rows["b_gray16_no.png"]["image"])))
    assert 60 < gray16.mean() < 230  # scaled from 16 bits, not clipped to white

    # The importer's order-preserving execution must not leak into the process's other datasets.
    assert not ray.data.DataContext.get_current().execution_options.preserve_order
    again = run_import(cfg)  # re-importing into a previous import replaces it, same identity
    assert again["manifest_hash"] == manifest["manifest_hash"]


def test_import_regex_labels_and_shard_shrink(ray_session, source_dir, tmp_path):
    dst = tmp_path / "out"
    first = run_import(ImportConfig(src=str(source_dir), dst=str(dst), resolution=RES, shard_rows=2,
                                    labels={"pattern": REGEX}))
    assert len(first["shards"]) == 5
    manifest = run_import(ImportConfig(src=str(source_dir), dst=str(dst), resolution=RES, shard_rows=100,
                                       labels={"pattern": REGEX}))
    assert_counts(manifest)
    assert manifest["attributes"] == {"smile": ["no", "yes"]}
    assert manifest["manifest_hash"] == first["manifest_hash"]  # the shard layout is not the data
    # Only the new import is left: the first one's five shards and their folder are gone.
    assert stored_files(dst) == [manifest["shards"][0]["file"], "manifest.json"]
    assert os.listdir(dst / "imports") == [manifest["shards"][0]["file"].split("/")[1]]
    rows = read_shards(dst)
    assert sorted(rows) == sorted(KEPT)
    assert {name: row["smile"] for name, row in rows.items()} == {n: int("_yes." in n) for n in KEPT}

    keep_copies = run_import(ImportConfig(src=str(source_dir), dst=str(dst), resolution=RES, deduplicate=False,
                                          labels={"pattern": REGEX}))
    assert keep_copies["counts"]["kept"] == len(KEPT) + 1 and keep_copies["dropped"]["duplicate"] == 0

    assert "leave_out_heldout" not in manifest["settings"] and "held_out" not in manifest["dropped"]
    # Leaving out a content-hash split: exactly the images whose source sha256 falls in it, counted.
    files = source_files()
    held = {n for n in KEPT if heldout_mask([sha256_hex(files[n])], 0.5)[0]}
    assert 0 < len(held) < len(KEPT)
    without = run_import(ImportConfig(src=str(source_dir), dst=str(dst), resolution=RES, leave_out_heldout=0.5,
                                      labels={"pattern": REGEX}))
    assert sorted(read_shards(dst)) == sorted(set(KEPT) - held)
    assert without["dropped"]["held_out"] == len(held) and without["dropped_examples"]["held_out"] == sorted(held)
    assert without["counts"]["kept"] == len(KEPT) - len(held)
    assert without["settings"]["leave_out_heldout"] == {"rule": HELDOUT_RULE, "fraction": 0.5}
    assert without["manifest_hash"] != manifest["manifest_hash"]


def test_import_s3_to_s3(ray_session, source_dir, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    for path in source_dir.iterdir():
        fs.pipe_file(f"{s3_bucket}/raw/{path.name}", path.read_bytes())
    manifest = run_import(ImportConfig(src=f"s3://{s3_bucket}/raw", dst=f"s3://{s3_bucket}/shards",
                                       resolution=RES, labels={"pattern": REGEX}))
    assert_counts(manifest)
    assert stored_files(f"s3://{s3_bucket}/shards") == sorted(["manifest.json"] + [s["file"] for s in manifest["shards"]])
    stored = json.loads(fs.cat_file(f"{s3_bucket}/shards/manifest.json"))
    assert stored["manifest_hash"] == manifest["manifest_hash"]


def test_refuses_foreign_destination(ray_session, source_dir, tmp_path):
    dst = tmp_path / "not-an-import"
    dst.mkdir()
    (dst / "thesis.tex").write_text("precious")
    cfg = ImportConfig(src=str(source_dir), dst=str(dst), resolution=RES, labels={"pattern": REGEX})
    with pytest.raises(ConfigError, match="import.dst.*not empty"):
        run_import(cfg)
    assert [p.name for p in dst.iterdir()] == ["thesis.tex"]
    cfg.overwrite = True  # explicitly allowed: writes alongside, leaves foreign files alone
    run_import(cfg)
    assert (dst / "thesis.tex").read_text() == "precious" and (dst / "manifest.json").exists()


def test_storage_error_aborts_and_leaves_nothing(ray_session, source_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in KEPT[:3]:
        (src / name).write_bytes((source_dir / name).read_bytes())
    os.symlink(tmp_path / "gone.png", src / "a_missing_yes.png")  # listed, then unreadable
    dst = tmp_path / "out"
    with pytest.raises(Exception, match="gone.png|a_missing_yes|No such file"):
        run_import(ImportConfig(src=str(src), dst=str(dst), resolution=RES, labels={"pattern": REGEX}))
    assert not dst.exists()


@pytest.mark.skipif(not UTKFACE_ZIP.exists(), reason="UTKFace ZIP not present")
def test_import_utkface_zip(ray_session, tmp_path):
    start = time.perf_counter()
    manifest = run_import(ImportConfig(src=str(UTKFACE_ZIP), dst=str(tmp_path / "utk"), resolution=64,
                                       labels={"preset": "utkface"}))
    elapsed = time.perf_counter() - start
    print(f"UTKFace import: {manifest['counts']} {manifest['dropped']} in {elapsed:.1f} s")
    # 23,708 files, 3 malformed names; the archive also holds 390 byte-identical copies of other
    # files (often with contradicting labels), dropped as duplicates. No photo fails a quality check.
    assert manifest["counts"]["seen"] == 23_708
    assert manifest["dropped"]["bad_label"] == 3
    assert manifest["dropped_examples"]["bad_label"] == [
        "UTKFace/39_1_20170116174525125.jpg.chip.jpg",
        "UTKFace/61_1_20170109142408075.jpg.chip.jpg",
        "UTKFace/61_1_20170109150557335.jpg.chip.jpg",
    ]
    assert manifest["counts"]["kept"] + manifest["dropped"]["duplicate"] == 23_705
    assert manifest["dropped"]["duplicate"] == 390
    assert {r: n for r, n in manifest["dropped"].items() if r not in ("bad_label", "duplicate")} == \
        {"undecodable": 0, "too_small": 0, "blank": 0, "blurry": 0}
    assert manifest["attributes"]["race"] == ["white", "black", "asian", "indian", "other"]
    assert sum(manifest["label_histograms"]["gender"].values()) == manifest["counts"]["kept"]


# ---------------------------------------------------------------------------------------------
# Commit: a crash at any point leaves the previous import or the new one, complete

FACE_PATTERN = r"face\d+_(?P<smile>yes|no)\.png"


class SimulatedCrash(BaseException):
    """The import process dying at a commit point: a BaseException, so no `except Exception` runs."""


@contextmanager
def crash_at(point: str, error: type[BaseException] = SimulatedCrash):
    """Run the block's import until `point`, where `error` is raised. For a crash, every later point
    (the error path's clean-up included) raises too: a dead process runs nothing more."""
    assert point in importer.COMMIT_POINTS
    crashed = False

    def hook(name: str) -> None:
        nonlocal crashed
        if name == point or (crashed and error is SimulatedCrash):
            crashed = True
            raise error(f"injected at {name}")

    importer.commit_point_hook = hook
    try:
        with pytest.raises(error, match="injected at"):
            yield
    finally:
        importer.commit_point_hook = None
    assert crashed


def write_faces(root: str, indices: list[int]) -> str:
    fs, path = url_to_fs(root)
    fs.makedirs(path, exist_ok=True)
    for i in indices:
        fs.pipe_file(f"{path}/face{i}_{'yes' if i % 2 else 'no'}.png", png_bytes(face(i, 40)))
    return root


def training_rows(dst: str) -> list[tuple[str, int]]:
    """What training reads from dst, through the real reader: sorted (image digest, label) rows."""
    rows = build_train_dataset(DataConfig(source="shards", url=dst, resolution=16)).take_all()
    return sorted((sha256_hex(row["image"].tobytes()), int(row["smile"])) for row in rows)


def to_old_layout(dst: str) -> None:
    """Rewrite a local import in the layout of older ganray versions: shards at the top of dst."""
    manifest = json.loads((Path(dst) / "manifest.json").read_text())
    for shard in manifest["shards"]:
        old_name = shard["file"].rsplit("/", 1)[1]
        os.rename(Path(dst) / shard["file"], Path(dst) / old_name)
        shard["file"] = old_name
    shutil.rmtree(Path(dst) / "imports")
    (Path(dst) / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_crash_at_each_commit_point_leaves_one_whole_import(ray_session, where, tmp_path, request):
    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    src_a, src_b = write_faces(f"{base}/a", [0, 1, 2]), write_faces(f"{base}/b", [3, 4])
    dst = f"{base}/shards"

    def import_(src: str) -> dict:
        return run_import(ImportConfig(src=src, dst=dst, resolution=16, shard_rows=2, labels={"pattern": FACE_PATTERN}))

    def import_prefixes() -> set[str]:
        return {f.split("/")[1] for f in stored_files(dst) if f.startswith("imports/")}

    def assert_holds(manifest: dict, rows: list | None = None) -> None:
        """dst is exactly the import `manifest` describes, complete: every listed shard is there with
        its rows, and (given `rows`) the real training reader reads exactly those rows."""
        current = read_manifest(dst)
        assert current["manifest_hash"] == manifest["manifest_hash"]
        assert dataset_manifest_hash(DataConfig(source="shards", url=dst)) == manifest["manifest_hash"]
        fs, root = url_to_fs(dst)
        for shard in current["shards"]:
            with fs.open(f"{root}/{shard['file']}") as f:
                assert pq.read_metadata(f).num_rows == shard["rows"]
        if rows is not None:
            assert training_rows(dst) == rows

    manifest_a = import_(src_a)
    if where == "local":  # an import written by an older ganray reads, and the next import replaces it
        to_old_layout(dst)
    rows_a = training_rows(dst)
    manifest_b = import_(src_b)
    rows_b = training_rows(dst)
    assert len(rows_a) == 3 and len(rows_b) == 2 and manifest_a["manifest_hash"] != manifest_b["manifest_hash"]
    assert [f for f in stored_files(dst) if not f.startswith("imports/")] == ["manifest.json"]

    # dst holds B. Importing A, a crash before the manifest switch leaves B; from the switch on, A.
    # (The real reader runs where the state could have changed; the cheaper check everywhere.)
    with crash_at("write_shards"):
        import_(src_a)
    assert_holds(manifest_b)
    assert len(import_prefixes()) == 1
    with crash_at("switch_manifest"):  # every new shard written, none named by the manifest
        import_(src_a)
    assert_holds(manifest_b, rows_b)
    assert len(import_prefixes()) == 2
    leftovers = stored_files(dst)
    with crash_at("switch_manifest", RuntimeError):  # an error, not a crash: its new shards are removed
        import_(src_a)
    assert_holds(manifest_b)
    assert stored_files(dst) == leftovers
    with crash_at("remove_previous"):
        import_(src_a)
    assert_holds(manifest_a, rows_a)
    with crash_at("remove_leftovers"):
        import_(src_b)
    assert_holds(manifest_b, rows_b)

    # A temporary manifest of a killed local write; then a clean import removes every leftover.
    url_to_fs(dst)[0].pipe_file(url_to_fs(f"{dst}/manifest.json{storage.TEMP_MARKER}0123456789ab")[1], b"{")
    # Three import prefixes hold files: B (current), B's first import, the crash before the switch.
    assert len(import_prefixes()) == 3
    manifest_a = import_(src_a)
    assert_holds(manifest_a, rows_a)
    assert stored_files(dst) == sorted(["manifest.json"] + [s["file"] for s in manifest_a["shards"]])
    if where == "local":
        assert os.listdir(Path(dst) / "imports") == [manifest_a["shards"][0]["file"].split("/")[1]]


# ---------------------------------------------------------------------------------------------
# Paths read from a manifest stay inside its folder

@pytest.mark.parametrize("where", ["local", "s3"])
def test_manifest_paths_outside_dst_are_refused(ray_session, where, tmp_path, request):
    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    fs, _ = url_to_fs(base)
    dst, outside = f"{base}/shards", f"{base}/outside"
    src = write_faces(f"{base}/src", [0, 1])
    manifest = run_import(ImportConfig(src=src, dst=dst, resolution=16, labels={"pattern": FACE_PATTERN}))
    # The sentinel outside dst is a valid shard: following a path to it would read it without error.
    sentinel = url_to_fs(f"{outside}/shard.parquet")[1]
    fs.makedirs(url_to_fs(outside)[1], exist_ok=True)
    fs.copy(url_to_fs(f"{dst}/{manifest['shards'][0]['file']}")[1], sentinel)
    kept = stored_files(dst)
    unsafe_paths = ["../outside/shard.parquet", "imports/../../outside/shard.parquet",
                    sentinel if where == "local" else f"/{sentinel}",  # absolute
                    f"{outside}/shard.parquet" if where == "s3" else f"file://{sentinel}",  # a URL
                    "s3://other-bucket/shard.parquet"]

    for unsafe in unsafe_paths:
        bad = {**manifest, "shards": [{"file": unsafe, "rows": 2}]}
        fs.pipe_file(url_to_fs(f"{dst}/manifest.json")[1], json.dumps(bad).encode())
        with pytest.raises(UnsafePathError, match="unsafe path .* in a manifest under"):
            build_train_dataset(DataConfig(source="shards", url=dst, resolution=16))
        with pytest.raises(ConfigError, match=r"import.dst: refusing to replace .*unsafe path.*Nothing was written"):
            run_import(ImportConfig(src=src, dst=dst, resolution=16, labels={"pattern": FACE_PATTERN}))
        assert stored_files(dst) == kept, unsafe  # no new shards, nothing removed
    assert stored_files(outside) == ["shard.parquet"]
