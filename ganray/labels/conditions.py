"""The `conditions` labeler: a face shows what its conditional generator was asked for.

No check at all: every requested condition becomes the label, with confidence 1.0. It labels the
attributes the images were rendered with (`requested`), so it knows them only per batch: a job
that uses it takes its attributes from the model (`attributes` is empty here). For unconditional
faces or real images it has nothing to say.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ganray.labels.base import AttributeLabels, Labeler, LabelerError


class ConditionsLabeler(Labeler):
    attributes: tuple[str, ...] = ()  # whatever the generator conditions on

    def label(self, images: np.ndarray, requested: Sequence[Mapping[str, str]]) -> dict[str, AttributeLabels]:
        if len(requested) != len(images):
            raise LabelerError(f"{len(images)} images but {len(requested)} requested-condition rows")
        names = sorted({name for row in requested for name in row})
        out = {}
        for name in names:
            missing = sum(name not in row for row in requested)
            if missing:
                raise LabelerError(f"attribute {name!r} was requested for some faces of the batch but not for "
                                   f"{missing}: the conditions labeler needs the same attributes on every face")
            out[name] = AttributeLabels(values=tuple(str(row[name]) for row in requested),
                                        confidence=np.ones(len(requested), dtype=np.float32))
        return out
