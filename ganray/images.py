"""The one PNG codec: every PNG ganray writes (imported training images, generated faces, served
faces) is encoded here, so equal pixels always give equal bytes everywhere."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Fixed, so that equal pixels always give equal bytes; zlib level 1 encodes fast and the files
# are still ~2x smaller than raw pixels for faces.
PNG_COMPRESS_LEVEL = 1


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one (H, W, 3) uint8 image: fixed compression and no metadata."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes, resolution: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels of PNG (or any PIL-readable) bytes, the inverse of encode_png; with
    `resolution`, resized (antialiased) to a square of that side if stored at another size."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    if resolution is not None and rgb.size != (resolution, resolution):
        rgb = rgb.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)
