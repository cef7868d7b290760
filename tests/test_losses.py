"""GAN losses: sign conventions, exact values, and the WGAN-GP / R1 gradient penalties."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ganray.config import DCGANConfig
from ganray.models import LOSSES, get_loss, gradient_penalty, r1_penalty
from ganray.models.dcgan import Discriminator

ATTRIBUTES = {"age": ["child", "adult", "senior"], "smile": ["no", "yes"]}


@pytest.mark.parametrize("name", list(LOSSES))
def test_sign_convention(name):
    """D's loss falls as real logits rise and fake logits fall; G's loss falls as fake logits rise."""
    loss = get_loss(name)
    # Inside (-1, 1) so that the hinge is not flat.
    real = (torch.rand(8) - 0.5).requires_grad_(True)
    fake = (torch.rand(8) - 0.5).requires_grad_(True)
    loss.d_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake.grad = None
    loss.g_loss(fake).backward()
    assert (fake.grad < 0).all()


def test_values_at_zero_logits():
    zeros = torch.zeros(5)
    for name in ("minimax", "non_saturating"):
        assert get_loss(name).d_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert get_loss("minimax").g_loss(zeros).item() == pytest.approx(-math.log(2))
    assert get_loss("non_saturating").g_loss(zeros).item() == pytest.approx(math.log(2))
    assert get_loss("hinge").d_loss(zeros, zeros).item() == pytest.approx(2.0)
    assert get_loss("hinge").g_loss(zeros).item() == 0


def test_wgan_and_hinge_values():
    real, fake = torch.randn(16), torch.randn(16)
    wgan = get_loss("wgan_gp")
    assert wgan.uses_gradient_penalty
    assert torch.allclose(wgan.d_loss(real, fake), fake.mean() - real.mean())
    assert torch.allclose(wgan.g_loss(fake), -fake.mean())
    # Hinge: D is satisfied (zero loss) once real >= 1 and fake <= -1.
    assert get_loss("hinge").d_loss(torch.full((4,), 1.5), torch.full((4,), -2.0)).item() == 0


def test_bce_losses_are_exact_for_large_logits():
    big = torch.full((4,), 200.0)
    assert get_loss("non_saturating").d_loss(big, -big).item() == 0
    assert get_loss("non_saturating").g_loss(-big).item() == pytest.approx(200.0)


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="'lsgan'"):
        get_loss("lsgan")


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, images, labels=None):
        return (images.flatten(1) * self.weight).sum(1)


def unit_weight(shape=(3, 8, 8)) -> torch.Tensor:
    w = torch.randn(*shape).flatten()
    return w / w.norm()


def test_gradient_penalty_zero_for_unit_gradient_and_positive_otherwise():
    real, fake = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    w = unit_weight()
    assert gradient_penalty(LinearCritic(w), real, fake).item() == pytest.approx(0, abs=1e-10)
    # ||grad|| = 3 everywhere -> (3 - 1)^2 = 4.
    critic = LinearCritic(3 * w)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx(4.0, rel=1e-5)
    penalty.backward()  # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    assert torch.allclose(critic.weight.grad, 2 * 2 * w, atol=1e-5)


def test_r1_matches_analytic_value_for_linear_critic():
    w = 0.7 * unit_weight()
    real = torch.randn(5, 3, 8, 8)
    critic = LinearCritic(w)
    penalty = r1_penalty(critic, real)
    assert penalty.item() == pytest.approx(0.49, rel=1e-5)
    penalty.backward()  # d/dw ||w||^2 = 2w
    assert torch.allclose(critic.weight.grad, 2 * w, atol=1e-6)


@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("d_norm", ["batch", "instance", "layer", "none"])
def test_penalties_train_a_real_discriminator(d_norm, spectral_norm):
    """Double backward through every D variant (norm layers, spectral norm, projection head)."""
    cfg = DCGANConfig(conditional=True, d_norm=d_norm, spectral_norm=spectral_norm,
                      d_width=8, max_channels=32)
    D = Discriminator(cfg, 32, ATTRIBUTES)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.tensor([[0, 1], [1, 0], [2, 1], [1, 1]])
    for penalty in (gradient_penalty(D, real, fake, labels), r1_penalty(D, real, labels)):
        assert penalty.ndim == 0 and penalty.isfinite() and penalty > 0
        D.zero_grad(set_to_none=True)
        penalty.backward()
        grads = [p.grad for p in D.parameters() if p.grad is not None]
        assert grads and all(g.isfinite().all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_penalties_under_bf16_autocast():
    D = Discriminator(DCGANConfig(d_width=8, max_channels=32), 32)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalties = [gradient_penalty(D, real, fake), r1_penalty(D, real)]
    for penalty in penalties:
        assert penalty.dtype == torch.float32 and penalty.isfinite()
        penalty.backward()
