"""DCGAN generator/discriminator: shapes, widths, conditioning, spectral norm, autocast, determinism."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ganray.config import DCGANConfig
from ganray.models import build_models, count_params
from ganray.models.dcgan import Discriminator, Generator

ATTRIBUTES = {"age": ["child", "adult", "senior"], "gender": ["female", "male"], "smile": ["no", "yes"]}
# Small widths keep 256x256 fast; the channel logic is the same as with the defaults.
SMALL = dict(z_dim=16, g_width=4, d_width=4, max_channels=32, embed_dim=4)


def labels_for(batch: int, names=tuple(ATTRIBUTES), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(len(ATTRIBUTES[n]), (batch,), generator=g) for n in names], dim=1)


def conv_channels(module: nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_output_shapes(resolution, conditional):
    cfg = DCGANConfig(conditional=conditional, **SMALL)
    G, D = build_models(cfg, resolution, ATTRIBUTES)
    labels = labels_for(2) if conditional else None
    images = G(torch.randn(2, cfg.z_dim), labels)
    assert images.shape == (2, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert D(images, labels).shape == (2,)
    # One block per doubling: G has 4x4 .. R/2 feature maps plus the RGB layer; D downsamples to 4x4.
    blocks = resolution.bit_length() - 3
    assert len(conv_channels(G)) == blocks + 1 and len(conv_channels(D)) == blocks
    assert G.resolution == resolution and G.z_dim == cfg.z_dim
    assert G.condition_names == (list(ATTRIBUTES) if conditional else [])


def test_default_widths_match_dcgan():
    G, D = build_models(DCGANConfig(), 64)
    assert conv_channels(G) == [512, 256, 128, 64, 3]
    assert conv_channels(D) == [64, 128, 256, 512]
    assert 3_000_000 < count_params(G) < 4_000_000 and 2_000_000 < count_params(D) < 3_000_000


def test_widths_and_channel_cap():
    cfg = DCGANConfig(g_width=8, d_width=6, max_channels=32)
    assert conv_channels(Generator(cfg, 128)) == [32, 32, 32, 16, 8, 3]
    assert conv_channels(Discriminator(cfg, 128)) == [6, 12, 24, 32, 32]


def test_bad_resolution_raises():
    with pytest.raises(ValueError, match="power of two"):
        Generator(DCGANConfig(**SMALL), 48)


def test_d_norm_choices_and_no_norm_on_first_block():
    kinds = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d, "layer": nn.GroupNorm}
    for d_norm, kind in kinds.items():
        D = Discriminator(DCGANConfig(d_norm=d_norm, **SMALL), 32)
        assert isinstance(D.features[1], nn.LeakyReLU)  # first block: conv -> LeakyReLU
        assert sum(isinstance(m, kind) for m in D.modules()) == 2  # blocks 2 and 3 of 3
    D = Discriminator(DCGANConfig(d_norm="none", **SMALL), 32)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) for m in D.modules())


def test_spectral_norm_on_every_d_weight_when_asked():
    cfg = DCGANConfig(spectral_norm=True, conditional=True, **SMALL)
    G, D = build_models(cfg, 32, ATTRIBUTES)
    weighted = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(weighted) == 3 + 1 + 3  # convs, head, one projection per attribute
    assert all(parametrize.is_parametrized(m, "weight") for m in weighted)
    assert not any(parametrize.is_parametrized(m) for m in G.modules())
    plain = Discriminator(DCGANConfig(**SMALL), 32)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())


def test_condition_on_selects_and_orders_attributes():
    cfg = DCGANConfig(conditional=True, condition_on=["smile", "age"], **SMALL)
    G = Generator(cfg, 32, ATTRIBUTES)
    assert G.condition_names == ["smile", "age"]
    assert G.condition_values == {"smile": ["no", "yes"], "age": ["child", "adult", "senior"]}
    assert G(torch.randn(2, 16), torch.tensor([[1, 2], [0, 0]])).shape == (2, 3, 32, 32)


def test_unknown_condition_name_or_missing_attributes_raise():
    with pytest.raises(ValueError, match="'hair'"):
        Generator(DCGANConfig(conditional=True, condition_on=["age", "hair"], **SMALL), 32, ATTRIBUTES)
    with pytest.raises(ValueError, match="no attributes"):
        Discriminator(DCGANConfig(conditional=True, **SMALL), 32, None)


def test_conditional_generator_uses_labels():
    G = Generator(DCGANConfig(conditional=True, **SMALL), 32, ATTRIBUTES).eval()
    z = torch.randn(1, 16).expand(3, 16)
    with torch.no_grad():
        images = G(z, torch.tensor([[0, 0, 0], [0, 0, 0], [2, 1, 1]]))
    assert torch.equal(images[0], images[1])
    assert not torch.allclose(images[0], images[2])


def test_discriminator_projection_head():
    D = Discriminator(DCGANConfig(conditional=True, **SMALL), 32, ATTRIBUTES).eval()
    images, labels = torch.randn(4, 3, 32, 32), labels_for(4)
    with torch.no_grad():
        phi = D.features(images).flatten(1)
        expected = D.head(phi).squeeze(1)
        for i, table in enumerate(D.projections):
            expected = expected + (table(labels[:, i]) * phi).sum(1)
        assert torch.allclose(D(images, labels), expected, atol=1e-6)
        assert not torch.allclose(D(images, labels), D(images, (labels + 1) % 2), atol=1e-6)


def test_bad_labels_raise():
    G, D = build_models(DCGANConfig(conditional=True, **SMALL), 32, ATTRIBUTES)
    z, images = torch.randn(2, 16), torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="labels .* required"):
        G(z)
    with pytest.raises(ValueError, match="shape"):
        D(images, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        G(z, torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        G(z, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="'gender'"):
        G(z, torch.tensor([[0, 2, 0], [0, 0, 0]]))  # gender has 2 values
    with pytest.raises(ValueError, match="'age'"):
        D(images, torch.tensor([[0, 0, 0], [-1, 0, 0]]))
    G_uncond = Generator(DCGANConfig(**SMALL), 32, ATTRIBUTES)
    with pytest.raises(ValueError, match="unconditional"):
        G_uncond(z, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("d_norm", ["batch", "instance", "layer", "none"])
def test_every_parameter_gets_a_gradient_in_g_and_d_steps(d_norm):
    """DDP with find_unused_parameters=False needs every parameter in each step's graph."""
    cfg = DCGANConfig(conditional=True, d_norm=d_norm, spectral_norm=d_norm == "none", **SMALL)
    G, D = build_models(cfg, 32, ATTRIBUTES)
    labels, real = labels_for(4), torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(torch.randn(4, 16), labels)
        g_step_loss = D(fake, labels).mean()
    g_step_loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in G.parameters())
    D.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d_step_loss = D(real, labels).mean() - D(fake.detach(), labels).mean()
    d_step_loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in D.parameters())


def test_bf16_autocast_forward():
    G, D = build_models(DCGANConfig(conditional=True, **SMALL), 64, ATTRIBUTES)
    labels = labels_for(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = G(torch.randn(3, 16), labels)
        logits = D(images, labels)
    assert images.dtype == torch.bfloat16 and images.shape == (3, 3, 64, 64)
    assert logits.dtype == torch.float32 and logits.isfinite().all()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_generator_is_batch_size_and_position_invariant(precision):
    """Face i of a generated dataset must not depend on how the seeds were batched: true of the
    network on one intra-op thread (with more, oneDNN may split batches of different sizes
    differently; ganray.models.face.render_faces therefore renders on one thread, see test_render)."""
    torch.manual_seed(0)  # this test's numbers must not depend on which tests ran before it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_batch_invariance(precision)
    finally:
        torch.set_num_threads(threads)


def _check_batch_invariance(precision):
    cfg = DCGANConfig(conditional=True, g_width=16, max_channels=128)
    G = Generator(cfg, 64, ATTRIBUTES)
    for bn in [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.momentum = None  # running statistics = exactly those of the next batch
    with torch.no_grad():
        G(torch.randn(64, cfg.z_dim), labels_for(64, seed=1))
        G.net[-2].weight.mul_(10)  # like a trained G, use the whole [-1, 1] range
    G.eval()
    z, labels = torch.randn(16, cfg.z_dim), labels_for(16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        batch_16 = to_uint8(G(z, labels))
        batch_7 = to_uint8(G(z[5:12], labels[5:12]))
        batch_1 = torch.cat([to_uint8(G(z[i:i + 1], labels[i:i + 1])) for i in range(16)])
    assert torch.equal(batch_16, batch_1)
    assert torch.equal(batch_16[5:12], batch_7)
    assert batch_16.float().std() > 50  # spread over the range: many rounding boundaries are crossed
