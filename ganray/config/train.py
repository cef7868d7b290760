"""`ganray train`: the GAN training job (TrainJob) and its `train:` section."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ganray.config.base import RAY_ADDRESS_FIELD, Precision, RunConfig, Section
from ganray.config.data import DataConfig
from ganray.config.eval import TrainEvalConfig
from ganray.config.models import DCGANConfig, ModelConfig


class TrainConfig(Section):
    batch_size: int = Field(64, gt=0, description="global batch: split evenly over the workers")
    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    threads_per_worker: int = Field(1, gt=0, description="torch intra-op threads in each worker (CPU)")
    max_steps: int = Field(1000, gt=0, description="G optimisation steps to train for")
    loss: Literal["minimax", "non_saturating", "wgan_gp", "hinge"] = "non_saturating"
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps_per_g_step: int = Field(1, gt=0, description="D updates before each G update")
    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty weight on real images (0 = off)")
    r1_interval: int = Field(
        1, ge=1, description="1: R1 in every D step's loss; N > 1: lazy R1, a separate D update every N D "
        "minibatches on N x the penalty, with D's Adam lr * c and betas ** c, c = N / (N + 1) (StyleGAN2: 16)")
    pl_weight: float = Field(0.0, ge=0, description="path-length regularization weight (0 = off; StyleGAN2 "
                                                    "generators only; StyleGAN2: 2)")
    pl_interval: int = Field(4, ge=1, description="G steps between path-length updates (lazy as r1_interval, "
                                                  "adjusting G's Adam when > 1)")
    pl_decay: float = Field(0.01, gt=0, le=1, description="how fast pl_mean follows the mean path length")
    pl_batch_shrink: int = Field(2, ge=1, description="path-length batch = the worker's batch // this")
    augment: Literal["none", "blit", "geom", "color", "bgc"] = Field(
        "none", description="ADA pipeline applied to every image D sees (ganray.train.augment); none = off")
    augment_p: float = Field(0.0, ge=0, le=1, description="initial augmentation probability p")
    ada_target: float | None = Field(
        0.6, ge=-1, le=1, description="adapt p towards r_t = E[sign(D(real))] = this; None: p stays at augment_p")
    ada_interval: int = Field(4, ge=1, description="D minibatches between adjustments of p")
    ada_kimg: float = Field(500.0, gt=0, description="thousands of images over which p can move from 0 to 1")
    gp_lambda: float = Field(10.0, ge=0, description="gradient-penalty weight for wgan_gp")
    ema_beta: float = Field(0.999, ge=0, lt=1, description="G_ema <- beta*G_ema + (1-beta)*G per step")
    ema_warmup: bool = Field(
        True, description="use beta_t = min(ema_beta, (1+t)/(10+t)) so early G_ema is not stuck near init")
    precision: Precision = Field(
        "auto", description="autocast dtype; fp16 needs a GPU (uses a GradScaler); auto: bf16 where the "
        "device computes it (CPU: AMX or AVX512-BF16), else fp32 on CPU and fp16 on GPU"
    )
    seed: int = Field(0, ge=0, description="seeds the models' init, each worker's noise, the data order and flips")
    deterministic: bool = Field(
        True, description="bit-reproducible arithmetic (torch.use_deterministic_algorithms, no cuDNN autotuning): "
        "same seed, worker count and threads -> the same model; can be slower on GPU"
    )
    log_every: int = Field(10, gt=0, description="steps between reported metrics")
    checkpoint_every: int = Field(200, gt=0, description="steps between full-state checkpoints")
    num_to_keep: int = Field(3, gt=0, description="checkpoints kept in storage")
    sample_seeds: int = Field(64, gt=0, description="fixed seeds drawn in each checkpoint's sample grid")
    max_failures: int = Field(3, ge=-1, description="worker-group restarts after failures (-1 = forever)")

    @field_validator("g_lr", "d_lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"learning rate must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _batch(self) -> "TrainConfig":
        if self.batch_size < self.num_workers:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) is smaller than train.num_workers ({self.num_workers})"
            )
        if self.batch_size % self.num_workers:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must divide evenly over train.num_workers ({self.num_workers})"
            )
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("train.precision 'fp16' needs train.use_gpu: true (use bf16 on CPU)")
        return self


class TrainJob(Section):
    """configs/*.yaml for `ganray train` / jobs/train.py."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = DCGANConfig()
    train: TrainConfig = TrainConfig()
    # Evaluation during training (off by default); its class is in the Evaluation block below.
    eval: "TrainEvalConfig" = Field(default_factory=lambda: TrainEvalConfig())

    @model_validator(mode="after")
    def _model_fits_data(self) -> "TrainJob":
        self.model.check_resolution(self.data.resolution)  # each architecture has its own range
        if self.eval.every_images is not None and self.eval.reference is None and self.data.source != "shards":
            raise ValueError("eval.every_images needs eval.reference (an imported dataset) when training on "
                             "data.source synthetic: the built-in faces have no imported reference to compare with")
        if self.train.pl_weight > 0 and self.model.arch != "stylegan2":
            raise ValueError(f"train.pl_weight needs a generator with a mapping network (model.arch: stylegan2), "
                             f"not {self.model.arch}")
        return self
