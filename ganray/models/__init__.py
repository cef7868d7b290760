"""Face GAN networks and losses: DCGAN generator/discriminator and the GAN objectives."""
from ganray.models.dcgan import Discriminator, Generator, build_models, count_params
from ganray.models.losses import LOSSES, GANLoss, get_loss, gradient_penalty, r1_penalty

__all__ = [
    "Discriminator", "Generator", "build_models", "count_params",
    "LOSSES", "GANLoss", "get_loss", "gradient_penalty", "r1_penalty",
]
