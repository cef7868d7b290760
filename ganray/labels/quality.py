"""The face-quality gate: is there a face, and is the image good enough to keep?

Per image, on its grey levels (ITU-R 601 luma, 0-255) at the image's own resolution:

- contrast  = standard deviation of the grey levels (a blank or washed-out image has little);
- sharpness = variance of the 4-neighbour Laplacian of the grey levels (a blurred one has little);
- face      = OpenCV's frontal-face Haar cascade (alt2, shipped inside opencv-python-headless 4.x)
  finds at least one face of at least a quarter of the side, on the image resized to `haar_side`
  and histogram-equalised. Switchable (`detector: none`): Haar cascades miss many tight face
  crops (docs/benchmarks.md gives the pass rates measured on the built-in faces and on UTKFace).

A face fails on the first of no_face, low_contrast, low_sharpness (in that order, the reason it is
counted under). Every step is a function of one image alone, so verdicts never depend on batching.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganray.config import QualityGateConfig

REJECT_REASONS = ("no_face", "low_contrast", "low_sharpness")
HAAR_CASCADE = "haarcascade_frontalface_alt2.xml"
HAAR_SCALE_FACTOR = 1.05  # step between detection window sizes (finer than OpenCV's 1.1: small faces)


@dataclass(frozen=True)
class QualityVerdicts:
    contrast: np.ndarray  # float32 [N]
    sharpness: np.ndarray  # float32 [N]
    face_found: np.ndarray  # bool [N] (all True when the detector is off)
    reasons: tuple[str | None, ...]  # None: passed

    @property
    def passed(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], dtype=bool)


def grey_levels(images: np.ndarray) -> np.ndarray:
    """float64 [N, H, W] luma of uint8 RGB images [N, H, W, 3]."""
    rgb = images.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def contrast_scores(grey: np.ndarray) -> np.ndarray:
    return grey.reshape(len(grey), -1).std(axis=1).astype(np.float32)


def sharpness_scores(grey: np.ndarray) -> np.ndarray:
    lap = (grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
           - 4 * grey[:, 1:-1, 1:-1])
    return lap.reshape(len(grey), -1).var(axis=1).astype(np.float32)


class QualityGate:
    def __init__(self, cfg: QualityGateConfig):
        self.cfg = cfg
        self._cascade = None
        if cfg.detector == "haar":
            try:
                import cv2
            except ImportError:
                raise ValueError("quality.detector 'haar' needs opencv-python-headless 4.x (pip install "
                                 "'opencv-python-headless>=4.10,<5'), or set quality.detector: none") from None
            path = cv2.data.haarcascades + HAAR_CASCADE
            self._cascade = cv2.CascadeClassifier(path)
            if self._cascade.empty():  # OpenCV 5.x wheels ship no cascades
                raise ValueError(f"quality.detector 'haar': OpenCV {cv2.__version__} has no {HAAR_CASCADE} "
                                 "(it ships in opencv-python-headless 4.x), or set quality.detector: none")

    def _face_found(self, grey: np.ndarray) -> bool:
        import cv2

        side = self.cfg.haar_side
        small = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        resized = cv2.equalizeHist(cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR))
        faces = self._cascade.detectMultiScale(resized, scaleFactor=HAAR_SCALE_FACTOR,
                                               minNeighbors=self.cfg.haar_min_neighbors,
                                               minSize=(side // 4, side // 4))
        return len(faces) > 0

    def check(self, images: np.ndarray) -> QualityVerdicts:
        """Verdicts for uint8 RGB images [N, H, W, 3]."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape [N, H, W, 3], got {images.dtype} {images.shape}")
        grey = grey_levels(images)
        contrast, sharpness = contrast_scores(grey), sharpness_scores(grey)
        found = (np.array([self._face_found(g) for g in grey], dtype=bool) if self._cascade is not None
                 else np.ones(len(images), dtype=bool))
        reasons = tuple("no_face" if not f else "low_contrast" if c < self.cfg.min_contrast
                        else "low_sharpness" if s < self.cfg.min_sharpness else None
                        for f, c, s in zip(found, contrast, sharpness))
        return QualityVerdicts(contrast, sharpness, found, reasons)
