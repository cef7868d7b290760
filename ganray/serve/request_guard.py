"""The request guard: ASGI middleware in front of every route of the face API (API key, body size),
which also records each HTTP request's latency and answer (ganray/serve/metrics.py)."""
import secrets
import time
from typing import Any, Protocol

from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from ray import serve

from ganray.serve.metrics import IngressMetrics


class GuardedReplica(Protocol):
    """What the guard reads from the ingress replica it runs in."""

    api_key: bytes | None  # None: no key needed
    max_body_bytes: int
    metrics: IngressMetrics


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes (api.max_body_bytes)")


def route_path(scope: dict[str, Any]) -> str:
    """The request's path inside this application (without the route prefix Serve mounted it at)."""
    root, path = scope.get("root_path", ""), scope["path"]
    return path[len(root):] if root and path.startswith(root) else path


class RequestGuard:
    """ASGI middleware in front of every route: the API key, then the size of the request body.

    The order: the key first, since it needs nothing but a header, and a caller without it learns
    nothing about the service, not even its body limit, and has none of its body read or parsed
    (a 401, never a 413 or 422). Then the body: a Content-Length above api.max_body_bytes is a 413
    before any of the body is read; a body without one (chunked) is counted as the route reads it,
    and reading stops with a 413 at the first chunk past the limit. (Serve's proxy queues what
    arrives until the ingress answers, and drops the rest of the request once the 413 is sent.)
    `open_paths` need no key (liveness for load balancers, the docs).
    """

    def __init__(self, app: Any, open_paths: frozenset[str]):
        self.app = app
        self.open_paths = open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replica: GuardedReplica = serve.get_replica_context().servable_object
        start, status = time.perf_counter(), 500  # 500: no answer started (an exception escaped)

        async def recording_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guard(replica, scope, receive, recording_send)
        finally:
            # The route's path template (bounded: no seeds); "-" when answered before routing.
            route = getattr(scope.get("route"), "path", "-")
            replica.metrics.request("http", route, str(status), time.perf_counter() - start)

    async def _guard(self, replica: GuardedReplica, scope: dict[str, Any], receive: Any, send: Any) -> None:
        key = content_length = None
        for name, value in scope["headers"]:  # raw bytes; names are lower case in ASGI
            if name == b"x-api-key" and key is None:
                key = value
            elif name == b"content-length":
                content_length = value
        if replica.api_key is not None and route_path(scope) not in self.open_paths and not (
            # Bytes, constant time: the header may hold any byte (compare_digest refuses non-ASCII str).
            key is not None and secrets.compare_digest(key, replica.api_key)
        ):
            await JSONResponse({"detail": "missing or wrong API key (header X-API-Key)"}, 401,
                               headers={"WWW-Authenticate": "ApiKey"})(scope, receive, send)
            return
        limit = replica.max_body_bytes
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
