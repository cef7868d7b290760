"""Tiny conditional generators with random weights, pushed to a registry: the models of the Serve
tests and of the StyleGAN2 bulk-generation tests (32 px, two binary attributes)."""
from __future__ import annotations

import torch

from ganray.config import DCGANConfig, StyleGAN2Config
from ganray.models import build_generator
from ganray.registry import Registry

ATTRIBUTES = {"age": ["young", "old"], "smile": ["no", "yes"]}
RESOLUTION = 32
TINY = DCGANConfig(z_dim=16, g_width=8, max_channels=32, conditional=True, embed_dim=4)
TINY_STYLEGAN2 = StyleGAN2Config(z_dim=16, w_dim=16, embed_dim=8, mapping_layers=2, channel_base=256,
                                 channel_max=16, conditional=True)


def push_random_model(registry: Registry, init_seed: int) -> str:
    torch.manual_seed(init_seed)
    generator = build_generator(TINY, RESOLUTION, ATTRIBUTES)
    return registry.push(generator.state_dict(), TINY.model_dump(), RESOLUTION, ATTRIBUTES,
                         {"source": "tests/tiny_generators.py", "init_seed": init_seed})


def push_random_stylegan2(registry: Registry, init_seed: int) -> str:
    """A StyleGAN2 whose noise and truncation matter (num_ws is 8 at 32 px)."""
    torch.manual_seed(init_seed)
    generator = build_generator(TINY_STYLEGAN2, RESOLUTION, ATTRIBUTES)
    with torch.no_grad():
        for layer in generator.synthesis.layers:
            layer.noise_strength.fill_(0.5)  # noise starts switched off: on, the per-face noise shows
        for i in range(3):  # averages of w (overall and per condition) for truncation to pull towards
            labels = torch.randint(2, (8, len(ATTRIBUTES)), generator=torch.Generator().manual_seed(i))
            generator.map(torch.randn(8, TINY_STYLEGAN2.z_dim), labels, track=True)
    return registry.push(generator.state_dict(), TINY_STYLEGAN2.model_dump(), RESOLUTION, ATTRIBUTES,
                         {"source": "tests/tiny_generators.py", "init_seed": init_seed})
