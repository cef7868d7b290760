"""`ganray eval` (EvalJob), its feature extractor and memorization check, a train job's
evaluation during training (`eval:` of TrainJob), and `ganray eval utility` (UtilityJob)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ganray.config.base import RAY_ADDRESS_FIELD, Precision, RegistryConfig, Section, _psi_field
from ganray.config.labels import LabelerTrainJob


class ExtractorConfig(Section):
    """The network that turns images into feature vectors (ganray.eval.extractors)."""

    name: Literal["pixels", "inception_v3", "classifier"] = Field(
        "pixels", description="pixels: the image resized to pixels_side, as a vector (no weights; numbers NOT "
                              "comparable to published FID); inception_v3: TF-FID InceptionV3 pool3 (2048-d; "
                              "comparable to published FID only with the published weights, checked by sha256); "
                              "classifier: the encoder of a ganray attribute classifier (labeler version; NOT "
                              "comparable to published FID)")
    labeler: str | None = Field(None, description="classifier: registry ref of the labeler version (id or alias)")
    labeler_registry: str | None = Field(
        None, description="classifier: registry holding it; None = the job's registry ($GANRAY_REGISTRY, ./registry)")
    weights: str | None = Field(
        None, description="inception_v3: path or URL (s3://...) of the TF-FID state dict "
                          "(pt_inception-2015-12-05-6726825d.pth); never downloaded by ganray")
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                       description="inception_v3: sha256 of the weights file, checked on load; "
                                                   "only the published file's (6726825d0af5...) is comparable "
                                                   "to published FID")
    resize: Literal["clean", "legacy"] = Field(
        "clean", description="clean: PIL bicubic with antialiasing (clean-fid's clean resize); legacy: torch "
                             "bilinear, align_corners=False, no antialiasing (pytorch-fid's resize; not the TF1 "
                             "resize of TF-FID, NVlabs' metrics or torch-fidelity)")
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
    reference_count: int | None = Field(
        None, ge=2, description="training images searched for each face's nearest one: None = every image of "
                                "eval.reference (exact search); N = its first N rows")
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
    # Per-group metrics and the memorization check.
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


class UtilityConfig(Section):
    """`ganray eval utility` (ganray.eval.utility): train on synthetic, test on real."""

    generated: str = Field(..., min_length=1, description="the synthetic set: a finished `ganray generate` output "
                                                           "(Parquet shards) whose faces carry the classifier's attributes")
    output: str = Field(..., min_length=1, description="folder for utility.json, utility.png, the runs and a registry "
                                                       "of the three classifiers")
    arms: list[Literal["real", "generated", "real+generated"]] = Field(
        ["real", "generated", "real+generated"], min_length=1,
        description="training sources compared, each with the same labeler recipe")
    labels: Literal["labeler", "conditions"] = Field(
        "labeler", description="a generated face's label: its label_<attribute> where the job labeled it, or the "
                               "condition it was rendered with")
    groups: list[str] = Field(..., min_length=1, description="attributes whose value combinations (true labels of "
                                                             "the held-out images) are the groups")
    min_group_images: int = Field(10, ge=1, description="groups with fewer held-out images are reported but never "
                                                        "the worst group")
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of the held-out images (shared by the arms)")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the percentile-bootstrap intervals")
    seed: int = Field(0, ge=0, description="seeds the bootstrap resamples")
    allow_unverified_generator: bool = Field(
        False, description="run even when the generator's training data cannot be checked against the held-out "
                           "images (the result says so)")

    @model_validator(mode="after")
    def _distinct(self) -> "UtilityConfig":
        for key in ("arms", "groups"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"utility.{key} lists a value twice: {values}")
        return self


class UtilityJob(Section):
    """configs/eval_utility_*.yaml for `ganray eval utility` / jobs/eval_utility.py: `labeler` is the
    classifier recipe (as `ganray labeler train` takes it; its run and publish are set per arm)."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    registry: RegistryConfig = RegistryConfig()
    labeler: LabelerTrainJob
    utility: UtilityConfig
