"""The `model:` section: one config class per architecture, chosen by `arch` (MODEL_CONFIGS)."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, field_validator, model_validator

from ganray.config.base import Section, _power_of_two


class BaseModelConfig(Section):
    """What every architecture's config has. `arch` names the architecture: it picks the config
    class here (MODEL_CONFIGS) and the network builders in `ganray.models.ARCHITECTURES`."""

    arch: str
    z_dim: int = Field(100, gt=0)
    conditional: bool = Field(False, description="condition G and D on the dataset's attributes")
    condition_on: list[str] = Field(
        default_factory=list, description="attribute names to condition on; empty = all of the dataset's"
    )
    embed_dim: int = Field(16, gt=0, description="size of each attribute embedding joined to z")

    # The image sizes this architecture is built and tested for (powers of two in this range).
    min_resolution: ClassVar[int] = 8
    max_resolution: ClassVar[int] = 1024

    def check_resolution(self, resolution: int) -> None:
        _power_of_two(resolution, self.min_resolution, self.max_resolution, f"data.resolution ({self.arch})")

    @model_validator(mode="after")
    def _conditioning(self) -> "BaseModelConfig":
        if self.condition_on and not self.conditional:
            raise ValueError("model.condition_on is set but model.conditional is false")
        if len(set(self.condition_on)) != len(self.condition_on):
            raise ValueError(f"model.condition_on lists an attribute twice: {self.condition_on}")
        return self


class DCGANConfig(BaseModelConfig):
    """DCGAN (ganray.models.dcgan). Widths and conditioning are fixed per run."""

    arch: Literal["dcgan"] = "dcgan"
    g_width: int = Field(64, gt=0, description="channels of G's last block; doubled per block up")
    d_width: int = Field(64, gt=0, description="channels of D's first block; doubled per block down")
    max_channels: int = Field(512, gt=0, description="cap on channels in any block")
    d_norm: Literal["batch", "instance", "layer", "none"] = Field(
        "batch", description="normalisation in D's blocks after the first (layer = GroupNorm(1, C))"
    )
    spectral_norm: bool = Field(False, description="spectral normalisation on D's weights")

    # One block per doubling: below 32 px there is too little to learn, above 256 px the plain
    # DCGAN design is unstable (a StyleGAN-class generator is the tool there).
    min_resolution: ClassVar[int] = 32
    max_resolution: ClassVar[int] = 256


class StyleGAN2Config(BaseModelConfig):
    """StyleGAN2 (ganray.models.stylegan2): a mapping network z -> w, modulated convolutions with
    skip (toRGB) outputs in G, a residual D with minibatch standard deviation. Defaults follow
    NVlabs' StyleGAN2-ADA (its "auto" widths below 512 px, StyleGAN2's 8-layer mapping)."""

    arch: Literal["stylegan2"] = "stylegan2"
    z_dim: int = Field(512, gt=0)
    embed_dim: int = Field(
        512, gt=0, description="size of G's label embedding joined to z: one learned vector per attribute "
                               "value, summed (StyleGAN2-ADA embeds its one-hot labels at w_dim)")
    w_dim: int = Field(512, gt=0, description="size of the intermediate latent w (one per layer)")
    mapping_layers: int = Field(8, ge=1, description="fully connected layers of the mapping networks "
                                                     "(G's z -> w and D's labels -> projection)")
    mapping_width: int | None = Field(None, gt=0, description="features of G's hidden mapping layers (NVlabs' "
                                                              "layer_features); None = w_dim")
    mapping_lr_mult: float = Field(0.01, gt=0, description="learning-rate multiplier of the mapping networks")
    channel_base: int = Field(16384, gt=0, description="channels at resolution r: min(channel_base // r, "
                                                       "channel_max); NVlabs use 32768 from 512 px up")
    channel_max: int = Field(512, gt=0, description="cap on channels at any resolution")
    style_mixing_prob: float = Field(
        0.9, ge=0, le=1, description="chance that a training batch switches to a second latent at a "
                                     "random layer (G in training mode)")
    w_avg_beta: float = Field(0.995, ge=0, lt=1, description="decay of the tracked average w that "
                                                             "truncation pulls towards")
    w_avg_per_condition: bool = Field(
        True, description="conditional models: also track one average w per combination of condition "
                          "values, and truncate each face towards its own combination's average")
    mbstd_group: int = Field(4, ge=1, description="minibatch-stddev group size (at most; a divisor of the batch)")
    mbstd_channels: int = Field(1, ge=0, description="feature channels the minibatch stddev adds (0 = off)")
    resample_filter: list[int] = Field(
        [1, 3, 3, 1], min_length=1, max_length=8,
        description="taps of the separable low-pass filter used when up- and downsampling")
    conv_clamp: float | None = Field(256.0, gt=0, description="clamp activations to +-this (fp16 safety); "
                                                              "None = no clamp")

    # NVlabs train StyleGAN2 from 32 px (below, the 4x4 head is most of the network) to 1024 px.
    min_resolution: ClassVar[int] = 32
    max_resolution: ClassVar[int] = 1024

    @field_validator("resample_filter")
    @classmethod
    def _filter(cls, taps: list[int]) -> list[int]:
        if any(t < 0 for t in taps) or sum(taps) <= 0:
            raise ValueError(f"resample_filter taps must be >= 0 with a positive sum, got {taps}")
        return taps


# Architecture name -> its config class. A new architecture adds one entry here and one in
# ganray.models.ARCHITECTURES (its networks), nothing else.
MODEL_CONFIGS: dict[str, type[BaseModelConfig]] = {"dcgan": DCGANConfig, "stylegan2": StyleGAN2Config}
DEFAULT_ARCH = "dcgan"


def _arch_of(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("arch", DEFAULT_ARCH)
    return getattr(value, "arch", None)


# The `model:` section: the config class chosen by `arch` (default dcgan).
ModelConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in MODEL_CONFIGS.items())],  # type: ignore[valid-type]
    Discriminator(_arch_of, custom_error_type="unknown_arch",
                  custom_error_message=f"unknown architecture; known: {', '.join(MODEL_CONFIGS)}"),
]
_MODEL_CONFIG_ADAPTER: TypeAdapter = TypeAdapter(ModelConfig)
