"""A Python client of the face API's gRPC service (ganray/serve/proto/face.proto).

    from ganray.serve.grpc_client import FaceClient

    with FaceClient("127.0.0.1:9000", api_key="secret") as client:
        face = client.get_face(42, psi=0.8, conditions={"age": "young"})
        open("face.png", "wb").write(face.png)        # the bytes GET /v1/faces/42.png?psi=0.8&age=young gives
        batch = client.get_faces(seeds=[1, 2, 3], conditions={"smile": "yes"})
        print(client.get_model().conditions)

A refused call raises grpc.RpcError: `.code()` is INVALID_ARGUMENT (bad input, `.details()` names
the field), UNAUTHENTICATED (missing or wrong key) or RESOURCE_EXHAUSTED (queues full: retry later).
Other languages: generate a client from the .proto, and send the key as `x-api-key` metadata.
"""
from __future__ import annotations

import grpc

from ganray.serve.proto import face_pb2, face_pb2_grpc

__all__ = ["FaceClient"]


class FaceClient:
    """FaceService over one channel. `application`: the Serve application's name, needed only when
    the Serve instance runs more than one application."""

    def __init__(self, target: str, api_key: str | None = None, application: str | None = None,
                 timeout_s: float = 30.0):
        self._channel = grpc.insecure_channel(target)
        self._stub = face_pb2_grpc.FaceServiceStub(self._channel)
        self._metadata = ([("x-api-key", api_key)] if api_key else []) + \
            ([("application", application)] if application else [])
        self._timeout_s = timeout_s

    def get_face(self, seed: int, psi: float | None = None, conditions: dict[str, str] | None = None,
                 mix_seed: int | None = None, crossover: int | None = None) -> face_pb2.Face:
        request = face_pb2.FaceRequest(seed=seed, psi=psi, conditions=conditions or {}, mix_seed=mix_seed,
                                       crossover=crossover)
        return self._stub.GetFace(request, metadata=self._metadata, timeout=self._timeout_s)

    def get_faces(self, seeds: list[int] | None = None, count: int | None = None, psi: float | None = None,
                  conditions: dict[str, str] | None = None, mix_seeds: list[int] | None = None,
                  crossover: int | None = None) -> face_pb2.FacesReply:
        request = face_pb2.FacesRequest(count=count, seeds=seeds or [], psi=psi, conditions=conditions or {},
                                        mix_seeds=mix_seeds or [], crossover=crossover)
        return self._stub.GetFaces(request, metadata=self._metadata, timeout=self._timeout_s)

    def get_model(self) -> face_pb2.ModelReply:
        return self._stub.GetModel(face_pb2.ModelRequest(), metadata=self._metadata, timeout=self._timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "FaceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
