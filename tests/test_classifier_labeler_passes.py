"""The `classifier` labeler runs its network on batches (passes of PREDICT_BATCH images), not one
image per forward pass, and still gives every image the same bits in any batch. No Ray: an untrained
classifier pushed to a registry in a temporary folder."""
from __future__ import annotations

import numpy as np
import torch

from ganray.config import ClassifierModelConfig, LabelerConfig
from ganray.labels import build_labeler
from ganray.labels.evaluate import PREDICT_BATCH, to_input
from ganray.models.classifier import build_classifier
from ganray.registry import LabelerRegistry

ATTRIBUTES = {"smile": ["no", "yes"], "age_group": ["young", "adult", "senior"]}
RES = 32


def _labeler(tmp_path):
    torch.manual_seed(0)
    model = ClassifierModelConfig(width=8, max_channels=32, feature_dim=16)
    classifier = build_classifier(model, RES, ATTRIBUTES)
    LabelerRegistry(str(tmp_path)).push(classifier.state_dict(), model.model_dump(), RES, ATTRIBUTES,
                                        provenance={}, heldout={})
    return build_labeler(LabelerConfig(name="classifier", model="v1"), str(tmp_path))


def test_the_classifier_labeler_runs_one_forward_pass_per_batch_and_labels_each_image_as_alone(tmp_path):
    labeler = _labeler(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (PREDICT_BATCH + 13, RES, RES, 3), dtype=np.uint8)
    passes = []
    hook = labeler.classifier.register_forward_hook(lambda module, inputs, out: passes.append(len(inputs[0])))
    try:
        whole = labeler.label(images, [{}] * len(images))
    finally:
        hook.remove()
    assert passes == [PREDICT_BATCH, PREDICT_BATCH]  # not one pass per image

    # Every image gets the same bits in any batch, at any position...
    parts = [labeler.label(images[a:b], [{}] * (b - a)) for a, b in ((0, 1), (1, 20), (20, len(images)))]
    for name in ATTRIBUTES:
        assert whole[name].values == sum((p[name].values for p in parts), ())
        assert whole[name].confidence.tobytes() == np.concatenate([p[name].confidence for p in parts]).tobytes()
    # ...and the labels the network gives it alone (confidences equal up to float rounding).
    with torch.inference_mode():
        alone = [labeler.classifier(to_input(images[i:i + 1], RES)) for i in range(len(images))]
    for name, values in ATTRIBUTES.items():
        probabilities = torch.cat([torch.softmax(a[name], dim=1) for a in alone]).numpy()
        assert whole[name].values == tuple(values[i] for i in probabilities.argmax(axis=1))
        np.testing.assert_allclose(whole[name].confidence, probabilities.max(axis=1), atol=1e-6)
