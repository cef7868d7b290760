"""The contract every labeler keeps, and the table that picks one by name.

- `attributes`: the attributes it labels (known once built: a classifier's come from its registry
  entry). Values are the attribute's value *names* as strings, the same vocabulary the generator's
  conditions and the imported dataset's label columns use (e.g. gender "female"), so a label can be
  compared with the condition a face was asked for.
- `label(images, requested)`: images are uint8 RGB, shape [N, H, W, 3], any resolution (a labeler
  resizes to what it needs); `requested` holds, per image, the conditions it was rendered with
  (empty mappings for unconditional faces or real images). It returns, for every attribute in
  `attributes`, one value and one confidence in [0, 1] per image.
- Deterministic: the same images give the same labels, whatever the batch they arrive in, so that
  a bulk job's accept/reject decisions (and hence its bytes) do not depend on batching.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ganray.config import LabelerConfig

# name -> "module:class", imported on use so that optional dependencies (onnxruntime, ...) are only
# needed by the labeler that uses them.
LABELERS: dict[str, str] = {
    "conditions": "ganray.labels.conditions:ConditionsLabeler",
    "classifier": "ganray.labels.classifier:ClassifierLabeler",
    "age_and_gender": "ganray.labels.age_and_gender:AgeAndGenderLabeler",
}


class LabelerError(ValueError):
    """A labeler that cannot be built or cannot label these images; the message names the cause."""


@dataclass(frozen=True)
class AttributeLabels:
    """One attribute's labels for a batch: a value name and a confidence in [0, 1] per image."""

    values: tuple[str, ...]
    confidence: np.ndarray  # float32, shape [N]

    def __post_init__(self) -> None:
        if self.confidence.shape != (len(self.values),):
            raise ValueError(f"{len(self.values)} values but confidence of shape {self.confidence.shape}")


class Labeler(abc.ABC):
    """Says what each face shows. Subclasses are built as `Cls(cfg, registry_url)`."""

    attributes: tuple[str, ...]

    def __init__(self, cfg: LabelerConfig, registry_url: str | None = None) -> None:
        self.cfg = cfg
        self.registry_url = registry_url

    @abc.abstractmethod
    def label(self, images: np.ndarray, requested: Sequence[Mapping[str, str]]) -> dict[str, AttributeLabels]:
        """Labels for every attribute in `self.attributes`, one value and confidence per image."""


def build_labeler(cfg: LabelerConfig, registry_url: str | None = None) -> Labeler:
    """The labeler `cfg.name` names, built from its config (and the registry, for trained ones)."""
    target = LABELERS.get(cfg.name)
    if target is None:  # the config's Literal already refuses this; kept for direct callers
        raise LabelerError(f"unknown labeler {cfg.name!r}; known: {sorted(LABELERS)}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(cfg, registry_url)
