"""The face API on Ray Serve: the application's args (FaceServiceConfig) and `ganray serve` (ServeJob)."""
from __future__ import annotations

import re

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ganray.config.base import RAY_ADDRESS_FIELD, Precision, Section, _psi_field


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
    accelerator_type: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="pin the replicas to one GPU kind, as Ray "
        "names it (ray.util.accelerators: L4, A100, A10G, H100...): GPU kinds render different bytes for one "
        "face. Needs num_gpus > 0; set it when the cluster has more than one GPU kind"
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

    layout: Literal["single", "split"] = Field(
        "single", description="single: the routes and the model in one deployment (one replica answers HTTP and "
        "renders; fastest on CPUs; `ingress` is unused); split: FaceAPI ingress replicas and FaceGenerator model "
        "replicas, each scaling on its own, batches gathered across every ingress replica (docs/serving.md)")
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
        if self.generator.accelerator_type is not None and self.generator.num_gpus == 0:
            raise ValueError(f"generator.accelerator_type ({self.generator.accelerator_type!r}) needs "
                             "generator.num_gpus > 0: it pins the replicas to a kind of GPU")
        return self


class ServeHTTPConfig(Section):
    host: str = Field("127.0.0.1", description="address the HTTP proxy binds (0.0.0.0 for every interface)")
    port: int = Field(8000, gt=0, lt=65536)
    proxy: Literal["haproxy", "serve"] = Field(
        "haproxy", description="what answers HTTP in front of the replicas: haproxy (Ray Serve's HAProxy "
        "ingress, straight to the ingress replicas, which then listen on ports of their own on every "
        "interface) or serve (Serve's Python proxy actor). Set in the environment of the Ray that "
        "`ganray serve` starts; on a cluster, the nodes' environment decides (docs/serving.md)")

    def ray_serve_env(self) -> dict[str, str]:
        """The RAY_SERVE_* variables for `proxy`. Serve reads them when its modules import, in every Ray
        process (controller, proxy, replicas): they belong in the environment of the process that
        starts Ray, before Ray and Serve import (its raylet and workers inherit it), or of each node."""
        if self.proxy == "serve":
            return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
        # Every route is free of side effects (a face is a pure function of its request), so HAProxy may
        # send a request again to another replica when its replica died before answering.
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}


class ServeGRPCConfig(Section):
    port: int | None = Field(None, gt=0, lt=65536, description="port of the face API's gRPC service "
                             "(ganray/serve/proto/face.proto), on every interface; null: HTTP only")


class ServeJob(FaceServiceConfig):
    """configs/serve_local.yaml for `ganray serve`: the application plus where to run it."""

    ray_address: str | None = RAY_ADDRESS_FIELD
    http: ServeHTTPConfig = ServeHTTPConfig()
    grpc: ServeGRPCConfig = ServeGRPCConfig()
    app_name: str = Field("ganray", min_length=1)
    route_prefix: str = Field("/", pattern=r"^/", description="URL path the application is served under")
