"""The face-quality gate on real images: built-in faces that pass, noise and blank images that fail."""
from __future__ import annotations

import numpy as np
import pytest

from ganray.config import QualityGateConfig
from ganray.data.synthetic import render_face
from ganray.labels.quality import QualityGate


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.stack([render_face(i, 64)[0] for i in range(40)])


def test_built_in_faces_pass_noise_and_blank_images_fail_counted_by_reason(faces):
    gate = QualityGate(QualityGateConfig())
    verdicts = gate.check(faces)
    # The Haar cascade finds a face in about half of the built-in faces (docs/benchmarks.md: measured pass rates).
    assert 0.3 <= verdicts.passed.mean() <= 0.8
    assert set(verdicts.reasons) <= {None, "no_face", "low_contrast", "low_sharpness"}

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    blank = np.full((5, 64, 64, 3), 128, dtype=np.uint8)
    mixed = np.concatenate([faces[verdicts.passed][:5], noise, blank])
    result = gate.check(mixed)
    assert result.reasons[:5] == (None,) * 5  # the same faces pass in another batch
    assert result.reasons[5:25] == ("no_face",) * 20  # noise: no face found
    assert result.reasons[25:] == ("no_face",) * 5  # blank: nothing to find either

    scores_only = QualityGate(QualityGateConfig(detector="none"))
    result = scores_only.check(mixed)
    counts = {r: result.reasons.count(r) for r in set(result.reasons)}
    assert counts == {None: 25, "low_contrast": 5}  # noise has contrast and sharpness; blank has neither
    assert result.face_found.all()

    blurred = np.repeat(np.repeat(faces[:5, ::8, ::8], 8, axis=1), 8, axis=2)  # blocky: few sharp edges
    strict = QualityGate(QualityGateConfig(detector="none", min_sharpness=float(np.median(
        scores_only.check(faces).sharpness))))
    assert strict.check(blurred).reasons.count("low_sharpness") >= 1


def test_verdicts_do_not_depend_on_the_batch(faces):
    gate = QualityGate(QualityGateConfig())
    whole = gate.check(faces)
    parts = [gate.check(faces[i:i + 7]) for i in range(0, len(faces), 7)]
    assert whole.reasons == sum((p.reasons for p in parts), ())
    np.testing.assert_array_equal(whole.sharpness, np.concatenate([p.sharpness for p in parts]))
