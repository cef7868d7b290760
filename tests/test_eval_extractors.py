"""Feature extractors: the TF-FID Inception's architecture and loading path (with a randomly
initialised network saved in the weights file's format), hash checks, resize modes, pixels."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ganray.config import ConfigError, EvalJob, ExtractorConfig, load_config
from ganray.eval import inception
from ganray.eval.extractors import ExtractorError, build_extractor, extractor_identity, resize_images


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    network = inception.FIDInceptionV3().eval()
    for module in network.modules():  # non-trivial BatchNorm statistics, so loading them is checked too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(network.state_dict(), path)  # the layout of pt_inception-2015-12-05-6726825d.pth
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), network


def images(n: int, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def test_state_dict_has_the_tf_fid_file_layout():
    state = inception.FIDInceptionV3().state_dict()
    expected_shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "fc.weight": (1008, 2048),
    }
    assert {k: tuple(state[k].shape) for k in expected_shapes} == expected_shapes
    assert not any(k.startswith("AuxLogits") for k in state)
    # torchvision's inception_v3 has 27,161,264 parameters; without its auxiliary head (3,326,696)
    # and with 1008 instead of 1000 classes (+8 * 2049): the TF-FID network.
    parameters = sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
    assert parameters == 27_161_264 - 3_326_696 + 8 * 2049


def test_tf_pooling_quirks():
    x = torch.ones(1, 1, 4, 4)
    # TF's average pool ignores padding: a constant stays constant at the borders.
    assert torch.equal(inception._tf_avg_pool(x), x)
    assert inception.FIDInceptionV3().Mixed_7c.max_pool and not inception.FIDInceptionV3().Mixed_7b.max_pool


def test_inception_loads_saved_weights_and_extracts(weights_file):
    path, sha, network = weights_file
    extractor = build_extractor(ExtractorConfig(name="inception_v3", weights=str(path), weights_sha256=sha,
                                                resize="legacy"))
    batch = images(1)
    out = extractor(batch)
    assert out["features"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
    with torch.inference_mode():  # the same numbers as the network that was saved
        x = resize_images(batch, 299, "legacy") / 127.5 - 1
        expected, _ = network(x)
        # IS logits: pool3 times the classifier weights, without the bias (the original IS code).
        logits = expected @ network.fc.weight.T
    np.testing.assert_allclose(out["features"], expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-4, atol=1e-5)
    assert not torch.equal(network.fc.bias, torch.zeros_like(network.fc.bias))  # so the bias would show
    assert extractor.identity == extractor_identity(extractor.cfg)
    assert extractor.identity["weights_sha256"] == sha


def test_only_the_published_weights_hash_is_comparable(weights_file, tmp_path, monkeypatch):
    """Weights that fit the network but are not the published file: custom, even under its file name."""
    path, sha, _ = weights_file
    named_like_published = tmp_path / inception.PUBLISHED_WEIGHTS_FILE
    named_like_published.write_bytes(path.read_bytes())
    custom = build_extractor(ExtractorConfig(name="inception_v3", weights=str(named_like_published),
                                             weights_sha256=sha)).identity
    assert custom["comparable_to_published"] is False
    assert custom["note"].startswith("inception_v3, custom weights") and "not comparable" in custom["note"]
    # The published digest, whatever the file is called, is comparable; torch.hub names it by its prefix.
    published = extractor_identity(ExtractorConfig(name="inception_v3", weights="/any/name.pth",
                                                   weights_sha256=inception.PUBLISHED_WEIGHTS_SHA256))
    assert published["comparable_to_published"] is True and "published weights" in published["note"]
    assert inception.PUBLISHED_WEIGHTS_SHA256[:8] in inception.PUBLISHED_WEIGHTS_FILE
    # The loaded file's hash is what decides: these same bytes, were they the published ones, are comparable.
    monkeypatch.setattr(inception, "PUBLISHED_WEIGHTS_SHA256", sha)
    assert build_extractor(ExtractorConfig(name="inception_v3", weights=str(path), weights_sha256=sha)
                           ).identity["comparable_to_published"] is True


def test_wrong_hash_missing_file_and_foreign_weights_are_clear_errors(weights_file, tmp_path):
    path, sha, _ = weights_file
    with pytest.raises(ExtractorError, match="have sha256 .* not the configured"):
        build_extractor(ExtractorConfig(name="inception_v3", weights=str(path), weights_sha256="0" * 64))
    with pytest.raises(ExtractorError, match="not found .* never downloads"):
        build_extractor(ExtractorConfig(name="inception_v3", weights=str(tmp_path / "nope.pth"),
                                        weights_sha256=sha))
    foreign = tmp_path / "foreign.pth"
    torch.save({"layer.weight": torch.zeros(2)}, foreign)
    with pytest.raises(ExtractorError, match="do not fit the TF-FID InceptionV3"):
        build_extractor(ExtractorConfig(name="inception_v3", weights=str(foreign),
                                        weights_sha256=hashlib.sha256(foreign.read_bytes()).hexdigest()))


def test_inception_config_requires_weights_and_hash():
    with pytest.raises(ConfigError, match="needs both weights"):
        load_config(EvalJob, None, ["eval.reference=r", "eval.model=v1", "eval.output=o.json",
                                    "eval.extractor.name=inception_v3", "eval.extractor.weights=/w.pth"])


def test_resize_modes():
    flat = np.full((1, 64, 64, 3), 200, dtype=np.uint8)
    for mode in ("clean", "legacy"):
        out = resize_images(flat, 16, mode)
        assert out.shape == (1, 3, 16, 16) and torch.allclose(out, torch.full_like(out, 200.0), atol=1e-3)
    # One bright column in four: antialiased bicubic averages it to a quarter grey; bilinear without
    # antialiasing samples between two dark columns and loses it (aliasing).
    stripes = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    stripes[:, :, ::4] = 255
    clean, legacy = resize_images(stripes, 16, "clean"), resize_images(stripes, 16, "legacy")
    inside = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the edge handling
    assert (clean[inside] - 63.75).abs().max() < 5 and (legacy[inside] - 63.75).abs().min() > 60


def test_pixel_extractor_is_labelled_not_comparable():
    extractor = build_extractor(ExtractorConfig(name="pixels", pixels_side=8))
    out = extractor(images(3))
    assert out["features"].shape == (3, 192) and 0 <= out["features"].min() and out["features"].max() <= 1
    assert extractor.identity["comparable_to_published"] is False and "not comparable" in extractor.identity["note"]
