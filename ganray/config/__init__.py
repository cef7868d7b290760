"""Typed job configs.

Every job (train, data import, generate, serve, eval, labeler) is a pydantic model loaded from a YAML
file in `configs/` and overridden from the command line with `--set section.key=value`. Unknown keys,
wrong types and impossible values are rejected here, before any Ray work starts, with a message that
names the key (`ConfigError`; the CLI turns it into exit status 2).

One module per concern; every public name is importable from `ganray.config`:
base (ConfigError, Section, shared value types), loading (YAML and `--set`), models (by `arch`),
data (training data, `ganray data import`), train, generate, eval, serve, labels, human_eval, studio.
"""
from __future__ import annotations

from ganray.config.base import (
    PSI_MAX,
    PSI_MIN,
    RAY_ADDRESS_FIELD,
    ConfigError,
    Precision,
    RegistryConfig,
    RunConfig,
    Section,
)
from ganray.config.data import (
    UTKFACE_AGE_BAND_STARTS,
    DataConfig,
    ImportBalanceConfig,
    ImportConfig,
    ImportJob,
    LabelConfig,
    SyntheticData,
)
from ganray.config.eval import (EvalConfig, EvalJob, ExtractorConfig, MemorizationConfig, TrainEvalConfig, UtilityConfig,
                                UtilityJob)
from ganray.config.generate import STRATUM_SEPARATOR, ClosedLoopConfig, GenerateConfig, GenerateJob
from ganray.config.human_eval import HumanEvalConfig, HumanEvalJob
from ganray.config.labels import (
    ClassifierModelConfig,
    HeldoutConfig,
    LabelerConfig,
    LabelerEvalConfig,
    LabelerEvalJob,
    LabelerPublishConfig,
    LabelerTrainConfig,
    LabelerTrainJob,
    QualityGateConfig,
)
from ganray.config.lifecycle import DriftThresholds, MonitorConfig, MonitorJob, RetrainConfig, RetrainJob
from ganray.config.loading import format_validation_error, load_config, parse_model_config, parse_overrides, to_yaml
from ganray.config.models import DEFAULT_ARCH, MODEL_CONFIGS, BaseModelConfig, DCGANConfig, ModelConfig, StyleGAN2Config
from ganray.config.serve import (
    FaceAPIConfig,
    FaceServiceConfig,
    GeneratorDeploymentConfig,
    IngressDeploymentConfig,
    ReplicaOptions,
    ServedModel,
    ServeHTTPConfig,
    ServeJob,
)
from ganray.config.studio import StudioConfig
from ganray.config.train import TrainConfig, TrainJob

__all__ = [
    "PSI_MAX", "PSI_MIN", "RAY_ADDRESS_FIELD", "ConfigError", "Precision", "RegistryConfig", "RunConfig", "Section",
    "UTKFACE_AGE_BAND_STARTS", "DataConfig", "ImportBalanceConfig", "ImportConfig", "ImportJob", "LabelConfig",
    "SyntheticData",
    "EvalConfig", "EvalJob", "ExtractorConfig", "MemorizationConfig", "TrainEvalConfig", "UtilityConfig", "UtilityJob",
    "STRATUM_SEPARATOR", "ClosedLoopConfig", "GenerateConfig", "GenerateJob",
    "HumanEvalConfig", "HumanEvalJob", "StudioConfig",
    "ClassifierModelConfig", "HeldoutConfig", "LabelerConfig", "LabelerEvalConfig", "LabelerEvalJob",
    "LabelerPublishConfig", "LabelerTrainConfig", "LabelerTrainJob", "QualityGateConfig",
    "DriftThresholds", "MonitorConfig", "MonitorJob", "RetrainConfig", "RetrainJob",
    "format_validation_error", "load_config", "parse_model_config", "parse_overrides", "to_yaml",
    "DEFAULT_ARCH", "MODEL_CONFIGS", "BaseModelConfig", "DCGANConfig", "ModelConfig", "StyleGAN2Config",
    "FaceAPIConfig", "FaceServiceConfig", "GeneratorDeploymentConfig", "IngressDeploymentConfig", "ReplicaOptions",
    "ServedModel", "ServeHTTPConfig", "ServeJob",
    "TrainConfig", "TrainJob",
]
