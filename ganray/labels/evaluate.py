"""Running a trained attribute classifier on images, and its held-out report.

`predict` is the one definition of "what the classifier says about this image", used by the
held-out evaluation and by the `classifier` labeler: the image is resized to the classifier's
resolution with PIL's Lanczos filter (as imports and `decode_png` resize), scaled to [-1, 1], and
run through the network in float32 on the calling thread in passes of exactly PREDICT_BATCH images
(the last one padded with blank images). Conv kernels pick batch-size-dependent code paths, so every
pass has the one shape: an image's probabilities are then the same bits whatever batch, position or
neighbours it arrives with (see docs/CONTRACTS.md).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ganray.labels.calibration import calibration_report
from ganray.labels.dataset import HELDOUT_RULE
from ganray.models.face import one_cpu_thread

PREDICT_BATCH = 32  # images per forward pass; changing it changes the last bits of the probabilities


def to_input(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) at any size -> float32 (B, 3, R, R) in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1:3] != (resolution, resolution):
        images = np.stack([np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS))
                           for image in images])
    return torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2).div_(127.5).sub_(1.0).contiguous()


def predict_probabilities(classifier: torch.nn.Module, images: np.ndarray) -> dict[str, np.ndarray]:
    """{attribute: float32 (N, number of values)} softmax probabilities, in passes of PREDICT_BATCH (see above)."""
    device = next(classifier.parameters()).device
    x = to_input(images, classifier.resolution)
    out: dict[str, list[np.ndarray]] = {name: [] for name in classifier.attribute_names}
    with torch.inference_mode(), one_cpu_thread(device):
        for start in range(0, len(x), PREDICT_BATCH):
            batch = x[start:start + PREDICT_BATCH]
            rows = len(batch)
            if rows < PREDICT_BATCH:
                batch = torch.cat([batch, batch.new_zeros(PREDICT_BATCH - rows, *batch.shape[1:])])
            for name, values in classifier(batch.to(device)).items():
                out[name].append(torch.softmax(values.float(), dim=1)[:rows].cpu().numpy())
    width = {name: len(values) for name, values in classifier.attribute_values.items()}
    return {name: (np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, width[name]), np.float32))
            for name, parts in out.items()}


def heldout_report(classifier: torch.nn.Module, heldout: dict[str, np.ndarray], fraction: float,
                   dataset_manifest_hash: str, validation: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Accuracy per attribute and per class, and confusion matrices (rows: true value, columns:
    predicted), on the held-out images; with each attribute's calibration (ganray.labels.calibration:
    a temperature fitted on `validation`, ECE before and after, precision against confidence)."""
    probabilities = predict_probabilities(classifier, heldout["image"])
    validation_p = predict_probabilities(classifier, validation["image"]) if validation is not None else None
    report: dict[str, Any] = {"rule": HELDOUT_RULE, "fraction": fraction, "images": int(len(heldout["image"])),
                              "dataset_manifest_hash": dataset_manifest_hash, "attributes": {}}
    for name, values in classifier.attribute_values.items():
        truth = np.asarray(heldout[name], dtype=np.int64)
        predicted = probabilities[name].argmax(axis=1)
        confusion = np.zeros((len(values), len(values)), dtype=np.int64)
        np.add.at(confusion, (truth, predicted), 1)
        per_class = {value: {"count": int(confusion[i].sum()),
                             "accuracy": float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None}
                     for i, value in enumerate(values)}
        recalls = [r["accuracy"] for r in per_class.values() if r["accuracy"] is not None]
        val = (validation_p[name], np.asarray(validation[name], np.int64)) if validation_p is not None else None
        report["attributes"][name] = {
            "accuracy": float((predicted == truth).mean()),
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "min_class_recall": float(min(recalls)) if recalls else None,
            "majority_class_accuracy": float(confusion.sum(axis=1).max() / max(len(truth), 1)),
            "per_class": per_class,
            "confusion": {"values": list(values), "rows": "true value", "columns": "predicted value",
                          "matrix": confusion.tolist()},
            "calibration": calibration_report(values, val, (probabilities[name], truth)),
        }
    return report
