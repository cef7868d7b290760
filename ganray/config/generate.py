"""`ganray generate`: the bulk job (GenerateJob) and its closed-loop quotas per stratum."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ganray.config.base import RAY_ADDRESS_FIELD, Precision, RegistryConfig, Section, _psi_field
from ganray.config.labels import LabelerConfig, QualityGateConfig

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
    min_label_precision: float | None = Field(
        None, gt=0.0, le=1.0, description="classifier labeler: keep a face only when each of its stratum labels "
                                          "is given at a confidence where that label's held-out precision reaches "
                                          "this (the labeler's stored curve); None = min_confidence alone")

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

class GenerateConfig(Section):
    """What to generate (these determine the bytes) and how to run it (these do not)."""

    model: str = Field("latest", min_length=1, description="registry ref: version id (v3), alias, or 'latest'")
    output: str = Field(..., min_length=1, description="output folder (local path or s3://)")
    count: int = Field(1000, gt=0, description="number of faces: face ids 0 .. count-1")
    format: Literal["parquet", "png", "both", "webdataset"] = Field(
        "parquet", description="parquet: Parquet shards (loadable by Hugging Face datasets); png: PNG files "
                               "+ metadata.parquet; both; webdataset: tar shards of KEY.png/KEY.json[/KEY.cls]")
    class_attribute: str | None = Field(
        None, min_length=1, description="webdataset only: the attribute whose value index is each face's KEY.cls "
                                        "(the labeler's label when the job labels it, else the condition)")
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
    accelerator_type: str | None = Field(
        "auto", min_length=1, description="the one GPU kind every GPU actor of the job runs on (Ray's "
        "accelerator_type: L4, A100, A10G, ...; the cluster's GPU node types declare it as the resource "
        "accelerator_type:<kind>); auto: the kind of the first GPU the job gets; null: no pin (a cluster with "
        "one GPU kind only). Read only when a stage runs on cuda")
    gpu_wait_s: float = Field(
        900.0, gt=0, description="on cuda: seconds to wait for a GPU of that kind before failing (an "
                                 "autoscaling cluster starts GPU nodes on demand; a new one takes minutes)")
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
    closed_loop: ClosedLoopConfig | None = Field(None, description="exact quotas per stratum, verified (see docs/labels-and-balance.md)")

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
        if self.class_attribute is not None and self.format != "webdataset":
            raise ValueError("generate.class_attribute is only read with generate.format 'webdataset' "
                             f"(format is {self.format!r})")
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
