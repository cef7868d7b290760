"""The face API over gRPC: the FaceService methods of ganray/serve/proto/face.proto.

Serve's gRPC proxy (started with `grpc_options`) calls the ingress deployment's method of the
same name with the request message, so these live on the ingress class, beside its HTTP routes:
the same checks, the same generator, the same bytes. Errors are status codes: UNAUTHENTICATED
(missing or wrong `x-api-key` metadata, checked first), INVALID_ARGUMENT (the message names the
field), RESOURCE_EXHAUSTED (the generator's queue is full; the proxy answers the same when the
ingress's queue is).
"""
from __future__ import annotations

import secrets
import time
from typing import Any, Awaitable, Callable

import grpc
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from ray.serve.config import gRPCOptions
from ray.serve.exceptions import BackPressureError
from ray.serve.grpc_util import RayServegRPCContext

from ganray.serve.metrics import IngressMetrics
from ganray.serve.proto import face_pb2
from ganray.serve.schemas import FaceQuery, FacesRequest, ModelResponse, RenderResult

__all__ = ["API_KEY_METADATA", "SERVICER_FUNCTION", "FaceGRPCMethods", "grpc_options"]

# What Serve's gRPC proxy imports to serve FaceService.
SERVICER_FUNCTION = "ganray.serve.proto.face_pb2_grpc.add_FaceServiceServicer_to_server"
API_KEY_METADATA = "x-api-key"  # gRPC metadata keys are lower case


def grpc_options(port: int) -> gRPCOptions:
    """Serve's gRPC options for the face API (serve.start(grpc_options=...), or `grpc_options:` of a Serve config)."""
    return gRPCOptions(port=port, grpc_servicer_functions=[SERVICER_FUNCTION])


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


def field_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic/FastAPI errors as `field: message; ...` (HTTP's `body`/`query`/`path` prefix dropped)."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error["loc"] if p not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'conditions'}: {error['msg']}")
    return "; ".join(parts)


def face_message(seed: int, psi: float, conditions: dict[str, str], version: str, png: bytes | None,
                 mix_seed: int | None, crossover: int | None) -> face_pb2.Face:
    return face_pb2.Face(seed=seed, psi=psi, conditions=conditions, model_version=version, png=png or b"",
                         mix_seed=mix_seed, crossover=crossover)


class FaceGRPCMethods:
    """FaceService's methods, for the ingress class (FaceAPI) to inherit.

    They use what the ingress provides for its HTTP routes: `api_key`, `metrics`, `render_one`,
    `render_many` and `model_response`.
    """

    api_key: bytes | None
    metrics: IngressMetrics

    async def GetFace(self, request: face_pb2.FaceRequest, grpc_context: RayServegRPCContext) -> face_pb2.Face:
        return await self._answer("GetFace", grpc_context, self._get_face, request, face_pb2.Face)

    async def GetFaces(self, request: face_pb2.FacesRequest,
                       grpc_context: RayServegRPCContext) -> face_pb2.FacesReply:
        return await self._answer("GetFaces", grpc_context, self._get_faces, request, face_pb2.FacesReply)

    async def GetModel(self, request: face_pb2.ModelRequest,
                       grpc_context: RayServegRPCContext) -> face_pb2.ModelReply:
        return await self._answer("GetModel", grpc_context, self._get_model, request, face_pb2.ModelReply)

    async def _answer(self, method: str, context: RayServegRPCContext, handler: Callable[[Any], Awaitable[Any]],
                      request: Any, reply_type: type) -> Any:
        """The handler's reply, or an empty reply with the error's status code and details on the context
        (Serve's proxy sends the context's code: no exception, no stack trace in the logs)."""
        start = time.perf_counter()
        code, details = grpc.StatusCode.OK, ""
        try:
            self._check_key(context)
            return await handler(request)
        except Refused as e:
            code, details = e.code, e.details
        except (RequestValidationError, ValidationError) as e:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, field_errors(e.errors())
        except BackPressureError as e:
            code, details = grpc.StatusCode.RESOURCE_EXHAUSTED, e.message
        finally:
            self.metrics.request("grpc", method, code.name, time.perf_counter() - start)
        context.set_code(code)
        context.set_details(details)
        return reply_type()

    def _check_key(self, context: RayServegRPCContext) -> None:
        if self.api_key is None:
            return
        given = [value for key, value in context.invocation_metadata() if key == API_KEY_METADATA]
        key = given[0].encode("utf-8") if given and isinstance(given[0], str) else (given[0] if given else None)
        if key is None or not secrets.compare_digest(key, self.api_key):
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong API key (metadata {API_KEY_METADATA})")

    async def _get_face(self, request: face_pb2.FaceRequest) -> face_pb2.Face:
        query = FaceQuery(seed=request.seed, psi=request.psi if request.HasField("psi") else None,
                          mix_seed=request.mix_seed if request.HasField("mix_seed") else None,
                          crossover=request.crossover if request.HasField("crossover") else None)
        conditions = dict(request.conditions)
        result, psi = await self.render_one(query.seed, query.psi, conditions, query.mix_seed, query.crossover)
        self.metrics.faces_sent("grpc", result.conditions, conditions)
        return face_message(query.seed, psi, result.conditions[0], result.model_version, result.pngs[0],
                            query.mix_seed, query.crossover)

    async def _get_faces(self, request: face_pb2.FacesRequest) -> face_pb2.FacesReply:
        body = FacesRequest(
            count=request.count if request.HasField("count") else None,
            seeds=list(request.seeds) or None, psi=request.psi if request.HasField("psi") else None,
            conditions=dict(request.conditions), mix_seeds=list(request.mix_seeds) or None,
            crossover=request.crossover if request.HasField("crossover") else None, format="base64")
        result, seeds, mix_seeds, psi = await self.render_many(body)
        self.metrics.faces_sent("grpc", result.conditions, body.conditions)
        faces = [face_message(seed, psi, conditions, result.model_version, png,
                              None if mix_seeds is None else mix_seeds[i], body.crossover)
                 for i, (seed, conditions, png) in enumerate(zip(seeds, result.conditions, result.pngs))]
        return face_pb2.FacesReply(model_version=result.model_version, faces=faces)

    async def _get_model(self, request: face_pb2.ModelRequest) -> face_pb2.ModelReply:
        info: ModelResponse = await self.model_response()
        return face_pb2.ModelReply(
            version=info.version, alias=info.alias, resolution=info.resolution, precision=info.precision,
            conditions={name: face_pb2.ConditionValues(values=values) for name, values in info.conditions.items()},
            num_ws=info.num_ws, max_count=info.limits.max_count, max_seed=info.limits.max_seed,
            psi_min=info.limits.psi_min, psi_max=info.limits.psi_max, default_psi=info.limits.default_psi)
