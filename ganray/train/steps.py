"""One discriminator update and one generator update, with their lazy regularizers.

Regularization follows StyleGAN2-ADA. R1 runs in every D step's loss (`r1_interval` 1) or lazily: a
separate D update every `r1_interval` minibatches whose loss is the R1 term times the interval.
Path-length regularization (`pl_weight` > 0, generators with `map` and `synthesis`: StyleGAN2) is
a separate G update every `pl_interval` G steps. For a lazily regularized network Adam's lr and
betas are adjusted by c = interval / (interval + 1) (lr * c, beta ** c): its optimizer takes
interval + 1 steps per interval minibatches. D sees real and fake images through `augment`
(ADA, ganray.train.augment) when `train.augment` names a pipeline.

Shared by the Ray Train loop (where G and D are DDP-wrapped) and the plain single-process PyTorch
loop of benchmarks/train_throughput.py, so that both time exactly the same arithmetic.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ganray.config import TrainConfig
from ganray.models.face import resolve_precision
from ganray.models.losses import get_loss, gradient_penalty, r1_penalty
from ganray.train.augment import AdaptiveAugment

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


def lazy_adam(params, lr: float, betas: tuple[float, float], interval: int | None) -> torch.optim.Adam:
    """Adam for a network regularized every `interval` minibatches in a separate step (None: not lazily)."""
    c = 1.0 if interval is None else interval / (interval + 1)
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c))


def all_reduce_mean_(tensors: list[Tensor]) -> None:
    """Average same-dtype tensors over the ranks in place, in one collective (no-op when not distributed)."""
    if not (tensors and dist.is_available() and dist.is_initialized()):
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


@dataclass
class DStepResult:
    loss: Tensor
    real_logits: Tensor
    fake_logits: Tensor
    r1: Tensor | None = None  # the R1 penalty, when this minibatch ran it


class GANSteps:
    """Optimizers, grad scalers and the two update rules for a (G, D) pair."""

    def __init__(self, G: nn.Module, D: nn.Module, G_ema: nn.Module, cfg: TrainConfig, z_dim: int,
                 device: torch.device):
        self.G, self.D, self.G_ema, self.cfg, self.z_dim, self.device = G, D, G_ema, cfg, z_dim, device
        self.lazy_r1 = cfg.r1_gamma > 0 and cfg.r1_interval > 1
        self.path_length = cfg.pl_weight > 0
        if self.path_length and not all(hasattr(unwrap(G), a) for a in ("map", "synthesis")):
            raise ValueError("train.pl_weight > 0 needs a generator with a mapping network (model.arch: stylegan2)")
        lazy_pl = self.path_length and cfg.pl_interval > 1
        self.opt_G = lazy_adam(G.parameters(), cfg.g_lr, cfg.betas, cfg.pl_interval if lazy_pl else None)
        self.opt_D = lazy_adam(D.parameters(), cfg.d_lr, cfg.betas, cfg.r1_interval if self.lazy_r1 else None)
        self.augment = AdaptiveAugment(cfg.augment, cfg.augment_p, cfg.ada_target, cfg.ada_interval, cfg.ada_kimg,
                                       cfg.batch_size, device)
        self.pl_mean = torch.zeros((), device=device)  # running mean of path lengths (same on every rank)
        # "auto" is resolved here, on the worker's own device (a CPU without native bf16: fp32).
        self.precision = resolve_precision(cfg.precision, device)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 do not need it.
        self.scaler_G = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.scaler_D = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.loss = get_loss(cfg.loss)
        self.autocast_dtype = AUTOCAST_DTYPES[self.precision]

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def discriminator_step(self, real: Tensor, labels: Tensor | None, d_index: int = 0) -> DStepResult:
        """D update on minibatch `d_index` (0-based count of D minibatches, which schedules lazy R1 and ADA)."""
        cfg = self.cfg
        z = torch.randn(real.shape[0], self.z_dim, device=self.device)
        # G only makes inputs here: call it past DDP, which would sync its buffers for nothing.
        with torch.no_grad(), self.autocast():
            fake = unwrap(self.G)(z, labels).float()
        with self.autocast():
            real_logits = self.D(self.augment(real), labels).float()
            fake_logits = self.D(self.augment(fake), labels).float()
        self.augment.accumulate(real_logits)
        loss = self.loss.d_loss(real_logits, fake_logits)
        # Penalties run in fp32: their double backward is where low precision hurts.
        if self.loss.uses_gradient_penalty and cfg.gp_lambda > 0:
            loss = loss + cfg.gp_lambda * gradient_penalty(self.D, real, fake, labels)
        r1 = None
        if cfg.r1_gamma > 0 and not self.lazy_r1:
            r1 = self.r1(real, labels)
            loss = loss + (cfg.r1_gamma / 2) * r1
        self._step(self.opt_D, self.scaler_D, loss)
        if self.lazy_r1 and d_index % cfg.r1_interval == 0:
            # Past DDP, which insists that every parameter gets a gradient (D's output bias gets
            # none from R1); the gradients are averaged over the ranks by hand instead.
            r1 = self.r1(real, labels, unwrap(self.D))
            self._step(self.opt_D, self.scaler_D, (cfg.r1_gamma / 2) * r1 * cfg.r1_interval,
                       average_grads_of=unwrap(self.D))
        self.augment.end_minibatch(d_index, self.device)
        return DStepResult(loss.detach(), real_logits.detach(), fake_logits.detach(),
                           None if r1 is None else r1.detach())

    def r1(self, real: Tensor, labels: Tensor | None, D: nn.Module | None = None) -> Tensor:
        """R1 on the reals as D sees them (augmented), with the gradient taken w.r.t. the reals."""
        D = self.D if D is None else D
        return r1_penalty(lambda images, lab: D(self.augment(images), lab), real, labels)

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: Tensor,
              average_grads_of: nn.Module | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if average_grads_of is not None:  # a step taken past DDP
            all_reduce_mean_([p.grad for p in average_grads_of.parameters() if p.grad is not None])
        scaler.step(optimizer)
        scaler.update()

    def generator_step(self, batch_size: int, labels: Tensor | None, step: int) -> Tensor:
        """Fakes for `labels` (the last real batch's, so G sees the data's attribute mix)."""
        z = torch.randn(batch_size, self.z_dim, device=self.device)
        # D is a fixed function in this step: with its weights frozen and DDP bypassed, backward
        # computes no weight gradients for D and all-reduces none (StyleGAN's requires_grad toggle).
        D = unwrap(self.D).requires_grad_(False)
        try:
            with self.autocast():
                fake_logits = D(self.augment(self.G(z, labels)), labels).float()
            loss = self.loss.g_loss(fake_logits)
        finally:
            D.requires_grad_(True)
        self._step(self.opt_G, self.scaler_G, loss)
        if self.path_length and step % self.cfg.pl_interval == 0:
            self.path_length_step(batch_size, labels)
        update_ema(self.G_ema, unwrap(self.G), self.ema_beta(step))
        return loss.detach()

    def path_length_step(self, batch_size: int, labels: Tensor | None) -> Tensor:
        """A G update on pl_weight * pl_interval * (|J_w^T y| - pl_mean)^2 (StyleGAN2's path-length
        regularizer) over batch_size // pl_batch_shrink latents; y is image-sized unit noise.

        It calls G's mapping and synthesis directly, past DDP, so it averages the gradients over the
        ranks itself; pl_mean follows the mean path length over all ranks, so it is the same everywhere.
        Runs in fp32, like the other penalties (double backward), without style mixing (NVlabs mix
        here too). Returns the penalty.
        """
        cfg = self.cfg
        G = unwrap(self.G)
        n = max(batch_size // cfg.pl_batch_shrink, 1)
        z = torch.randn(n, self.z_dim, device=self.device)
        pl_labels = None if labels is None else labels[:n]
        ws = G.map(z, pl_labels, track=False)
        images = G.synthesis(ws)
        noise = torch.randn_like(images) / (images.shape[2] * images.shape[3]) ** 0.5
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
        batch_mean = lengths.mean().detach().clone()
        all_reduce_mean_([batch_mean])
        self.pl_mean = self.pl_mean.lerp(batch_mean, cfg.pl_decay)
        penalty = (lengths - self.pl_mean).square().mean()
        self._step(self.opt_G, self.scaler_G, penalty * cfg.pl_weight * cfg.pl_interval, average_grads_of=G)
        return penalty.detach()

    def ema_beta(self, step: int) -> float:
        """The EMA decay at G step `step` (0-based), with the optional warm-up."""
        if not self.cfg.ema_warmup:
            return self.cfg.ema_beta
        return min(self.cfg.ema_beta, (1 + step) / (10 + step))

    def optimizer_state(self, ada_pending: list[tuple[float, int]] | None = None) -> dict:
        """Optimizers, scalers, ADA's p and statistics, pl_mean. `ada_pending`: every rank's ADA
        statistics since p was last adjusted (`ada_pending()` gathered), default this rank's."""
        return {"opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "scaler": {"G": self.scaler_G.state_dict(), "D": self.scaler_D.state_dict()},
                "ada": self.augment.state_dict(ada_pending), "pl_mean": self.pl_mean.detach().cpu().clone()}

    def ada_pending(self) -> tuple[float, int]:
        return self.augment.sign_sum, self.augment.count

    def load_optimizer_state(self, state: dict, rank: int = 0) -> None:
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        # Checkpoints written before ADA and path length existed hold neither: they start afresh.
        if "ada" in state:
            self.augment.load_state_dict(state["ada"], rank)
        if "pl_mean" in state:
            self.pl_mean = state["pl_mean"].to(self.device).clone()
        for scaler, saved in ((self.scaler_G, state["scaler"]["G"]), (self.scaler_D, state["scaler"]["D"])):
            # A run may switch train.precision between bf16 and fp16 on resume. A bf16/fp32 run's
            # scaler was disabled and saved an empty state: an fp16 run then starts loss scaling
            # afresh (GradScaler's initial scale), as it would at step 0. A disabled scaler ignores
            # the state of an fp16 run's scaler (load_state_dict is a no-op when disabled).
            if saved:
                scaler.load_state_dict(saved)
