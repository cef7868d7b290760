"""Faces from the running face API over HTTP (ganray/serve/ingress.py's routes), as any client gets
them: GET /v1/model for what it serves, POST /v1/faces for faces by seed and conditions."""
from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from ganray.images import decode_png


class APIError(RuntimeError):
    """The API could not be reached, refused the key, or answered something other than faces."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status, when the API answered


@dataclass(frozen=True)
class ServedFaces:
    images: np.ndarray              # uint8 (N, H, W, 3), in request order
    conditions: list[dict[str, str]]  # each face's full conditions, as the API rendered them
    versions: list[str]             # the model version of each face (X-Model-Version of its response)


class FaceAPIClient:
    def __init__(self, url: str, api_key_env: str, timeout_s: float):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        key = os.environ.get(api_key_env)
        self.headers = {"X-API-Key": key} if key else {}

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if data else {})}
        request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            if e.code == 401:
                raise APIError(f"{self.url}{path}: 401, the API wants a key in X-API-Key: set the environment "
                               f"variable the monitor reads it from ({detail})", e.code) from None
            raise APIError(f"{self.url}{path}: HTTP {e.code}: {detail}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise APIError(f"cannot reach the face API at {self.url}: {getattr(e, 'reason', e)}") from None
        except ValueError:
            raise APIError(f"{self.url}{path}: the answer is not JSON (is this the face API?)") from None

    def model(self) -> dict[str, Any]:
        """GET /v1/model: version, alias, resolution, conditions, limits."""
        return self._call("/v1/model")

    def faces(self, seeds: list[int], conditions: dict[str, str], psi: float, per_request: int) -> ServedFaces:
        """Faces for `seeds` with `conditions` (attributes left out drawn per seed), `per_request` a POST."""
        images, rendered, versions = [], [], []
        for start in range(0, len(seeds), per_request):
            chunk = seeds[start:start + per_request]
            answer = self._call("/v1/faces", {"seeds": chunk, "psi": psi, "conditions": conditions,
                                              "format": "base64"})
            for face in answer["faces"]:
                images.append(decode_png(base64.b64decode(face["image_base64"])))
                rendered.append(dict(face["conditions"]))
                versions.append(face["model_version"])
        return ServedFaces(np.stack(images), rendered, versions)
