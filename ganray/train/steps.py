"""One discriminator update and one generator update.

Shared by the Ray Train loop (where G and D are DDP-wrapped) and the plain single-process PyTorch
loop of benchmarks/train_throughput.py, so that both time exactly the same arithmetic.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ganray.config import TrainConfig
from ganray.models.losses import get_loss, gradient_penalty, r1_penalty

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G; buffers (BatchNorm statistics) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


@dataclass
class DStepResult:
    loss: Tensor
    real_logits: Tensor
    fake_logits: Tensor


class GANSteps:
    """Optimizers, grad scalers and the two update rules for a (G, D) pair."""

    def __init__(self, G: nn.Module, D: nn.Module, G_ema: nn.Module, cfg: TrainConfig, z_dim: int,
                 device: torch.device):
        self.G, self.D, self.G_ema, self.cfg, self.z_dim, self.device = G, D, G_ema, cfg, z_dim, device
        self.opt_G = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas)
        self.opt_D = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=cfg.betas)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 do not need it.
        self.scaler_G = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.scaler_D = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.loss = get_loss(cfg.loss)
        self.autocast_dtype = AUTOCAST_DTYPES[cfg.precision]

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def discriminator_step(self, real: Tensor, labels: Tensor | None) -> DStepResult:
        cfg = self.cfg
        z = torch.randn(real.shape[0], self.z_dim, device=self.device)
        # G only makes inputs here: call it past DDP, which would sync its buffers for nothing.
        with torch.no_grad(), self.autocast():
            fake = unwrap(self.G)(z, labels).float()
        with self.autocast():
            real_logits = self.D(real, labels).float()
            fake_logits = self.D(fake, labels).float()
        loss = self.loss.d_loss(real_logits, fake_logits)
        # Penalties run in fp32: their double backward is where low precision hurts.
        if self.loss.uses_gradient_penalty and cfg.gp_lambda > 0:
            loss = loss + cfg.gp_lambda * gradient_penalty(self.D, real, fake, labels)
        if cfg.r1_gamma > 0:
            loss = loss + (cfg.r1_gamma / 2) * r1_penalty(self.D, real, labels)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler_D.scale(loss).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        return DStepResult(loss.detach(), real_logits.detach(), fake_logits.detach())

    def generator_step(self, batch_size: int, labels: Tensor | None, step: int) -> Tensor:
        """Fakes for `labels` (the last real batch's, so G sees the data's attribute mix)."""
        z = torch.randn(batch_size, self.z_dim, device=self.device)
        # D is a fixed function in this step: with its weights frozen and DDP bypassed, backward
        # computes no weight gradients for D and all-reduces none (StyleGAN's requires_grad toggle).
        D = unwrap(self.D).requires_grad_(False)
        try:
            with self.autocast():
                fake_logits = D(self.G(z, labels), labels).float()
            loss = self.loss.g_loss(fake_logits)
        finally:
            D.requires_grad_(True)
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler_G.scale(loss).backward()
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        update_ema(self.G_ema, unwrap(self.G), self.ema_beta(step))
        return loss.detach()

    def ema_beta(self, step: int) -> float:
        """The EMA decay at G step `step` (0-based), with the optional warm-up."""
        if not self.cfg.ema_warmup:
            return self.cfg.ema_beta
        return min(self.cfg.ema_beta, (1 + step) / (10 + step))

    def optimizer_state(self) -> dict:
        return {"opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "scaler": {"G": self.scaler_G.state_dict(), "D": self.scaler_D.state_dict()}}

    def load_optimizer_state(self, state: dict) -> None:
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        for scaler, saved in ((self.scaler_G, state["scaler"]["G"]), (self.scaler_D, state["scaler"]["D"])):
            # A run may switch train.precision between bf16 and fp16 on resume. A bf16/fp32 run's
            # scaler was disabled and saved an empty state: an fp16 run then starts loss scaling
            # afresh (GradScaler's initial scale), as it would at step 0. A disabled scaler ignores
            # the state of an fp16 run's scaler (load_state_dict is a no-op when disabled).
            if saved:
                scaler.load_state_dict(saved)
