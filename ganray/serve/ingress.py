"""The face API's ingress deployment: its FastAPI routes, and its gRPC methods (grpc_ingress.py).

It checks the key (through RequestGuard, or the gRPC methods) and the input, asks the generator
deployment for faces and shapes the responses; it holds no model, so it scales on CPUs apart from
the generator. Endpoints and headers: ganray/serve/__init__.py.
"""
import base64
import random
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from ray import serve
from ray.serve.handle import DeploymentHandle

from ganray.config import FaceAPIConfig
from ganray.serve.grpc_ingress import FaceGRPCMethods
from ganray.serve.metrics import IngressMetrics, application_name
from ganray.serve.request_guard import RequestGuard
from ganray.serve.schemas import (
    SEED_MAX,
    Face,
    FacesRequest,
    FacesResponse,
    Health,
    Limits,
    ModelResponse,
    RenderRequest,
    RenderResult,
    ServedModelInfo,
)

api = FastAPI(
    title="ganray face API",
    description=(
        "Faces from a GAN in the ganray model registry. The same model version, seed, psi and "
        "conditions always give the same PNG bytes, the ones the bulk generation job writes. "
        "Every response names the model version in `X-Model-Version`. A full queue answers 503 "
        "with `Retry-After`. When an API key is configured, every endpoint except /healthz and "
        "the docs needs it in `X-API-Key`."
    ),
)
HEALTH_PATH = "/healthz"
# Open without the API key: liveness (for load balancers) and the docs.
OPEN_PATHS = frozenset(path for path in (HEALTH_PATH, api.docs_url, api.swagger_ui_oauth2_redirect_url,
                                         api.redoc_url, api.openapi_url) if path)
# Declares the key header in the OpenAPI docs (the Authorize button of /docs). The check itself is
# RequestGuard's: a FastAPI dependency would run only after FastAPI has read and parsed the body.
API_KEY_DOCS = Security(APIKeyHeader(name="X-API-Key", auto_error=False))
api.add_middleware(RequestGuard, open_paths=OPEN_PATHS)


def invalid(loc: tuple[str | int, ...], msg: str, value: Any) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for the checks that depend on config or on the model."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


@serve.deployment
@serve.ingress(api)
class FaceAPI(FaceGRPCMethods):
    """Checks the key and the input, asks the generator deployment for faces, and shapes the HTTP
    and gRPC responses. It holds no model, so it scales on CPUs apart from the generator."""

    def __init__(self, generator: DeploymentHandle, limits: FaceAPIConfig):
        self._generator = generator
        self._limits = limits
        # What RequestGuard checks before any route runs.
        self.api_key: bytes | None = limits.api_key.encode("ascii") if limits.api_key else None
        self.max_body_bytes = limits.max_body_bytes
        self.metrics = IngressMetrics(application_name())

    @api.get(HEALTH_PATH, summary="liveness: the service answers and has a model")
    async def healthz(self) -> Health:
        info: ServedModelInfo = await self._generator.model_info.remote()
        return Health(status="ok", model_version=info.version)

    @api.get("/v1/model", summary="the served model, its accepted conditions, and the last failed reload",
             dependencies=[API_KEY_DOCS])
    async def model(self, response: Response) -> ModelResponse:
        info = await self.model_response()
        response.headers["X-Model-Version"] = info.version
        return info

    async def model_response(self) -> ModelResponse:
        info: ServedModelInfo = await self._generator.model_info.remote()
        limits = Limits(max_count=self._limits.max_count, max_seed=self._limits.max_seed,
                        default_psi=self._limits.default_psi)
        return ModelResponse(**dict(info), limits=limits)

    @api.get(
        "/v1/faces/{seed}.png",
        summary="one face as a PNG",
        description="Any query parameter other than `psi`, `mix_seed` and `crossover` is a condition, e.g. "
                    "`?psi=0.7&age=young`. Attributes left out are drawn from the seed. Style-based models mix "
                    "two seeds with `mix_seed` and `crossover` (both). Headers: X-Model-Version, X-Seed, X-Psi, "
                    "X-Conditions (the face's full conditions, URL-encoded), and X-Mix-Seed, X-Crossover "
                    "when mixed.",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
        dependencies=[API_KEY_DOCS],
    )
    async def face_png(
        self,
        request: Request,
        seed: int = Path(ge=0, le=SEED_MAX, description="the face's seed"),
        psi: float | None = Query(None, ge=0, le=2, description="truncation psi (default: the service's)"),
        mix_seed: int | None = Query(None, ge=0, le=SEED_MAX, description="style mixing: the second seed"),
        crossover: int | None = Query(None, ge=0, description="style mixing: the first w index from mix_seed "
                                                               "(0 .. num_ws of GET /v1/model)"),
    ) -> Response:
        conditions = self._conditions_from_query(request)
        result, psi = await self.render_one(seed, psi, conditions, mix_seed, crossover)
        self.metrics.faces_sent("http", result.conditions, conditions)
        headers = {"X-Model-Version": result.model_version, "X-Seed": str(seed), "X-Psi": repr(psi),
                   "X-Conditions": urlencode(result.conditions[0])}
        if mix_seed is not None:
            headers.update({"X-Mix-Seed": str(mix_seed), "X-Crossover": str(crossover)})
        return Response(result.pngs[0], media_type="image/png", headers=headers)

    @api.post(
        "/v1/faces",
        summary="several faces: base64 PNGs inline, or GET URLs",
        dependencies=[API_KEY_DOCS],
    )
    async def faces(self, body: FacesRequest, request: Request, response: Response) -> FacesResponse:
        result, seeds, mix_seeds, psi = await self.render_many(body)
        if body.format == "base64":
            self.metrics.faces_sent("http", result.conditions, body.conditions)
        response.headers["X-Model-Version"] = result.model_version
        faces = []
        for i, (seed, conditions) in enumerate(zip(seeds, result.conditions)):
            mix = {} if mix_seeds is None else {"mix_seed": mix_seeds[i], "crossover": body.crossover}
            if body.format == "base64":
                where = {"image_base64": base64.b64encode(result.pngs[i]).decode("ascii")}
            else:
                url = request.url_for("face_png", seed=str(seed)).include_query_params(psi=psi, **mix, **conditions)
                where = {"url": str(url)}
            faces.append(Face(seed=seed, psi=psi, conditions=conditions, model_version=result.model_version,
                              **mix, **where))
        return FacesResponse(model_version=result.model_version, format=body.format, faces=faces)

    async def render_one(self, seed: int, psi: float | None, conditions: dict[str, str], mix_seed: int | None,
                         crossover: int | None) -> tuple[RenderResult, float]:
        """One face (GET /v1/faces/{seed}.png, gRPC GetFace) and its psi; bad input raises the 422's error."""
        self._check_seed(seed, ("path", "seed"))
        self._check_mix_pair(mix_seed, crossover, "query", "mix_seed")
        if mix_seed is not None:
            self._check_seed(mix_seed, ("query", "mix_seed"))
        psi = self._limits.default_psi if psi is None else psi
        mix_seeds = None if mix_seed is None else (mix_seed,)
        result: RenderResult = await self._generator.render.remote(
            RenderRequest((seed,), psi, conditions, mix_seeds, crossover))
        if result.error:
            loc, value = (("query", "crossover"), crossover) if result.error_field == "crossover" else \
                (("query",), conditions)
            raise invalid(loc, result.error, value)
        return result, psi

    async def render_many(self, body: FacesRequest) -> tuple[RenderResult, list[int], list[int] | None, float]:
        """POST /v1/faces (gRPC GetFaces): the faces (only described for format=png: each face's URL
        renders it, with the same bytes), their seeds and mix seeds, and their psi."""
        seeds = self._seeds_for(body)
        mix_seeds = self._mix_seeds_for(body, seeds)
        psi = self._limits.default_psi if body.psi is None else body.psi
        render_request = RenderRequest(tuple(seeds), psi, body.conditions,
                                       None if mix_seeds is None else tuple(mix_seeds), body.crossover)
        method = self._generator.render if body.format == "base64" else self._generator.describe
        result: RenderResult = await method.remote(render_request)
        if result.error:
            if result.error_field == "crossover":
                raise invalid(("body", "crossover"), result.error, body.crossover)
            raise invalid(("body", "conditions"), result.error, body.conditions)
        return result, seeds, mix_seeds, psi

    def _check_seed(self, seed: int, loc: tuple[str | int, ...]) -> None:
        if seed > self._limits.max_seed:
            raise invalid(loc, f"seed must be at most {self._limits.max_seed}", seed)

    @staticmethod
    def _check_mix_pair(mix_seed: Any, crossover: int | None, where: str, mix_name: str) -> None:
        """Style mixing takes a mix seed and a crossover together: a 422 naming the one left out."""
        if mix_seed is not None and crossover is None:
            raise invalid((where, "crossover"), f"style mixing needs a crossover with {mix_name}", None)
        if crossover is not None and mix_seed is None:
            raise invalid((where, mix_name), f"style mixing needs {mix_name} with crossover", None)

    def _mix_seeds_for(self, body: FacesRequest, seeds: list[int]) -> list[int] | None:
        self._check_mix_pair(body.mix_seeds, body.crossover, "body", "mix_seeds")
        if body.mix_seeds is None:
            return None
        if body.seeds is None:
            raise invalid(("body", "mix_seeds"), "mix_seeds needs seeds: one mix seed per seed", None)
        if len(body.mix_seeds) != len(seeds):
            raise invalid(("body", "mix_seeds"), f"got {len(body.mix_seeds)} mix_seeds for {len(seeds)} seeds: "
                                                 "one mix seed per seed", len(body.mix_seeds))
        for i, seed in enumerate(body.mix_seeds):
            self._check_seed(seed, ("body", "mix_seeds", i))
        return body.mix_seeds

    @staticmethod
    def _conditions_from_query(request: Request) -> dict[str, str]:
        conditions: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            if name in ("psi", "mix_seed", "crossover"):
                continue
            if name in conditions:
                raise invalid(("query", name), f"condition {name!r} is given more than once", value)
            conditions[name] = value
        return conditions

    def _seeds_for(self, body: FacesRequest) -> list[int]:
        max_count = self._limits.max_count
        if body.seeds is None:
            count = body.count or 1
            if count > max_count:
                raise invalid(("body", "count"), f"count must be at most {max_count}", count)
            return [random.randint(0, self._limits.max_seed) for _ in range(count)]
        if body.count is not None and body.count != len(body.seeds):
            raise invalid(("body", "count"), f"count ({body.count}) differs from the number of seeds "
                                             f"({len(body.seeds)})", body.count)
        if len(body.seeds) > max_count:
            raise invalid(("body", "seeds"), f"at most {max_count} seeds per request", len(body.seeds))
        for i, seed in enumerate(body.seeds):
            self._check_seed(seed, ("body", "seeds", i))
        return body.seeds
