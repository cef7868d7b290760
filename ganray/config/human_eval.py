"""`ganray eval human serve`: the human pairwise evaluation page (ganray.eval.human)."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ganray.config.base import Precision, RegistryConfig, Section, _psi_field


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
