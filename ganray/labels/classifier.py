"""The `classifier` labeler: ganray's own attribute classifier, a labeler version from the registry.

`labeler.model` names the version (id or alias); it is resolved once, when the labeler is built, so
a moving alias never changes labels mid-job. Each attribute's value is the classifier's most
probable one, its confidence that softmax probability. Deterministic per image whatever the batch:
images run through the network in passes of one fixed size on one CPU thread
(ganray.labels.evaluate.predict_probabilities).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ganray.config import LabelerConfig
from ganray.labels.base import AttributeLabels, Labeler, LabelerError
from ganray.labels.evaluate import predict_probabilities
from ganray.registry import LabelerRegistry, RegistryError


class ClassifierLabeler(Labeler):
    def __init__(self, cfg: LabelerConfig, registry_url: str | None = None) -> None:
        super().__init__(cfg, registry_url)
        if not cfg.model:
            raise LabelerError("labeler.model: the classifier labeler needs a labeler version (id or alias) from "
                               "the registry; `ganray labeler train` makes one")
        try:
            loaded = LabelerRegistry(registry_url).load_classifier(cfg.model, device=cfg.device)
        except RegistryError as e:
            raise LabelerError(f"labeler.model: {e}") from None
        self.version = loaded.version
        self.content_hash = loaded.info.content_hash
        self.classifier = loaded.classifier
        self.values = loaded.info.attributes
        self.attributes = tuple(loaded.info.attributes)

    def label(self, images: np.ndarray, requested: Sequence[Mapping[str, str]]) -> dict[str, AttributeLabels]:
        if len(requested) != len(images):
            raise LabelerError(f"{len(images)} images but {len(requested)} requested-condition rows")
        try:
            probabilities = predict_probabilities(self.classifier, np.asarray(images))
        except ValueError as e:
            raise LabelerError(str(e)) from None
        out = {}
        for name in self.attributes:
            chosen = probabilities[name].argmax(axis=1)
            out[name] = AttributeLabels(
                values=tuple(self.values[name][i] for i in chosen),
                confidence=probabilities[name][np.arange(len(chosen)), chosen].astype(np.float32))
        return out
