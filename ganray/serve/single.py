"""The one-deployment layout (`layout: single`): the FastAPI routes and the batched model in one replica.

    HTTP -> proxy (HAProxy or Serve's) -> FaceService (FaceAPI's routes and request guard, calling an in-process
                           FaceGenerator: same @serve.batch batches, same encoder threads, same bytes)

It saves the actor hop between ingress and generator (a serialization and a second event loop per
request), which on CPU machines costs more than the model. What it gives up: HTTP replicas cannot
scale apart from model replicas (each replica is both), and a batch gathers only one replica's
requests. Hot reload (alias polling and user_config) and the request guard are the split layout's.
"""
from typing import Any

from ray import serve

from ganray.config import FaceAPIConfig
from ganray.serve.generator import FaceGenerator
from ganray.serve.ingress import FaceAPI

__all__ = ["FaceService", "InProcessHandle"]


class _InProcessMethod:
    def __init__(self, method: Any):
        self.remote = method  # `await handle.method.remote(x)` awaits the coroutine method(x)


class InProcessHandle:
    """What FaceAPI uses of a DeploymentHandle (`await handle.method.remote(...)`), on an object in
    this process: the routes' code stays the split layout's."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> _InProcessMethod:
        return _InProcessMethod(getattr(self._target, name))


@serve.deployment
class FaceService(FaceAPI.func_or_class):
    """FaceAPI's routes over a FaceGenerator in the same replica; Serve hands it the generator's user_config."""

    async def __init__(self, limits: FaceAPIConfig, device: str):
        self.generator = FaceGenerator.func_or_class(device)
        await super().__init__(InProcessHandle(self.generator), limits)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.generator.reconfigure(user_config)
