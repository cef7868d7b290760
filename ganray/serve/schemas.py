"""What goes over the wire: the HTTP API's JSON bodies, and the messages between the two deployments.

One definition per message. The two messages of every face request (RenderRequest, RenderResult)
are plain dataclasses: the ingress has validated everything in them already, and a dataclass is
cheaper to build and to pickle than a pydantic model. Everything else is one pydantic model,
used by both deployments: the generator answers GET /v1/model with a ServedModelInfo, which the
ingress extends into the ModelResponse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ganray.config import PSI_MAX, PSI_MIN

SEED_MAX = 2**63 - 1  # seeds are int64 everywhere (torch.Generator.manual_seed, Parquet columns)


# ---------------------------------------------------------------------------------------------
# Between the ingress and the generator deployment, once per face request


@dataclass(frozen=True)
class RenderRequest:
    """Faces for `seeds`, all with the same psi and requested conditions (attributes left out are
    drawn per seed, as in the bulk job)."""

    seeds: tuple[int, ...]
    psi: float
    conditions: dict[str, str] = field(default_factory=dict)
    # Style mixing (style-based models): one second seed per face, and the first w index taken from it.
    mix_seeds: tuple[int, ...] | None = None
    crossover: int | None = None


@dataclass(frozen=True)
class RenderResult:
    """One request's faces, all from the same model version.

    `error` is set, and nothing rendered, when the model refuses the conditions (the message names
    the attribute). `pngs` is None when the faces were only resolved, not rendered.
    """

    model_version: str
    conditions: list[dict[str, str]] = field(default_factory=list)  # resolved, one per seed
    pngs: list[bytes] | None = None
    error: str | None = None
    error_field: str = "conditions"  # what `error` is about: "conditions" or "crossover" (style mixing)


# ---------------------------------------------------------------------------------------------
# HTTP bodies (and ServedModelInfo, the generator's part of GET /v1/model)


class FacesRequest(BaseModel):
    """POST /v1/faces."""

    model_config = ConfigDict(extra="forbid")

    count: int | None = Field(
        None, ge=1, description="number of faces; defaults to len(seeds), or 1 without seeds. "
        "At most the service's max_count (GET /v1/model, `limits`)."
    )
    seeds: list[Annotated[int, Field(ge=0, le=SEED_MAX)]] | None = Field(
        None, min_length=1, description=f"seeds in [0, {SEED_MAX}] (or the service's max_seed); "
        "omitted: random seeds, returned in the response"
    )
    psi: float | None = Field(
        None, ge=PSI_MIN, le=PSI_MAX, description="truncation psi; omitted: the service's default_psi"
    )
    conditions: dict[str, str] = Field(
        default_factory=dict, description="attribute -> value (GET /v1/model lists them); attributes left "
        "out are drawn from each face's seed"
    )
    format: Literal["base64", "png"] = Field(
        "base64", description="base64: each face's PNG inline in `image_base64`; png: no image data, "
        "each face's `url` is the GET endpoint that renders exactly that face"
    )
    mix_seeds: list[Annotated[int, Field(ge=0, le=SEED_MAX)]] | None = Field(
        None, min_length=1, description="style mixing (style-based models): one second seed per seed in "
        "`seeds` (needs `seeds` and `crossover`); the styles from w index `crossover` on come from it"
    )
    crossover: int | None = Field(
        None, ge=0, description="style mixing: the first w index taken from the mix seed, 0 .. the model's "
        "num_ws (GET /v1/model); 0 renders the mix seed's face, num_ws the seed's own"
    )


class FaceQuery(BaseModel):
    """One face's parameters, as GET /v1/faces/{seed}.png takes them (the gRPC GetFace checks them with this)."""

    seed: int = Field(ge=0, le=SEED_MAX)
    psi: float | None = Field(None, ge=PSI_MIN, le=PSI_MAX)
    mix_seed: int | None = Field(None, ge=0, le=SEED_MAX)
    crossover: int | None = Field(None, ge=0)


class Face(BaseModel):
    seed: int
    psi: float
    conditions: dict[str, str] = Field(description="every attribute the model conditions on, as rendered")
    model_version: str
    mix_seed: int | None = Field(None, description="style mixing: the second seed (None: not mixed)")
    crossover: int | None = Field(None, description="style mixing: the first w index from the mix seed")
    image_base64: str | None = Field(None, description="the PNG, base64 (format=base64)")
    url: str | None = Field(None, description="GET URL of this face's PNG (format=png)")


class FacesResponse(BaseModel):
    model_version: str
    format: Literal["base64", "png"]
    faces: list[Face]


class Limits(BaseModel):
    max_count: int
    max_seed: int
    psi_min: float = PSI_MIN
    psi_max: float = PSI_MAX
    default_psi: float


class ModelLoadError(BaseModel):
    """The last model the generator failed to load (it keeps serving the one it had)."""

    version: str | None = Field(description="None when the alias itself could not be resolved")
    error: str
    at: str = Field(description="when, ISO 8601 in UTC")


class Rendered(BaseModel):
    batches: int
    faces: int


class ServedModelInfo(BaseModel):
    """What one generator replica serves (its answer to the ingress for GET /v1/model and /healthz)."""

    version: str
    alias: str
    registry: str
    resolution: int
    z_dim: int
    precision: str
    conditions: dict[str, list[str]] = Field(description="attribute -> accepted values ({} = unconditional)")
    num_ws: int | None = Field(None, description="style-based models: the number of styles (w indices); "
                                                 "a style-mixing crossover takes 0 .. num_ws. None: no mixing")
    load_error: ModelLoadError | None = Field(
        None, description="the alias points at a version that failed to load; the version above keeps serving"
    )
    rendered: Rendered = Field(description="what the generator replica that answered has rendered since it "
                               "started (faces / batches: how well requests are being batched)")


class ModelResponse(ServedModelInfo):
    """GET /v1/model: what this replica serves, the last reload that failed if any, and the request limits."""

    limits: Limits


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str
