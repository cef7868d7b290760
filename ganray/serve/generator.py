"""The generator deployment: renders faces with the model behind a registry alias, in batches.

A batch is one forward pass for many requests' faces (@serve.batch, counted in faces). The batch
only renders pixels; each request's PNGs are encoded afterwards on the encoder threads, so the
next batch's forward pass never waits behind the last one's encoding.

It serves a registry alias (e.g. `production`), re-resolved every `model.poll_interval_s` and
whenever Serve hands it a new user_config. A new version is loaded and test-rendered beside the
current one, then swapped in with one assignment: a batch uses the model it started with, so
requests in flight never fail. A version that fails to load leaves the current one serving; the
error is logged and shown in GET /v1/model. Each replica follows the alias on its own: every
response names its version (X-Model-Version).
"""
import asyncio
import datetime
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel
from ray import serve

from ganray.config import ServedModel
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
from ganray.registry import LoadedGenerator, Registry
from ganray.serve.metrics import GeneratorMetrics, application_name
from ganray.serve.schemas import ModelLoadError, RenderRequest, Rendered, RenderResult, ServedModelInfo

# Serve's logger: replica logs go to the replica's log file, tagged with the replica.
logger = logging.getLogger("ray.serve")

RENDER_EMA = 0.8  # weight of the past in the moving average of render times
ENCODER_THREAD_PREFIX = "ganray-png"


class LiveSettings(BaseModel):
    """The generator's user_config: what can change on running replicas without a restart."""

    model: ServedModel
    max_batch_size: int
    batch_wait_timeout_s: float
    max_gather_s: float


@dataclass(frozen=True)
class RenderedPixels:
    """One request's faces as the batch leaves them: pixels, not yet PNGs (or why none were rendered)."""

    model_version: str
    conditions: list[dict[str, str]]
    images: list[np.ndarray] | None = None
    error: RenderResult | None = None


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


def render_pixels(model: LoadedGenerator, precision: str, requests: list[RenderRequest]) -> list[RenderedPixels]:
    """One batch's forward passes: every request's faces as uint8 pixels, nothing encoded."""
    generator = model.generator
    results: list[RenderedPixels | None] = [None] * len(requests)
    by_call: dict[tuple[float, int | None], list[tuple[int, list[dict[str, str]]]]] = {}
    for i, request in enumerate(requests):
        checked = check_request(model, request)
        if isinstance(checked, RenderResult):
            results[i] = RenderedPixels(model.version, [], error=checked)
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
        start = 0
        for i, request_rows in group:
            end = start + len(request_rows)
            results[i] = RenderedPixels(model.version, request_rows, list(images[start:end]))
            start = end
    return results


def encode_result(pixels: RenderedPixels) -> RenderResult:
    """A request's RenderResult: its faces as PNGs (the one codec, so the bulk job's bytes)."""
    if pixels.error is not None:
        return pixels.error
    return RenderResult(pixels.model_version, pixels.conditions, [encode_png(image) for image in pixels.images])


def encode_results(pixels: list[RenderedPixels]) -> list[RenderResult]:
    return [encode_result(p) for p in pixels]


def split_by_faces(pixels: list[RenderedPixels], parts: int) -> list[list[RenderedPixels]]:
    """Consecutive runs of requests with about the same number of faces each, at most `parts` of them."""
    per_part = max(1, -(-sum(len(p.images or ()) for p in pixels) // parts))
    runs, run, faces = [], [], 0
    for p in pixels:
        run.append(p)
        faces += len(p.images or ())
        if faces >= per_part:
            runs.append(run)
            run, faces = [], 0
    return runs + [run] if run else runs


@dataclass(frozen=True)
class EncodingSlot:
    """Where a request finds its PNGs: item `index` of what the encoding of its part of the batch returns."""

    encoding: asyncio.Future
    index: int


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
        # PNG encoding (zlib, outside the GIL) on threads of its own, beside the next forward pass.
        self._encoder_threads = min(8, os.cpu_count() or 1)
        self._encoder = ThreadPoolExecutor(self._encoder_threads, thread_name_prefix=ENCODER_THREAD_PREFIX)
        self._metrics = GeneratorMetrics(application_name())

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this before the first request and whenever user_config changes."""
        settings = LiveSettings.model_validate(user_config)
        self.render_batch.set_max_batch_size(settings.max_batch_size)
        self.render_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
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
        # A test render (and encode) before the swap: a model that cannot render never serves, and
        # the first request after the swap does not pay for warm-up.
        for pixels in render_pixels(loaded, precision, [RenderRequest(seeds=(0,), psi=1.0)]):
            encode_result(pixels)
        return loaded

    def _precision(self) -> str:
        """model.precision as this replica's device resolves it ("auto": as a bulk job's actor on it would)."""
        return resolve_precision(self._settings.model.precision, self._device)

    def _record_load_error(self, version: str | None, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        self._load_error = ModelLoadError(version=version, error=message, at=utc_now())
        serving = self._model.version if self._model else "nothing"
        logger.error(f"cannot load {self._settings.model.alias!r} -> {version}: {message} (still serving {serving})")

    async def render(self, request: RenderRequest) -> RenderResult:
        """One request's faces as PNGs: rendered in a shared batch, encoded on the encoder threads."""
        self._metrics.arrived()
        try:
            slot: EncodingSlot = await self.render_batch(request)
            return (await slot.encoding)[slot.index]
        finally:
            self._metrics.answered()

    @serve.batch(batch_size_fn=count_faces)
    async def render_batch(self, requests: list[RenderRequest]) -> list[EncodingSlot]:
        """Called with one RenderRequest; Serve gathers concurrent calls into `requests`. Returns once
        the batch is rendered, with its encoding started: the next batch renders meanwhile."""
        model, precision = self._model, self._precision()  # one model for the whole batch
        # Serve gathers the next batch while this one renders, for batch_wait_timeout_s after its
        # first request. A short wait would split the requests that arrive during this render into
        # many small batches, and a face alone costs far more than its share of a full batch; so
        # while a batch renders, the next one gathers for about as long as a render takes. A
        # request that finds the generator idle still waits only batch_wait_timeout_s.
        self.render_batch.set_batch_wait_timeout_s(max(self._settings.batch_wait_timeout_s, self._render_s))
        faces = count_faces(requests)
        self._batches += 1
        self._faces += faces
        self._metrics.batch(faces)
        start = time.perf_counter()
        try:
            # In a thread: the event loop stays free to take the next requests while this batch renders.
            pixels = await asyncio.to_thread(render_pixels, model, precision, requests)
        finally:
            self._render_s = min(RENDER_EMA * self._render_s + (1 - RENDER_EMA) * (time.perf_counter() - start),
                                 self._settings.max_gather_s)
            self.render_batch.set_batch_wait_timeout_s(self._settings.batch_wait_timeout_s)
        loop, slots = asyncio.get_running_loop(), []
        for run in split_by_faces(pixels, self._encoder_threads):  # one hand-off per run, not per request
            encoding = loop.run_in_executor(self._encoder, encode_results, run)
            slots += [EncodingSlot(encoding, i) for i in range(len(run))]
        return slots

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
