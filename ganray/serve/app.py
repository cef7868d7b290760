"""The face API on Ray Serve: a FastAPI ingress in front of a batched, hot-reloading generator.

    HTTP -> Serve proxy -> FaceAPI (ingress: auth, validation, PNG/JSON responses)
                        -> FaceGenerator (@serve.batch: one forward pass for many requests' faces)

The split lets each side scale on its own: ingress replicas on CPUs, generator replicas where the
model's CPUs or GPUs are, with every ingress replica's requests batching together in a generator.
The generator's batches are counted in faces (a POST of 8 seeds fills 8 places), and while one
batch renders the next gathers for about as long as a render takes (see FaceGenerator.render).

A face is the one of `ganray.models.face`: for the same model version, seed, psi and
conditions the API returns exactly the bytes the bulk job writes.

The generator serves a registry alias (e.g. `production`). It re-resolves the alias every
`model.poll_interval_s`, and also whenever Serve hands it a new user_config (`serve deploy` with
changed args, no restart). A new version is loaded and test-rendered beside the current one, then
swapped in with one assignment: a batch uses the model it started with, so requests in flight
never fail. A version that fails to load leaves the current one serving; the error is logged and
shown in GET /v1/model. Each replica follows the alias on its own, so for up to one poll interval
replicas may serve different versions: every response names its version (X-Model-Version).

Overload: both deployments have a bounded queue (`max_queued_requests`). Past it, the proxy (for
the ingress) and the ingress's handle (for the generator) reject with 503 and Retry-After, through
Ray Serve's own backpressure handling (`backpressure_config`).

Run it with `ganray serve` (local Ray), or `serve run` / `serve deploy configs/serve.yaml`.
"""
import asyncio
import base64
import datetime
import logging
import os
import random
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import torch
from fastapi import FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from ganray.config import (
    ConfigError,
    FaceAPIConfig,
    FaceServiceConfig,
    ReplicaOptions,
    ServedModel,
    load_config,
)
from ganray.images import encode_png
from ganray.models.face import (
    check_mixing,
    is_style_based,
    labels_for_rows,
    prepare_for_render,
    render_faces,
    resolve_conditions,
    resolve_precision,
)
from ganray.registry import LoadedGenerator, Registry, registry_url
from ganray.serve.schemas import (
    SEED_MAX,
    Face,
    FacesRequest,
    FacesResponse,
    Health,
    Limits,
    ModelLoadError,
    ModelResponse,
    RenderRequest,
    Rendered,
    RenderResult,
    ServedModelInfo,
)
from ganray.storage import normalize_url

# Serve's logger: replica logs go to the replica's log file, tagged with the replica.
logger = logging.getLogger("ray.serve")

API_KEY_ENV = "GANRAY_API_KEY"
RENDER_EMA = 0.8  # weight of the past in the moving average of render times


# ---------------------------------------------------------------------------------------------
# The generator deployment


class LiveSettings(BaseModel):
    """The generator's user_config: what can change on running replicas without a restart."""

    model: ServedModel
    max_batch_size: int
    batch_wait_timeout_s: float
    max_gather_s: float


def count_faces(requests: list[RenderRequest]) -> int:
    """A batch's size in faces, not requests: a POST of 8 seeds fills 8 places."""
    return sum(len(r.seeds) for r in requests)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_request(model: LoadedGenerator, request: RenderRequest) -> list[dict[str, str]] | RenderResult:
    """The request's resolved conditions, one per seed, or a RenderResult naming what the model refuses
    (a style mix it cannot do, or a bad condition)."""
    try:
        check_mixing(model.generator, request.seeds, request.mix_seeds, request.crossover)
    except ValueError as e:
        return RenderResult(model_version=model.version, error=str(e), error_field="crossover")
    try:
        return [resolve_conditions(model.generator, request.conditions, seed) for seed in request.seeds]
    except ValueError as e:
        return RenderResult(model_version=model.version, error=str(e))


@serve.deployment
class FaceGenerator:
    """Renders faces with the model behind a registry alias, and follows the alias when it moves."""

    def __init__(self, device: str):
        # No thread setting: render_faces runs the forward pass on one CPU thread (byte-identical
        # faces whatever the batch); more CPU throughput comes from more replicas.
        self._device = device
        self._settings: LiveSettings | None = None
        self._registry: Registry | None = None
        self._model: LoadedGenerator | None = None
        self._load_error: ModelLoadError | None = None
        self._reload_lock = asyncio.Lock()
        self._render_s = 0.0  # moving average of a batch's render time: how long the next one gathers
        self._batches = self._faces = 0  # rendered since start (GET /v1/model)
        self._poller: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this before the first request and whenever user_config changes."""
        settings = LiveSettings.model_validate(user_config)
        self.render.set_max_batch_size(settings.max_batch_size)
        self.render.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._settings = settings
        self._registry = Registry(settings.model.registry)
        await self._follow_alias()
        if self._model is None:
            # Nothing to fall back on: fail the replica, so that the deployment reports why.
            raise RuntimeError(f"cannot serve {settings.model.alias!r} from {settings.model.registry}: "
                               f"{self._load_error.error if self._load_error else 'no model'}")
        if settings.model.poll_interval_s > 0 and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll_alias())

    async def _poll_alias(self) -> None:
        while self._settings.model.poll_interval_s > 0:
            await asyncio.sleep(self._settings.model.poll_interval_s)
            try:
                await self._follow_alias()
            except Exception:  # the poller must outlive any surprise (expected failures are recorded)
                logger.exception("checking the model alias failed")

    async def _follow_alias(self) -> None:
        """Load the version the alias points at if it is not the one serving; on failure keep serving."""
        async with self._reload_lock:
            source = self._settings.model
            try:
                version = await asyncio.to_thread(self._registry.resolve, source.alias)
            except Exception as e:  # noqa: BLE001 - storage down, bad alias...: keep serving, show why
                self._record_load_error(None, e)
                return
            if self._model is not None and version == self._model.version:
                self._load_error = None  # the alias is back on (or never left) what we serve
                return
            if self._load_error is not None and self._load_error.version == version:
                return  # versions are immutable: one that failed to load is not retried every poll
            try:
                loaded = await asyncio.to_thread(self._load, version, self._precision())
            except Exception as e:  # noqa: BLE001 - whatever breaks a version, the current one keeps serving
                self._record_load_error(version, e)
                return
            previous = self._model.version if self._model else None
            self._model, self._load_error = loaded, None  # the swap; running batches keep their model
            logger.info(f"serving {source.alias!r} = {loaded.version} (was {previous})")

    def _load(self, version: str, precision: str) -> LoadedGenerator:
        loaded = self._registry.load_generator(version, device=self._device)
        prepare_for_render(loaded.generator, precision)  # the bulk job's layout: the fastest that keeps the bytes
        # A test render before the swap: a model that cannot render never serves, and the first
        # request after the swap does not pay for warm-up.
        self._render_sync(loaded, precision, [RenderRequest(seeds=(0,), psi=1.0)])
        return loaded

    def _precision(self) -> str:
        """model.precision as this replica's device resolves it ("auto": as a bulk job's actor on it would)."""
        return resolve_precision(self._settings.model.precision, self._device)

    def _record_load_error(self, version: str | None, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        self._load_error = ModelLoadError(version=version, error=message, at=utc_now())
        serving = self._model.version if self._model else "nothing"
        logger.error(f"cannot load {self._settings.model.alias!r} -> {version}: {message} (still serving {serving})")

    @serve.batch(batch_size_fn=count_faces)
    async def render(self, requests: list[RenderRequest]) -> list[RenderResult]:
        """Called with one RenderRequest; Serve gathers concurrent calls into `requests`."""
        model, precision = self._model, self._precision()  # one model for the whole batch
        # Serve gathers the next batch while this one renders, for batch_wait_timeout_s after its
        # first request. A short wait would split the requests that arrive during this render into
        # many small batches (a face alone costs ~8x its share of a batch of 64 on CPU); so while a
        # batch renders, the next one gathers for about as long as a render takes. A request that
        # finds the generator idle still waits only batch_wait_timeout_s.
        self.render.set_batch_wait_timeout_s(max(self._settings.batch_wait_timeout_s, self._render_s))
        self._batches += 1
        self._faces += count_faces(requests)
        start = time.perf_counter()
        try:
            # In a thread: the event loop stays free to take the next requests while this batch renders.
            return await asyncio.to_thread(self._render_sync, model, precision, requests)
        finally:
            self._render_s = min(RENDER_EMA * self._render_s + (1 - RENDER_EMA) * (time.perf_counter() - start),
                                 self._settings.max_gather_s)
            self.render.set_batch_wait_timeout_s(self._settings.batch_wait_timeout_s)

    @staticmethod
    def _render_sync(model: LoadedGenerator, precision: str,
                     requests: list[RenderRequest]) -> list[RenderResult]:
        generator = model.generator
        results: list[RenderResult | None] = [None] * len(requests)
        by_call: dict[tuple[float, int | None], list[tuple[int, list[dict[str, str]]]]] = {}
        for i, request in enumerate(requests):
            checked = check_request(model, request)
            if isinstance(checked, RenderResult):
                results[i] = checked
                continue
            by_call.setdefault((request.psi, request.crossover), []).append((i, checked))
        # render_faces takes one psi (and one crossover) per call; a face does not depend on its batch,
        # so grouping is free.
        for (psi, crossover), group in by_call.items():
            seeds = [seed for i, _ in group for seed in requests[i].seeds]
            rows = [row for _, request_rows in group for row in request_rows]
            mix_seeds = None if crossover is None else [s for i, _ in group for s in requests[i].mix_seeds]
            images = render_faces(generator, seeds, psi=psi, labels=labels_for_rows(generator, rows),
                                  precision=precision, mix_seeds=mix_seeds, crossover=crossover)
            pngs = [encode_png(image) for image in images]
            start = 0
            for i, request_rows in group:
                end = start + len(request_rows)
                results[i] = RenderResult(model.version, request_rows, pngs[start:end])
                start = end
        return results

    async def describe(self, request: RenderRequest) -> RenderResult:
        """The faces' resolved conditions and model version, without rendering them."""
        model = self._model
        checked = check_request(model, request)
        if isinstance(checked, RenderResult):
            return checked
        return RenderResult(model_version=model.version, conditions=checked)

    async def model_info(self) -> ServedModelInfo:
        model, source = self._model, self._settings.model
        return ServedModelInfo(
            version=model.version, alias=source.alias, registry=source.registry,
            resolution=model.generator.resolution, z_dim=model.generator.z_dim, precision=self._precision(),
            conditions=dict(model.generator.condition_values), load_error=self._load_error,
            num_ws=model.generator.num_ws if is_style_based(model.generator) else None,
            rendered=Rendered(batches=self._batches, faces=self._faces),
        )


# ---------------------------------------------------------------------------------------------
# The HTTP ingress

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


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes (api.max_body_bytes)")


class RequestGuard:
    """ASGI middleware in front of every route: the API key, then the size of the request body.

    The order: the key first, since it needs nothing but a header, and a caller without it learns
    nothing about the service, not even its body limit, and has none of its body read or parsed
    (a 401, never a 413 or 422). Then the body: a Content-Length above api.max_body_bytes is a 413
    before any of the body is read; a body without one (chunked) is counted as the route reads it,
    and reading stops with a 413 at the first chunk past the limit. (Serve's proxy queues what
    arrives until the ingress answers, and drops the rest of the request once the 413 is sent.)
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        face_api: FaceAPI = serve.get_replica_context().servable_object
        key = content_length = None
        for name, value in scope["headers"]:  # raw bytes; names are lower case in ASGI
            if name == b"x-api-key" and key is None:
                key = value
            elif name == b"content-length":
                content_length = value
        if face_api.api_key is not None and route_path(scope) not in OPEN_PATHS and not (
            # Bytes, constant time: the header may hold any byte (compare_digest refuses non-ASCII str).
            key is not None and secrets.compare_digest(key, face_api.api_key)
        ):
            await JSONResponse({"detail": "missing or wrong API key (header X-API-Key)"}, 401,
                               headers={"WWW-Authenticate": "ApiKey"})(scope, receive, send)
            return
        limit = face_api.max_body_bytes
        if content_length is not None and content_length.isdigit():
            if int(content_length) > limit:
                too_large = BodyTooLarge(limit)
                await JSONResponse({"detail": too_large.detail}, too_large.status_code)(scope, receive, send)
                return
            # The HTTP server delivers no more than Content-Length bytes: nothing to count.
            await self.app(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException from reading the body on to its handler: the
                    # 413 comes back in the same shape as every other error.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def route_path(scope: dict[str, Any]) -> str:
    """The request's path inside this application (without the route prefix Serve mounted it at)."""
    root, path = scope.get("root_path", ""), scope["path"]
    return path[len(root):] if root and path.startswith(root) else path


api.add_middleware(RequestGuard)


def invalid(loc: tuple[str | int, ...], msg: str, value: Any) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for the checks that depend on config or on the model."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


@serve.deployment
@serve.ingress(api)
class FaceAPI:
    """The HTTP side: checks the key and the input, asks the generator deployment for faces, and
    shapes the responses. It holds no model, so it scales on CPUs apart from the generator."""

    def __init__(self, generator: DeploymentHandle, limits: FaceAPIConfig):
        self._generator = generator
        self._limits = limits
        # What RequestGuard checks before any route runs.
        self.api_key: bytes | None = limits.api_key.encode("ascii") if limits.api_key else None
        self.max_body_bytes = limits.max_body_bytes

    @api.get(HEALTH_PATH, summary="liveness: the service answers and has a model")
    async def healthz(self) -> Health:
        info: ServedModelInfo = await self._generator.model_info.remote()
        return Health(status="ok", model_version=info.version)

    @api.get("/v1/model", summary="the served model, its accepted conditions, and the last failed reload",
             dependencies=[API_KEY_DOCS])
    async def model(self, response: Response) -> ModelResponse:
        info: ServedModelInfo = await self._generator.model_info.remote()
        response.headers["X-Model-Version"] = info.version
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
        self._check_seed(seed, ("path", "seed"))
        self._check_mix_pair(mix_seed, crossover, "query", "mix_seed")
        if mix_seed is not None:
            self._check_seed(mix_seed, ("query", "mix_seed"))
        conditions = self._conditions_from_query(request)
        psi = self._limits.default_psi if psi is None else psi
        mix_seeds = None if mix_seed is None else (mix_seed,)
        result: RenderResult = await self._generator.render.remote(
            RenderRequest((seed,), psi, conditions, mix_seeds, crossover))
        if result.error:
            loc, value = (("query", "crossover"), crossover) if result.error_field == "crossover" else \
                (("query",), conditions)
            raise invalid(loc, result.error, value)
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
        seeds = self._seeds_for(body)
        mix_seeds = self._mix_seeds_for(body, seeds)
        psi = self._limits.default_psi if body.psi is None else body.psi
        render_request = RenderRequest(tuple(seeds), psi, body.conditions,
                                       None if mix_seeds is None else tuple(mix_seeds), body.crossover)
        # format=png renders nothing here: each face's URL renders it, with the same bytes.
        method = self._generator.render if body.format == "base64" else self._generator.describe
        result: RenderResult = await method.remote(render_request)
        if result.error:
            if result.error_field == "crossover":
                raise invalid(("body", "crossover"), result.error, body.crossover)
            raise invalid(("body", "conditions"), result.error, body.conditions)
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


# ---------------------------------------------------------------------------------------------
# The application


# Ray Serve settings for our replicas (read when a replica starts; Ray-internal names, re-check
# them on Ray upgrades). Each saves a cross-thread hand-off or a write per request; on a 2-core
# machine they took about a quarter off the ingress's CPU per request (benchmarks/serve_latency.py).
REPLICA_ENV = {
    # The deployment's code on Serve's own event loop, not on a second loop in a second thread.
    # (The model renders in a worker thread, so the loop never blocks for long.)
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # The ingress's handle to the generator routes on that same loop, not on a router thread.
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Replica logs (access log included) go to the replica's log file only, not also to stderr.
    "RAY_SERVE_LOG_TO_STDERR": "0",
}


def deployment_options(options: ReplicaOptions, retry_after_s: float, access_log: bool) -> dict[str, Any]:
    return {
        "logging_config": {"enable_access_log": access_log},
        "autoscaling_config": {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        },
        "ray_actor_options": {
            "num_cpus": options.num_cpus, "num_gpus": options.num_gpus,
            "runtime_env": {"env_vars": REPLICA_ENV},  # merged with the application's runtime_env
        },
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=retry_after_s),
    }


def parse_app_args(args: dict[str, Any]) -> FaceServiceConfig:
    """FaceServiceConfig from builder args: nested sections (a Serve config file's `args:`) and/or
    dotted keys (`serve run ganray.serve.app:build_app model.alias=staging`)."""
    nested = {k: v for k, v in args.items() if "." not in k}
    dotted = [f"{k}={v}" for k, v in args.items() if "." in k]
    return load_config(FaceServiceConfig, base=nested, overrides=dotted)


def with_env_api_key(api_config: FaceAPIConfig) -> FaceAPIConfig:
    """The api section with the key from $GANRAY_API_KEY when the config names none, checked like one."""
    env_key = os.environ.get(API_KEY_ENV)
    if api_config.api_key is not None or not env_key:
        return api_config
    try:
        return FaceAPIConfig.model_validate({**api_config.model_dump(), "api_key": env_key})
    except ValidationError as e:
        raise ConfigError(f"${API_KEY_ENV}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def build_app(args: dict[str, Any] | FaceServiceConfig) -> Application:
    """The Ray Serve application builder (`import_path: ganray.serve.app:build_app`)."""
    config = args if isinstance(args, FaceServiceConfig) else parse_app_args(args)
    model = config.model.model_copy(update={"registry": normalize_url(registry_url(config.model.registry))})
    limits = with_env_api_key(config.api)
    gen = config.generator
    generator = FaceGenerator.options(
        **deployment_options(gen, config.api.retry_after_s, access_log=False),
        user_config=LiveSettings(model=model, max_batch_size=gen.max_batch_size,
                                 batch_wait_timeout_s=gen.batch_wait_timeout_s,
                                 max_gather_s=gen.max_gather_s).model_dump(mode="json"),
    ).bind(device="cuda" if gen.num_gpus > 0 else "cpu")
    return FaceAPI.options(**deployment_options(config.ingress, config.api.retry_after_s, access_log=True)).bind(generator, limits)
