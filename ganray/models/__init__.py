"""Face GAN networks, chosen by name, and the one definition of the face for a seed (`face.py`).

`ARCHITECTURES` maps `model.arch` to the module that builds that architecture's networks: a module
with `Generator(cfg, resolution, attributes)` and `Discriminator(cfg, resolution, attributes)`
(NVlabs picks networks by class name, torchtitan by model spec; here one table). The training loop,
the registry's loader, the bulk job and Serve build every network through `build_generator` /
`build_discriminator`; nothing outside this package imports an architecture module directly.
A new architecture is one module here, one entry in this table and its config class in
`ganray.config.MODEL_CONFIGS`.
"""
from __future__ import annotations

from types import ModuleType

from torch import nn

from ganray.config import BaseModelConfig, parse_model_config
from ganray.models import dcgan, stylegan2
from ganray.models.losses import LOSSES, GANLoss, get_loss, gradient_penalty, r1_penalty

ARCHITECTURES: dict[str, ModuleType] = {"dcgan": dcgan, "stylegan2": stylegan2}


def architecture(cfg: BaseModelConfig | dict) -> tuple[BaseModelConfig, ModuleType]:
    cfg = parse_model_config(cfg)
    if cfg.arch not in ARCHITECTURES:  # a config class without networks: a programming error
        raise ValueError(f"model.arch {cfg.arch!r} has no networks; known: {sorted(ARCHITECTURES)}")
    return cfg, ARCHITECTURES[cfg.arch]


def build_generator(cfg: BaseModelConfig | dict, resolution: int,
                    attributes: dict[str, list[str]] | None = None) -> nn.Module:
    """G for `resolution`, conditioned on `attributes` (name -> values) when cfg.conditional."""
    cfg, module = architecture(cfg)
    return module.Generator(cfg, resolution, attributes)


def build_discriminator(cfg: BaseModelConfig | dict, resolution: int,
                        attributes: dict[str, list[str]] | None = None) -> nn.Module:
    cfg, module = architecture(cfg)
    return module.Discriminator(cfg, resolution, attributes)


def build_models(cfg: BaseModelConfig | dict, resolution: int,
                 attributes: dict[str, list[str]] | None = None) -> tuple[nn.Module, nn.Module]:
    """(G, D) of the architecture `cfg.arch` names."""
    return build_generator(cfg, resolution, attributes), build_discriminator(cfg, resolution, attributes)


def style_count(cfg: BaseModelConfig | dict, resolution: int) -> int | None:
    """num_ws of a style-based architecture's generator (a style-mixing crossover takes 0..num_ws),
    from its config alone; None for an architecture with a single latent input (no mixing)."""
    _, module = architecture(cfg)
    num_styles = getattr(module, "num_styles", None)
    return None if num_styles is None else num_styles(resolution)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "ARCHITECTURES", "build_generator", "build_discriminator", "build_models", "count_params", "style_count",
    "LOSSES", "GANLoss", "get_loss", "gradient_penalty", "r1_penalty",
]
