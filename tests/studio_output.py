"""The small output the studio tests look at: a real closed-loop `ganray generate` job (labels,
confidences, strata, quality scores) of a tiny random conditional DCGAN, written once per session."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ganray.config import DCGANConfig, GenerateJob, load_config
from ganray.generate.job import run_generate
from ganray.models import build_generator
from ganray.registry import Registry

ATTRIBUTES = {"age_group": ["child", "adult", "senior"], "smile": ["no", "yes"]}  # the built-in faces' names
FACES, SHARD_SIZE = 24, 5


def studio_output(tmp_path_factory) -> Path:
    """The output folder (made by the first caller in the session, then reused)."""
    root = tmp_path_factory.getbasetemp() / "studio-output"
    out = root / "faces"
    if (out / "manifest.json").exists():
        return out
    torch.manual_seed(0)
    cfg = DCGANConfig(z_dim=16, g_width=8, conditional=True, embed_dim=4)
    generator = build_generator(cfg, 32, ATTRIBUTES)
    with torch.no_grad():  # spread the weights: DCGAN's init gives near-flat faces at this width
        for p in generator.parameters():
            p.normal_(0.0, 0.3)
    registry = Registry(str(root / "registry"))
    registry.promote(registry.push(generator.state_dict(), cfg.model_dump(), 32, ATTRIBUTES, {}), "production")
    params = {"count": FACES, "shard_size": SHARD_SIZE, "format": "parquet", "psi": 1.0, "batch_size": 32,
              "labeler": {"name": "conditions"},
              "quality": {"detector": "none", "min_contrast": 0.0, "min_sharpness": 0.0},
              "closed_loop": {"strata": ["age_group"]}}
    overrides = [f"registry.url={registry.url}", f"generate.output={out}", "generate.model=production",
                 *(f"generate.{k}={json.dumps(v)}" for k, v in params.items())]
    run_generate(load_config(GenerateJob, None, overrides), log=lambda _: None)
    return out
