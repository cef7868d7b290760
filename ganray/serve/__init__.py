"""The face API on Ray Serve (`ganray serve`, or `serve deploy configs/serve.yaml`).

app.py: build_app, the application (import_path ganray.serve.app:build_app) in either layout;
single.py: FaceService, routes and model in one replica (the default layout); ingress.py: the FastAPI
routes (the split layout's ingress); request_guard.py: API key and body size before any route;
generator.py: the batched model deployment; grpc_ingress.py and proto/: the same API over gRPC
(grpc_client.py: a client); metrics.py: the operator metrics; schemas.py: what goes over the wire.

Endpoints (OpenAPI docs at /docs):

    GET  /v1/faces/{seed}.png?psi=0.7&age=young   one face as PNG; every query parameter but psi is a
                                                  condition, attributes left out are drawn from the seed
    POST /v1/faces  {"count": 4} | {"seeds": [1, 2]}, "psi", "conditions", "format": "base64" | "png"
                    -> {"model_version", "format", "faces": [{"seed", "psi", "conditions", "model_version",
                        "image_base64" | "url"}]}. Without seeds, random seeds are drawn and returned.
                    format=png renders nothing: each face's `url` is the GET that renders exactly it.
    GET  /v1/model   version, alias, resolution, accepted conditions, limits, last failed reload
    GET  /healthz    200 once a model serves; open even when an API key is set (for load balancers)

Headers: X-Model-Version on every face and model response; X-Seed, X-Psi and X-Conditions (the full,
URL-encoded conditions) on a PNG. Bad input is a 422 in FastAPI's shape whose `loc` names the field;
a full queue is a 503 with Retry-After; a missing or wrong X-API-Key (when one is configured, in the
config or $GANRAY_API_KEY; printable ASCII) is a 401, checked before anything else about the request,
its body included. A body larger than api.max_body_bytes is a 413 (the message names the limit): from
Content-Length before any of the body is read, or, sent chunked, at the first chunk past the limit.
"""
