"""Feature extractors, chosen by name (`eval.extractor.name`): uint8 images -> feature vectors.

Every extractor has an `identity`: the things its features depend on (name, weights hash, resize
mode, feature size). The identity keys the cached reference statistics and travels with every
result, together with `comparable_to_published`: only the TF-FID Inception with the published
weights (sha256 PUBLISHED_WEIGHTS_SHA256, whatever the file is called) gives numbers that may be set
beside published FIDs, and then only at equal sample counts and preprocessing. Any other weights file
that fits the network is reported as "inception_v3, custom weights", not comparable.

- `inception_v3`: the TF-FID InceptionV3 (ganray/eval/inception.py), pool3 features (2048) and
  its 1008 class logits (for IS). Weights come from `extractor.weights` (a path or an fsspec URL)
  and must match `extractor.weights_sha256`; ganray never downloads them.
- `pixels`: the image resized to `pixels_side`^2 and flattened (values 0..1). No network and no
  weights, so it runs anywhere (tests, the demo); a pixel-space distance, NOT comparable to
  published FID, and blind to much of what Inception features see.

- `classifier`: the encoder of ganray's own attribute classifier, a labeler version in the registry
  (`extractor.labeler`, `ganray labeler train`): its feature vector (`encode(x)`). Trained by ganray
  on the faces at hand, so it needs no outside weights; its numbers are NOT comparable to published
  FID (another network, another feature space) nor across labeler versions: the identity carries
  the version's content hash. Images are resized to the classifier's resolution as it was trained
  (PIL Lanczos); `resize` does not apply.

Resize modes (pixels and inception_v3): "clean" resizes each channel as float32 with PIL's bicubic filter,
which antialiases when shrinking, clipped to 0..255: clean-fid's "clean" resize. "legacy" is
`F.interpolate(mode="bilinear", align_corners=False)` without antialiasing on float pixels: the resize of
pytorch-fid's InceptionV3 (resize_input), and with its input scaling (x / 127.5 - 1 here, 2x - 1 on
0..1 there) its whole preprocessing; clean-fid's "legacy_pytorch" resizes the same way but scales by
(x - 128) / 128. Neither mode reproduces the TF1 bilinear resize inside the TF-FID graph (the original
TF-FID code, NVlabs' metrics, clean-fid's "legacy_tensorflow", torch-fidelity).
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ganray import storage
from ganray.config import ExtractorConfig
from ganray.eval import inception

PUBLISHED_NOTE = ("TF-FID InceptionV3 pool3 with the published weights ({file}), resize {resize}; compare only "
                  "with FIDs of equal sample counts and preprocessing: legacy is pytorch-fid's; the TF-FID code and "
                  "NVlabs' metrics resize inside the TF graph, which neither resize mode reproduces")
CUSTOM_WEIGHTS_NOTE = ("inception_v3, custom weights (sha256 {hash}..., not the published {file}): not comparable "
                       "to published FID; compare only results with these same weights")
COMPARABLE_NOTE = "not comparable to published FID: pixel-space features of ganray's offline extractor"
CLASSIFIER_NOTE = ("not comparable to published FID: features of ganray's own attribute classifier (labeler {version}, "
                   "content hash {hash}); compare only results with this same labeler version")


class ExtractorError(ValueError):
    """An extractor that cannot be built (missing or mismatching weights)."""


def resize_images(images: np.ndarray, side: int, mode: str) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, side, side) with values in [0, 255]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {images.dtype} {images.shape}")
    if mode == "clean":
        out = np.empty((images.shape[0], 3, side, side), dtype=np.float32)
        for i, image in enumerate(images):
            for c in range(3):
                channel = Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
                out[i, c] = np.asarray(channel.resize((side, side), Image.Resampling.BICUBIC))
        return torch.from_numpy(out.clip(0, 255))
    if mode == "legacy":
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
    raise ValueError(f"unknown resize mode {mode!r}: clean or legacy")


class PixelExtractor:
    has_logits = False

    def __init__(self, cfg: ExtractorConfig):
        self.cfg = cfg
        self.feature_dim = 3 * cfg.pixels_side ** 2
        self.identity = {"name": "pixels", "weights_sha256": None, "resize": cfg.resize,
                         "pixels_side": cfg.pixels_side, "feature_dim": self.feature_dim,
                         "comparable_to_published": False, "note": COMPARABLE_NOTE}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = resize_images(images, self.cfg.pixels_side, self.cfg.resize) / 255.0
        return {"features": x.reshape(len(images), -1).numpy().astype(np.float32)}


def read_inception_weights(url: str, sha256: str) -> dict[str, torch.Tensor]:
    """The TF-FID state dict at `url`, after checking its sha256; a clear ExtractorError otherwise."""
    try:
        data = storage.read_bytes(url)
    except (FileNotFoundError, IsADirectoryError):
        raise ExtractorError(
            f"Inception weights not found at {url}: ganray never downloads them; get "
            f"{inception.PUBLISHED_WEIGHTS_FILE} (pytorch-fid's FID weights) yourself and set "
            "eval.extractor.weights to its path or URL") from None
    actual = storage.sha256_hex(data)
    if actual != sha256:
        raise ExtractorError(f"Inception weights at {url} have sha256 {actual}, not the configured "
                             f"eval.extractor.weights_sha256 {sha256}: refusing to use them")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ExtractorError(f"Inception weights at {url} are not a torch state dict: {e}") from None
    if not isinstance(state, dict):
        raise ExtractorError(f"Inception weights at {url} are not a state dict (got {type(state).__name__})")
    return state


def build_inception(state: dict[str, torch.Tensor]) -> inception.FIDInceptionV3:
    network = inception.FIDInceptionV3()
    result = network.load_state_dict(state, strict=False)
    # BatchNorm's step counters are not part of every export of these weights; nothing else may be missing.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ExtractorError(f"the weights do not fit the TF-FID InceptionV3: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}")
    return network.eval()


def _inception_identity(cfg: ExtractorConfig) -> dict[str, Any]:
    # By the hash, never the file name: the file read is checked against cfg.weights_sha256 on load.
    published = cfg.weights_sha256 == inception.PUBLISHED_WEIGHTS_SHA256
    note = PUBLISHED_NOTE if published else CUSTOM_WEIGHTS_NOTE
    return {"name": "inception_v3", "weights_sha256": cfg.weights_sha256, "resize": cfg.resize,
            "feature_dim": inception.FEATURE_DIM, "comparable_to_published": published,
            "note": note.format(file=inception.PUBLISHED_WEIGHTS_FILE, resize=cfg.resize,
                                hash=(cfg.weights_sha256 or "")[:12])}


class InceptionExtractor:
    has_logits = True

    def __init__(self, cfg: ExtractorConfig):
        self.cfg = cfg
        self.feature_dim = inception.FEATURE_DIM
        self.device = torch.device(cfg.device)
        self.network = build_inception(read_inception_weights(cfg.weights, cfg.weights_sha256)).to(self.device)
        self.identity = _inception_identity(cfg)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = resize_images(images, inception.INPUT_SIZE, self.cfg.resize).to(self.device)
        with torch.inference_mode():
            features, logits = self.network(x / 127.5 - 1.0)  # [0, 255] -> [-1, 1], as the TF graph expects
        return {"features": features.cpu().numpy().astype(np.float32),
                "logits": logits.cpu().numpy().astype(np.float32)}


def _classifier_version(cfg: ExtractorConfig):
    from ganray.registry import LabelerRegistry, RegistryError

    try:
        registry = LabelerRegistry(cfg.labeler_registry)
        return registry, registry.show(cfg.labeler)
    except RegistryError as e:
        raise ExtractorError(f"eval.extractor.labeler: {e}") from None


def _classifier_identity(info: Any) -> dict[str, Any]:
    return {"name": "classifier", "labeler_version": info.version, "weights_sha256": info.content_hash,
            "resize": "lanczos", "resolution": info.resolution, "feature_dim": int(info.model["feature_dim"]),
            "comparable_to_published": False,
            "note": CLASSIFIER_NOTE.format(version=info.version, hash=info.content_hash[:12])}


class ClassifierExtractor:
    """The encoder of a labeler version (ganray.models.classifier.AttributeClassifier.encode)."""

    has_logits = False

    def __init__(self, cfg: ExtractorConfig):
        from ganray.labels.evaluate import to_input
        from ganray.registry import RegistryError

        registry, info = _classifier_version(cfg)
        try:
            # By version id, not the alias: the features of one job come from one version.
            self.classifier = registry.load_classifier(info.version, device=cfg.device).classifier
        except RegistryError as e:
            raise ExtractorError(f"eval.extractor.labeler: {e}") from None
        self.to_input = to_input
        self.device = torch.device(cfg.device)
        self.identity = _classifier_identity(info)
        self.feature_dim = self.identity["feature_dim"]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = self.to_input(images, self.classifier.resolution).to(self.device)
        with torch.inference_mode():
            features = self.classifier.encode(x)
        return {"features": features.float().cpu().numpy().astype(np.float32)}


EXTRACTORS = {"pixels": PixelExtractor, "inception_v3": InceptionExtractor, "classifier": ClassifierExtractor}


def build_extractor(cfg: ExtractorConfig) -> Any:
    return EXTRACTORS[cfg.name](cfg)


def extractor_identity(cfg: ExtractorConfig) -> dict[str, Any]:
    """The identity of the extractor `cfg` builds, without building it (no weights read)."""
    if cfg.name == "pixels":
        return PixelExtractor(cfg).identity
    if cfg.name == "classifier":  # reads the version's version.json and config.json, not its weights
        return _classifier_identity(_classifier_version(cfg)[1])
    return _inception_identity(cfg)
