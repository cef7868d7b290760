"""The attribute classifier: a conv encoder -> a feature vector -> one softmax head per attribute.

Built by `ganray.labels` (training, the `classifier` labeler) and by `ganray.eval` (its encoder is
the offline feature extractor). Input: float32 (B, 3, R, R) in [-1, 1], R the resolution it was
trained at. Normalisation is GroupNorm, never BatchNorm: a face's outputs do not depend on the
other faces of its batch (in training or in eval mode) and there are no running statistics to
keep in step across DDP workers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ganray.config import ClassifierModelConfig

FINAL_SIDE = 4  # the encoder halves the image down to 4x4 before the feature layer


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class AttributeClassifier(nn.Module):
    def __init__(self, cfg: ClassifierModelConfig | dict, resolution: int, attributes: dict[str, list[str]]):
        super().__init__()
        cfg = ClassifierModelConfig.model_validate(cfg) if isinstance(cfg, dict) else cfg
        if resolution < 2 * FINAL_SIDE or resolution & (resolution - 1):
            raise ValueError(f"classifier resolution must be a power of two >= {2 * FINAL_SIDE}, got {resolution}")
        if not attributes:
            raise ValueError("a classifier needs at least one attribute to classify")
        self.resolution = resolution
        self.attribute_names = list(attributes)
        self.attribute_values = {name: list(values) for name, values in attributes.items()}
        layers: list[nn.Module] = []
        channels_in, channels, side = 3, min(cfg.width, cfg.max_channels), resolution
        while side > FINAL_SIDE:
            layers += [nn.Conv2d(channels_in, channels, 3, padding=1), nn.GroupNorm(_groups(channels), channels),
                       nn.SiLU()]
            for _ in range(cfg.convs_per_block - 1):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(_groups(channels), channels),
                           nn.SiLU()]
            layers += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.GroupNorm(_groups(channels), channels),
                       nn.SiLU()]
            channels_in, channels, side = channels, min(channels * 2, cfg.max_channels), side // 2
        self.blocks = nn.Sequential(*layers)
        self.to_features = nn.Sequential(nn.Flatten(), nn.Linear(channels_in * FINAL_SIDE ** 2, cfg.feature_dim),
                                         nn.SiLU())
        self.feature_dim = cfg.feature_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.feature_dim, len(values))
                                    for name, values in attributes.items()})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, R, R) in [-1, 1] -> features (B, feature_dim)."""
        return self.to_features(self.blocks(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images -> {attribute: logits (B, number of values)}, in attribute order."""
        features = self.dropout(self.encode(x))
        return {name: head(features) for name, head in self.heads.items()}


def build_classifier(cfg: ClassifierModelConfig | dict, resolution: int,
                     attributes: dict[str, list[str]]) -> AttributeClassifier:
    return AttributeClassifier(cfg, resolution, attributes)
