"""GAN losses as small functions of D's logits, plus the two gradient penalties.

Sign convention, everywhere: D's logit is a "realness" score. D wants it high on real images and low
on generated ones; G wants it high on generated ones. Every function returns a scalar that the
corresponding optimiser *minimises*. With r = real logits, f = fake logits, means over the batch:

    loss            d_loss(r, f)                      g_loss(f)
    minimax         softplus(-r) + softplus(f)        -softplus(f)   = log(1 - sigmoid(f))
    non_saturating  softplus(-r) + softplus(f)        softplus(-f)   = -log sigmoid(f)
    wgan_gp         f - r   (+ gp_lambda * gradient_penalty, added by the caller)      -f
    hinge           relu(1 - r) + relu(1 + f)         -f

softplus(-r) + softplus(f) is the binary cross-entropy of sigmoid(logit) against real=1 / fake=0,
written so that it is exact for large |logit|.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bce_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log sigmoid(r) - log(1 - sigmoid(f)): the D loss of both minimax and non-saturating GANs."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def minimax_g_loss(fake_logits: Tensor) -> Tensor:
    """log(1 - sigmoid(f)): Goodfellow's original objective; its gradient vanishes when D wins."""
    return -F.softplus(fake_logits).mean()


def non_saturating_g_loss(fake_logits: Tensor) -> Tensor:
    """-log sigmoid(f): same fixed point as minimax, but strong gradients when D rejects G's images."""
    return F.softplus(-fake_logits).mean()


def wgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """mean(f) - mean(r): minus the critic's estimate of the Wasserstein distance."""
    return fake_logits.mean() - real_logits.mean()


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """relu(1 - r) + relu(1 + f): D stops pushing once r >= 1 and f <= -1."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def critic_g_loss(fake_logits: Tensor) -> Tensor:
    """-mean(f): the G loss of WGAN and hinge GANs."""
    return -fake_logits.mean()


@dataclass(frozen=True)
class GANLoss:
    name: str
    d_loss: Callable[[Tensor, Tensor], Tensor]  # (real_logits, fake_logits) -> scalar, D minimises
    g_loss: Callable[[Tensor], Tensor]  # fake_logits -> scalar, G minimises
    uses_gradient_penalty: bool = False  # the caller adds gp_lambda * gradient_penalty(...) to d_loss


LOSSES: dict[str, GANLoss] = {
    "minimax": GANLoss("minimax", bce_d_loss, minimax_g_loss),
    "non_saturating": GANLoss("non_saturating", bce_d_loss, non_saturating_g_loss),
    "wgan_gp": GANLoss("wgan_gp", wgan_d_loss, critic_g_loss, uses_gradient_penalty=True),
    "hinge": GANLoss("hinge", hinge_d_loss, critic_g_loss),
}


def get_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
    return LOSSES[name]


def _input_gradients(D: nn.Module, images: Tensor, labels: Tensor | None) -> Tensor:
    """d sum(D(images)) / d images, flattened to (B, -1), kept in the graph so a penalty on it trains D."""
    images = images.detach().requires_grad_(True)
    logits = D(images, labels)
    # Each logit depends on its own image only (up to BatchNorm's batch statistics in train mode), so
    # the gradient of the sum holds each sample's own input gradient.
    (grad,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
    return grad.flatten(1).float()


def gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over x_hat of (||grad_x D(x_hat)|| - 1)^2.

    x_hat are random points on the lines between real and fake images (one uniform mix per sample),
    with the real images' labels. The caller scales it by gp_lambda and adds it to D's loss.
    """
    mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    interpolates = mix * real.detach() + (1 - mix) * fake.detach()
    grad = _input_gradients(D, interpolates, labels)
    return (grad.norm(dim=1) - 1).square().mean()


def r1_penalty(D: nn.Module, real: Tensor, labels: Tensor | None = None) -> Tensor:
    """R1 (Mescheder et al. 2018): mean over real x of ||grad_x D(x)||^2. The caller scales it by gamma/2."""
    return _input_gradients(D, real, labels).square().sum(dim=1).mean()
