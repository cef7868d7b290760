"""Turning one source image file into one training image, or a reason to drop it.

Pure functions on bytes and arrays (no Ray, no storage, no torch: Ray Data workers import this
module and should not pay for torch), so every rule here is unit-testable:
decode (EXIF orientation applied, truncated files rejected), convert any mode to RGB8, check
size/blankness/sharpness on the square centre crop, and resize that crop to the target resolution.
"""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, ImageStat

from ganray.images import decode_png

# Why an image is left out. `duplicate` and `bad_label` are decided by the importer, not here.
DROP_REASONS = ("undecodable", "too_small", "blank", "blurry", "duplicate", "bad_label")

# Extensions the importer lists as images; anything else in the source (sidecars, READMEs) is skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

WHITE = (255, 255, 255)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")

# Sharpness is measured on the square crop shrunk to this size (see `sharpness`).
BLUR_ANALYSIS_SIZE = 128


def decode(data: bytes) -> Image.Image:
    """Fully decode `data` (so truncated files fail here) and apply its EXIF orientation.

    Relies on PIL's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`: `load()` then raises on a
    file cut short instead of padding it with grey.
    """
    img = Image.open(io.BytesIO(data))
    img.load()
    return ImageOps.exif_transpose(img)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16-bit is scaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PIL opens 16-bit PNGs as I;16 or I): map 0..65535 onto 0..255.
        wide = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.round(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square crop (left, top, right, bottom) of a width x height image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D grayscale array: low means blurry (or flat)."""
    g = gray.astype(np.float32)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def sharpness(square: Image.Image) -> float:
    """Variance of the Laplacian of a square RGB image's luma, measured at BLUR_ANALYSIS_SIZE.

    Measuring at one fixed size makes the score independent of source and target resolution (blur
    is judged relative to the image's width), and keeping the luma in float avoids the noise floor
    (~1.7) that 8-bit rounding adds to every smooth image, which would hide real blur.
    """
    gray = Image.fromarray(np.asarray(square, dtype=np.float32) @ LUMA)
    side = min(gray.width, BLUR_ANALYSIS_SIZE)  # never upsample: that would invent smoothness
    if gray.width != side:
        gray = gray.resize((side, side), Image.Resampling.BOX)
    return laplacian_variance(np.asarray(gray))


def preprocess(
    data: bytes, resolution: int, *, min_size: int, blank_std: float, blur_threshold: float
) -> tuple[np.ndarray | None, str | None]:
    """Source file bytes -> ((resolution, resolution, 3) uint8 image, None) or (None, drop reason).

    Quality is judged on the square centre crop before resizing, so the thresholds do not depend on
    the target resolution.
    """
    try:
        img = to_rgb8(decode(data))
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return None, "undecodable"
    if min(img.size) < min_size:
        return None, "too_small"
    box = square_box(*img.size)
    crop = img.crop(box)
    if max(ImageStat.Stat(crop).stddev) < blank_std:  # every channel is (nearly) constant
        return None, "blank"
    if sharpness(crop) < blur_threshold:
        return None, "blurry"
    resized = img.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8), None


def decode_png_batch(batch: pa.Table, *, resolution: int, label_names: list[str]) -> dict[str, np.ndarray]:
    """Stored shard rows -> the training schema: (B, H, W, 3) uint8 at `resolution`, int64 labels."""
    images = np.stack([decode_png(png, resolution) for png in batch["image"].to_pylist()])
    return {"image": images, **{n: batch[n].to_numpy().astype(np.int64) for n in label_names}}
