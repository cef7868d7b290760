"""The face API over real HTTP and real gRPC on 127.0.0.1, on the session's real local Ray.

Five applications share one Serve instance, each under its own route prefix (and, over gRPC, its
name in the `application` metadata):
  /main      the API as configured for users (with an API key), serving alias `production`;
  /reload    alias `staging`, polled fast, its key from $GANRAY_API_KEY: hot reload and failed reload;
  /overload  tiny queues and a generator that waits for batches that never fill: 503 + Retry-After;
  /arch      alias `arch`: hot reload from a DCGAN version to a StyleGAN2 version;
  /metrics   like /main, with no traffic but the metrics test's: its counts on Ray's Prometheus
             endpoint are exactly what that test sent.
Models are tiny conditional DCGANs (32 px, g_width 8) with random weights in a temp registry, and
one tiny conditional StyleGAN2 (with noise on and a tracked average w, so psi and noise matter); the
StyleGAN2 bulk job's own tests are in tests/test_generate_stylegan2.py.
"""
from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import grpc
import httpx
import pytest
import yaml
from conftest import REPO, free_ports
from tiny_generators import ATTRIBUTES, RESOLUTION, TINY, push_random_model, push_random_stylegan2

from ganray.config import FaceServiceConfig, ServeJob, load_config
from ganray.data.hf_features import to_ganray_table
from ganray.images import encode_png
from ganray.models.face import labels_for_conditions, render_faces, resolve_conditions, resolve_precision
from ganray.registry import Registry

MAIN_KEY = "main-secret"
ENV_KEY = "env-secret"
MAX_SEED = 10**6
MAX_BODY = 1024  # the main application's api.max_body_bytes


def expected_pngs(registry: Registry, version: str, seeds: list[int], psi: float,
                  conditions: dict[str, str] | None = None, precision: str = "auto",
                  mix_seeds: list[int] | None = None, crossover: int | None = None) -> list[bytes]:
    """What the bulk job writes for these faces: render_faces + encode_png, in one offline batch
    (tests/test_generate_stylegan2.py holds the bulk job to these bytes)."""
    generator = registry.load_generator(version).generator
    labels = labels_for_conditions(generator, conditions, len(seeds), seeds=seeds)
    return [encode_png(image) for image in render_faces(generator, seeds, psi, labels, precision,
                                                        mix_seeds=mix_seeds, crossover=crossover)]


def corrupt_weights(registry_url: str, version: str) -> None:
    """Overwrite every weights file of `version` with garbage, as a broken upload would leave it."""
    files = [p for p in Path(registry_url).rglob("*") if p.is_file() and version in p.parts
             and p.suffix in (".safetensors", ".pt", ".bin")]
    assert files, f"no weights file found for {version} under {registry_url}"
    for path in files:
        path.write_bytes(b"not a weights file" * 10)


def app_config(**sections) -> FaceServiceConfig:
    """Small replicas (the session's Ray has 2 CPUs, shared by three applications)."""
    base = {
        "generator": {"num_cpus": 0.2, "max_batch_size": 16, "batch_wait_timeout_s": 0.005},
        "ingress": {"num_cpus": 0.1},
        "api": {"max_count": 8},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return FaceServiceConfig.model_validate(base)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("registry"))
    reg = Registry(url)
    versions = [push_random_model(reg, init_seed) for init_seed in (1, 2, 3)]
    reg.promote(versions[0], "production")
    reg.promote(versions[0], "staging")
    return reg, url, versions


@pytest.fixture(scope="module")
def bulk_faces(ray_session, registry, tmp_path_factory):
    """A real tiny bulk job's Parquet rows (`ganray generate` on the same model and face parameters).

    It runs before the Serve applications start: its Ray Data actor and tasks need the CPUs that
    the replicas would otherwise hold.
    """
    import pyarrow.parquet as pq

    from ganray.config import GenerateJob
    from ganray.generate.job import run_generate
    from ganray.generate.output import HUB_DIR

    _, url, _ = registry
    output = tmp_path_factory.mktemp("bulk") / "faces"
    job = GenerateJob.model_validate({"registry": {"url": url}, "generate": {
        "model": "production", "output": str(output), "count": 6, "shard_size": 6, "format": "parquet",
        "psi": 0.7, "conditions": {"age": "old"}, "seed_offset": 40, "batch_size": 4}})
    run_generate(job, log=lambda line: None)
    return to_ganray_table(pq.read_table(output / HUB_DIR)).to_pylist()


@pytest.fixture(scope="module")
def stylegan2_version(registry):
    """A tiny StyleGAN2 in the registry (alias `arch` starts on the first DCGAN version)."""
    reg, _, versions = registry
    version = push_random_stylegan2(reg, init_seed=7)
    reg.promote(versions[0], "arch")
    return version


MIX_SEEDS, CROSSOVER = [90, 91, 92, 93], 3  # style mixing of seeds 60..63 (num_ws is 8 at 32 px)


@pytest.fixture(scope="module")
def service(ray_session, registry, bulk_faces, stylegan2_version):
    """The applications; yields their base URLs, and the gRPC target under "grpc". Deletes only them at the end."""
    import ray
    from ray import serve

    from ganray.serve.app import build_app

    from ganray.serve.grpc_ingress import SERVICER_FUNCTION, grpc_options

    _, url, _ = registry
    client = serve.context._get_global_client(raise_if_no_controller_running=False)
    if client is not None and SERVICER_FUNCTION not in ray.get(
            client._controller.get_grpc_config.remote()).grpc_servicer_functions:
        serve.shutdown()  # an earlier module's Serve, started without the face API's gRPC service
    http_port, grpc_port = free_ports(2)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(grpc_port))
    # If an earlier test module already started Serve with gRPC, it keeps its ports: ask Serve which.
    client = serve.context._get_global_client()
    port = client.http_config.port
    grpc_port = ray.get(client._controller.get_grpc_config.remote()).port
    with pytest.MonkeyPatch.context() as env:  # build_app reads $GANRAY_API_KEY when the config has no key
        env.delenv("GANRAY_API_KEY", raising=False)
        main_app = build_app(app_config(model={"registry": url, "poll_interval_s": 0.5},
                                        api={"api_key": MAIN_KEY, "max_seed": MAX_SEED,
                                             "max_body_bytes": MAX_BODY}))
        overload_app = build_app(app_config(
            layout="split",  # two bounded queues: the proxy's in front of the ingress, the ingress's in front of the model
            model={"registry": url},
            # Batches of 4 never fill (at most 2 requests reach the replica): each waits 0.5 s.
            generator={"max_batch_size": 4, "batch_wait_timeout_s": 0.5, "max_ongoing_requests": 2,
                       "max_queued_requests": 1},
            ingress={"max_ongoing_requests": 4, "max_queued_requests": 2},
            api={"max_count": 4, "retry_after_s": 2},
        ))
        env.setenv("GANRAY_API_KEY", ENV_KEY)
        reload_app = build_app(app_config(model={"registry": url, "alias": "staging", "poll_interval_s": 0.3}))
        arch_app = build_app(app_config(model={"registry": url, "alias": "arch", "poll_interval_s": 0.3}))
        metrics_app = build_app(app_config(model={"registry": url, "poll_interval_s": 0}, api={"api_key": MAIN_KEY}))
    apps = {"main": main_app, "reload": reload_app, "overload": overload_app, "arch": arch_app,
            "metrics": metrics_app}
    # All at once: their replicas start in parallel.
    serve.run_many([serve.RunTarget(app, name=f"test-serve-{name}", route_prefix=f"/{name}")
                    for name, app in apps.items()])
    yield {**{name: f"http://127.0.0.1:{port}/{name}" for name in apps}, "grpc": f"127.0.0.1:{grpc_port}"}
    for name in apps:
        serve.delete(f"test-serve-{name}")


@pytest.fixture(scope="module")
def main(service):
    with httpx.Client(base_url=service["main"], headers={"X-API-Key": MAIN_KEY}, timeout=30) as client:
        yield client


def assert_422_names(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, (response.status_code, response.text)
    detail = response.json()["detail"]
    named = [e for e in detail if field in [str(p) for p in e["loc"]] or field in e["msg"]]
    assert named, f"no error names {field!r}: {detail}"


# ---------------------------------------------------------------------------------------------
# Endpoints, and the same bytes as the bulk job


def test_face_png_is_the_bulk_jobs_bytes(main, registry):
    reg, _, versions = registry
    r = main.get("/v1/faces/7.png", params={"psi": 0.7, "age": "old"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-model-version"] == versions[0]
    assert r.headers["x-seed"] == "7" and float(r.headers["x-psi"]) == 0.7
    conditions = dict(parse_qsl(r.headers["x-conditions"]))
    assert conditions["age"] == "old" and conditions["smile"] in ATTRIBUTES["smile"]  # drawn from the seed
    assert r.content == expected_pngs(reg, versions[0], [7], 0.7, {"age": "old"})[0]


def test_face_png_is_a_real_bulk_jobs_bytes(main, bulk_faces, registry):
    _, _, versions = registry
    assert len(bulk_faces) == 6
    for row in bulk_faces:
        # Only the fixed condition is asked for: the open one (smile) must be drawn the same way.
        r = main.get(f"/v1/faces/{row['seed']}.png", params={"psi": row["psi"], "age": "old"})
        assert r.status_code == 200
        assert r.headers["x-model-version"] == row["model_version"] == versions[0]
        assert dict(parse_qsl(r.headers["x-conditions"])) == json.loads(row["conditions"])
        assert r.content == row["image"]


def test_concurrent_requests_are_batched_without_changing_bytes(main, registry):
    reg, _, versions = registry
    seeds = list(range(100, 124))
    before = main.get("/v1/model").json()["rendered"]  # the one generator replica's counters
    with ThreadPoolExecutor(len(seeds)) as pool:
        responses = list(pool.map(lambda s: main.get(f"/v1/faces/{s}.png", params={"psi": 0.5}), seeds))
    assert [r.status_code for r in responses] == [200] * len(seeds)
    assert [r.content for r in responses] == expected_pngs(reg, versions[0], seeds, 0.5)
    after = main.get("/v1/model").json()["rendered"]
    # Every face rendered once, and @serve.batch put some of them in the same forward pass.
    assert after["faces"] - before["faces"] == len(seeds)
    assert after["batches"] - before["batches"] < len(seeds), (before, after)


def test_post_base64(main, registry):
    reg, _, versions = registry
    r = main.post("/v1/faces", json={"seeds": [1, 2, 3], "psi": 0.5, "conditions": {"smile": "yes"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == versions[0] == r.headers["x-model-version"]
    faces = body["faces"]
    assert [f["seed"] for f in faces] == [1, 2, 3]
    assert all(f["psi"] == 0.5 and f["conditions"]["smile"] == "yes" and f["conditions"]["age"] in ATTRIBUTES["age"]
               for f in faces)
    pngs = [base64.b64decode(f["image_base64"]) for f in faces]
    assert pngs == expected_pngs(reg, versions[0], [1, 2, 3], 0.5, {"smile": "yes"})


def test_post_random_seeds_as_png_urls(main, registry):
    reg, _, versions = registry
    r = main.post("/v1/faces", json={"count": 3, "format": "png"})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    seeds = [f["seed"] for f in faces]
    assert len(seeds) == 3 and all(0 <= s <= MAX_SEED for s in seeds)
    for face in faces:
        assert face["image_base64"] is None and face["psi"] == 1.0  # the configured default_psi
        url = urlsplit(face["url"])
        got = main.get(url.path.removeprefix("/main"), params=dict(parse_qsl(url.query)))
        assert got.status_code == 200
        assert got.content == expected_pngs(reg, versions[0], [face["seed"]], 1.0, face["conditions"])[0]


def test_model_and_health(main, registry, service):
    _, url, versions = registry
    r = main.get("/v1/model")
    assert r.status_code == 200 and r.headers["x-model-version"] == versions[0]
    info = r.json()
    assert info["version"] == versions[0] and info["alias"] == "production" and info["registry"] == url
    assert info["resolution"] == RESOLUTION and info["z_dim"] == TINY.z_dim
    assert info["precision"] == resolve_precision("auto", "cpu")  # the default, as this replica resolved it
    assert info["conditions"] == ATTRIBUTES and info["load_error"] is None
    assert info["limits"] == {"max_count": 8, "max_seed": MAX_SEED, "psi_min": 0.0, "psi_max": 2.0,
                              "default_psi": 1.0}
    assert info["rendered"]["faces"] >= info["rendered"]["batches"] >= 0

    health = httpx.get(f"{service['main']}/healthz")  # open without the key
    assert health.status_code == 200 and health.json() == {"status": "ok", "model_version": versions[0]}
    docs = httpx.get(f"{service['main']}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    openapi = httpx.get(f"{service['main']}/openapi.json").json()
    paths = openapi["paths"]
    assert {"/v1/faces/{seed}.png", "/v1/faces", "/v1/model", "/healthz"} <= set(paths)
    # The docs declare the key header on the endpoints that need it (the Authorize button of /docs).
    assert openapi["components"]["securitySchemes"]["APIKeyHeader"] == {"type": "apiKey", "in": "header",
                                                                       "name": "X-API-Key"}
    needs_key = {(path, method) for path, methods in paths.items() for method, op in methods.items()
                 if op.get("security") == [{"APIKeyHeader": []}]}
    assert needs_key == {("/v1/faces/{seed}.png", "get"), ("/v1/faces", "post"), ("/v1/model", "get")}


def test_api_key(service):
    base = service["main"]
    wrong = httpx.get(f"{base}/v1/faces/1.png", headers={"X-API-Key": "wrong"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "ApiKey"
    assert wrong.json() == {"detail": "missing or wrong API key (header X-API-Key)"}
    assert httpx.get(f"{base}/v1/faces/1.png").status_code == 401
    assert httpx.get(f"{base}/v1/model").status_code == 401
    assert httpx.post(f"{base}/v1/faces", json={"count": 1}).status_code == 401
    # The key is checked before anything else about the request: the path, the query, the body.
    assert httpx.get(f"{base}/v1/faces/-1.png").status_code == 401
    assert httpx.get(f"{base}/no/such/path").status_code == 401
    assert httpx.post(f"{base}/v1/faces", content=b'{"count": 2,',
                      headers={"Content-Type": "application/json"}).status_code == 401
    assert httpx.get(f"{base}/v1/faces/1.png", headers={"X-API-Key": MAIN_KEY}).status_code == 200
    # /reload has no key in its config: build_app took it from $GANRAY_API_KEY.
    assert httpx.get(f"{service['reload']}/v1/model").status_code == 401
    assert httpx.get(f"{service['reload']}/v1/model", headers={"X-API-Key": ENV_KEY}).status_code == 200


@pytest.mark.parametrize("key", [
    "clé".encode("latin-1"),                  # one byte above ASCII
    "clé".encode("utf-8"),                    # two
    MAIN_KEY.encode() + "é".encode("utf-8"),  # the right key, then more
    "é".encode("utf-8") + MAIN_KEY.encode(),
])
def test_non_ascii_api_key_is_a_plain_401(service, key):
    base = service["main"]
    wrong = httpx.get(f"{base}/v1/model", headers={"X-API-Key": "wrong"})
    r = httpx.get(f"{base}/v1/model", headers={"X-API-Key": key})
    assert (r.status_code, r.json(), r.headers["www-authenticate"]) == (
        wrong.status_code, wrong.json(), wrong.headers["www-authenticate"]) == (401, wrong.json(), "ApiKey")
    assert httpx.get(f"{base}/v1/model", headers={"X-API-Key": MAIN_KEY}).status_code == 200  # still up


# ---------------------------------------------------------------------------------------------
# Request body size


def post_without_the_whole_body(base: str, headers: dict[str, str], body_start: bytes = b"") -> tuple[int, bytes]:
    """POST /v1/faces with these headers and the start of a body, whose rest is never sent.

    Any answer shows the server answered without waiting for the body (else it times out).
    """
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("POST", f"{url.path}/v1/faces")
        for name, value in {"Content-Type": "application/json", **headers}.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(body_start)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def chunk(data: bytes) -> bytes:
    """One chunk of a body sent with Transfer-Encoding: chunked."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def json_body_of(size: int) -> bytes:
    """A valid POST /v1/faces body (one face, rendered by nothing: format=png) of exactly `size` bytes."""
    body = b'{"seeds": [3], "format": "png"}'
    return body + b" " * (size - len(body))


def test_body_over_the_limit_is_413_before_it_is_read(service):
    base = service["main"]
    too_large = {"detail": f"request body larger than {MAX_BODY} bytes (api.max_body_bytes)"}
    key = {"X-API-Key": MAIN_KEY}
    # Content-Length over the limit: answered from the headers alone.
    status, body = post_without_the_whole_body(base, {**key, "Content-Length": str(MAX_BODY + 1)})
    assert (status, json.loads(body)) == (413, too_large)
    # The key comes first: without it, a 401 (nothing about the body, not even its limit).
    status, _ = post_without_the_whole_body(base, {"Content-Length": str(MAX_BODY + 1)})
    assert status == 401
    # Chunked, no Content-Length: counted while read; the chunk that crosses the limit ends it.
    status, body = post_without_the_whole_body(base, {**key, "Transfer-Encoding": "chunked"},
                                                chunk(b" " * 1000) + chunk(b" " * (MAX_BODY + 1 - 1000)))
    assert (status, json.loads(body)) == (413, too_large)


def test_body_limit_edges(main):
    def chunks(body: bytes):
        yield from (body[i:i + 100] for i in range(0, len(body), 100))

    for size, status in [(MAX_BODY, 200), (MAX_BODY + 1, 413)]:
        body = json_body_of(size)
        r = main.post("/v1/faces", content=body, headers={"Content-Type": "application/json"})
        assert r.request.headers["content-length"] == str(size)
        assert r.status_code == status, (size, r.text)
        r = main.post("/v1/faces", content=chunks(body), headers={"Content-Type": "application/json"})
        assert r.request.headers["transfer-encoding"] == "chunked" and "content-length" not in r.request.headers
        assert r.status_code == status, (size, r.text)
        if status == 200:
            assert [f["seed"] for f in r.json()["faces"]] == [3]


# ---------------------------------------------------------------------------------------------
# Bad input: 422 naming the field, and the service stays up


@pytest.mark.parametrize("path, params, field", [
    ("/v1/faces/1.png", {"hair": "red"}, "hair"),                # unknown condition
    ("/v1/faces/1.png", {"age": "ancient"}, "age"),              # unknown value
    ("/v1/faces/1.png", [("age", "old"), ("age", "young")], "age"),  # a condition twice
    ("/v1/faces/1.png", {"psi": "2.5"}, "psi"),
    ("/v1/faces/1.png", {"psi": "-0.1"}, "psi"),
    ("/v1/faces/1.png", {"psi": "abc"}, "psi"),
    ("/v1/faces/-1.png", {}, "seed"),
    (f"/v1/faces/{2**63}.png", {}, "seed"),                      # beyond int64
    (f"/v1/faces/{MAX_SEED + 1}.png", {}, "seed"),               # beyond the configured max_seed
    ("/v1/faces/abc.png", {}, "seed"),
])
def test_bad_get_is_422_naming_the_field(main, path, params, field):
    assert_422_names(main.get(path, params=params), field)


@pytest.mark.parametrize("body, field", [
    ({"conditions": {"hair": "red"}}, "hair"),
    ({"conditions": {"age": "ancient"}}, "age"),
    ({"psi": 2.01}, "psi"),
    ({"seeds": [-1]}, "seeds"),
    ({"seeds": [2**63]}, "seeds"),
    ({"seeds": [MAX_SEED + 1]}, "seeds"),
    ({"seeds": [1.5]}, "seeds"),
    ({"seeds": []}, "seeds"),
    ({"count": 9}, "count"),                                     # over max_count
    ({"seeds": list(range(9))}, "seeds"),
    ({"count": 0}, "count"),
    ({"count": 2, "seeds": [1, 2, 3]}, "count"),
    ({"format": "jpeg"}, "format"),
    ({"colour": "blue"}, "colour"),                              # unknown field
])
def test_bad_post_is_422_naming_the_field(main, body, field):
    assert_422_names(main.post("/v1/faces", json=body), field)


def test_malformed_json_is_422_and_the_service_stays_up(main):
    r = main.post("/v1/faces", content=b'{"count": 2,', headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"
    assert main.get("/v1/faces/1.png").status_code == 200
    assert main.get("/healthz").status_code == 200


# ---------------------------------------------------------------------------------------------
# Overload


def test_overload_is_503_with_retry_after_and_recovers(service):
    base = service["overload"]
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda s: client.get(f"{base}/v1/faces/{s}.png"), range(24)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    # Serve counts a request as queued while it is being assigned, so it may turn away more than
    # the bounds strictly need (see ray/serve/_private/router.py): at least one gets through.
    assert rejected and 200 in statuses, statuses
    assert all(r.headers.get("retry-after") == "2" for r in rejected), [dict(r.headers) for r in rejected]
    # Both bounded queues turned requests away: the proxy's in front of the ingress (max 2) and the
    # ingress's in front of the generator (max 1).
    messages = {r.text for r in rejected}
    assert any("max_queued_requests=2" in m for m in messages), messages
    assert any("max_queued_requests=1" in m for m in messages), messages
    assert httpx.get(f"{base}/v1/faces/1.png", timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------------
# Hot reload


def wait_for(predicate, timeout_s: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_promotion_is_picked_up_without_failing_requests_and_a_bad_version_is_refused(service, registry):
    reg, url, (v1, v2, v3) = registry
    headers = {"X-API-Key": ENV_KEY}
    client = httpx.Client(base_url=service["reload"], headers=headers, timeout=30)
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer():  # a steady stream of requests across the swap
        with httpx.Client(base_url=service["reload"], headers=headers, timeout=30) as own_client:
            seed = 0
            while not stop.is_set():
                r = own_client.get(f"/v1/faces/{seed % 50}.png")
                seen.append((r.status_code, r.headers.get("x-model-version")))
                seed += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) > 10, what="requests before the promotion")
        reg.promote(v2, "staging")
        wait_for(lambda: client.get("/v1/model").json()["version"] == v2, what="the new version to serve")
        wait_for(lambda: sum(v == v2 for _, v in seen) > 10, what="requests after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert {status for status, _ in seen} == {200}, f"failed requests during the swap: {seen}"
    versions = [v for _, v in seen]
    assert set(versions) == {v1, v2}
    r = client.get("/v1/faces/5.png", params={"psi": 0.8})
    assert r.headers["x-model-version"] == v2
    assert r.content == expected_pngs(reg, v2, [5], 0.8)[0]

    # A version whose weights are broken: the old one keeps serving, the error is visible.
    corrupt_weights(url, v3)
    reg.promote(v3, "staging")
    info = wait_for(lambda: (i := client.get("/v1/model").json())["load_error"] and i, what="the load error")
    assert info["version"] == v2 and info["load_error"]["version"] == v3 and info["load_error"]["error"]
    r = client.get("/v1/faces/5.png", params={"psi": 0.8})
    assert r.status_code == 200 and r.headers["x-model-version"] == v2
    assert r.content == expected_pngs(reg, v2, [5], 0.8)[0]

    # Moving the alias back to what serves clears the error.
    reg.promote(v2, "staging")
    wait_for(lambda: client.get("/v1/model").json()["load_error"] is None, what="the error to clear")
    client.close()


# One face per combination of the attributes: the conditions the StyleGAN2 is asked for after the swap.
STYLEGAN2_FACES = [(60 + i, {"age": age, "smile": smile})
                   for i, (age, smile) in enumerate((a, m) for a in ATTRIBUTES["age"] for m in ATTRIBUTES["smile"])]


def test_hot_reload_from_dcgan_to_stylegan2_serves_the_bulk_jobs_bytes(service, registry, stylegan2_version):
    reg, _, versions = registry
    version = stylegan2_version
    headers = {"X-API-Key": ENV_KEY}
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer():  # requests across the swap
        with httpx.Client(base_url=service["arch"], headers=headers, timeout=30) as own_client:
            seed = 0
            while not stop.is_set():
                r = own_client.get(f"/v1/faces/{seed % 20}.png")
                seen.append((r.status_code, r.headers.get("x-model-version")))
                seed += 1

    with httpx.Client(base_url=service["arch"], headers=headers, timeout=30) as client:
        assert client.get("/v1/model").json()["version"] == versions[0]
        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            wait_for(lambda: len(seen) > 3, what="requests before the promotion")
            reg.promote(version, "arch")
            wait_for(lambda: client.get("/v1/model").json()["version"] == version, what="the StyleGAN2 version")
            wait_for(lambda: sum(v == version for _, v in seen) > 3, what="requests after the swap")
        finally:
            stop.set()
            thread.join()
        assert {status for status, _ in seen} == {200} and {v for _, v in seen} == {versions[0], version}
        info = client.get("/v1/model").json()
        assert info["load_error"] is None
        for seed, conditions in STYLEGAN2_FACES:
            r = client.get(f"/v1/faces/{seed}.png", params={"psi": 0.7, **conditions})
            assert r.status_code == 200 and r.headers["x-model-version"] == version
            assert r.content == expected_pngs(reg, version, [seed], 0.7, conditions)[0]


def test_style_mixing_over_http_is_the_bulk_jobs_bytes(service, registry, stylegan2_version, main):
    reg, _, _ = registry
    version = stylegan2_version
    seeds = [60, 61, 62, 63]
    generator = reg.load_generator(version).generator
    conditions = [resolve_conditions(generator, {"age": "old"}, seed) for seed in seeds]  # smile from the seed
    mixed = expected_pngs(reg, version, seeds, 0.7, {"age": "old"}, mix_seeds=MIX_SEEDS, crossover=CROSSOVER)
    assert mixed != expected_pngs(reg, version, seeds, 0.7, {"age": "old"})  # the mix shows
    reg.promote(version, "arch")  # (the hot-reload test has done so already when the whole module runs)
    with httpx.Client(base_url=service["arch"], headers={"X-API-Key": ENV_KEY}, timeout=30) as client:
        wait_for(lambda: client.get("/v1/model").json()["version"] == version, what="the StyleGAN2 version")
        assert client.get("/v1/model").json()["num_ws"] == 8
        for seed, mix_seed, face_conditions, png in zip(seeds, MIX_SEEDS, conditions, mixed):
            r = client.get(f"/v1/faces/{seed}.png",
                           params={"psi": 0.7, "age": "old", "mix_seed": mix_seed, "crossover": CROSSOVER})
            assert r.status_code == 200, r.text
            assert r.headers["x-mix-seed"] == str(mix_seed) and r.headers["x-crossover"] == str(CROSSOVER)
            assert dict(parse_qsl(r.headers["x-conditions"])) == face_conditions
            assert r.content == png
        body = {"seeds": seeds, "mix_seeds": MIX_SEEDS, "crossover": CROSSOVER,
                "psi": 0.7, "conditions": {"age": "old"}}
        faces = client.post("/v1/faces", json=body).json()["faces"]
        assert [base64.b64decode(f["image_base64"]) for f in faces] == mixed
        assert [(f["mix_seed"], f["crossover"]) for f in faces] == [(m, CROSSOVER) for m in MIX_SEEDS]
        urls = client.post("/v1/faces", json={**body, "format": "png"}).json()["faces"]
        assert [client.get(f["url"]).content for f in urls] == mixed
        # Crossover 0 is the mix seed's own face; crossover num_ws the seed's.
        first = {"psi": 0.7, **conditions[0]}
        alone = client.get(f"/v1/faces/{MIX_SEEDS[0]}.png", params=first)
        at_zero = client.get(f"/v1/faces/{seeds[0]}.png", params={**first, "mix_seed": MIX_SEEDS[0], "crossover": 0})
        assert at_zero.content == alone.content

        # Bad mixes: a 422 naming the field, and the message says why.
        beyond = client.get("/v1/faces/1.png", params={"mix_seed": 2, "crossover": 9})
        assert_422_names(beyond, "crossover")
        assert "from 0 to 8" in beyond.text
        assert_422_names(client.get("/v1/faces/1.png", params={"mix_seed": 2}), "crossover")
        assert_422_names(client.get("/v1/faces/1.png", params={"crossover": 2}), "mix_seed")
        assert_422_names(client.post("/v1/faces", json={"seeds": [1, 2], "mix_seeds": [3], "crossover": 1}),
                         "mix_seeds")
        assert_422_names(client.post("/v1/faces", json={"count": 1, "mix_seeds": [3], "crossover": 1}), "mix_seeds")
        assert_422_names(client.post("/v1/faces", json={"seeds": [1], "mix_seeds": [3], "crossover": 9,
                                                        "format": "png"}), "crossover")
    # A DCGAN has one latent: nothing to mix.
    dcgan = main.get("/v1/faces/1.png", params={"mix_seed": 2, "crossover": 1})
    assert_422_names(dcgan, "crossover")
    assert "style mixing needs a style-based generator" in dcgan.text
    assert main.get("/v1/model").json()["num_ws"] is None


# ---------------------------------------------------------------------------------------------
# gRPC: the same API over Serve's gRPC proxy


def grpc_client(service, application: str = "main", api_key: str | None = MAIN_KEY):
    from ganray.serve.grpc_client import FaceClient

    return FaceClient(service["grpc"], api_key=api_key, application=f"test-serve-{application}")


def grpc_code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), refused.value.details()


def test_grpc_gives_the_https_bytes(service, main, registry):
    reg, _, versions = registry
    with grpc_client(service) as client:
        face = client.get_face(7, psi=0.7, conditions={"age": "old"})
        http = main.get("/v1/faces/7.png", params={"psi": 0.7, "age": "old"})
        assert face.png == http.content == expected_pngs(reg, versions[0], [7], 0.7, {"age": "old"})[0]
        assert (face.seed, face.psi, face.model_version) == (7, 0.7, http.headers["x-model-version"])
        assert dict(face.conditions) == dict(parse_qsl(http.headers["x-conditions"]))
        assert not face.HasField("mix_seed")

        batch = client.get_faces(seeds=[1, 2, 3], psi=0.5, conditions={"smile": "yes"})
        posted = main.post("/v1/faces", json={"seeds": [1, 2, 3], "psi": 0.5, "conditions": {"smile": "yes"}}).json()
        assert [f.png for f in batch.faces] == [base64.b64decode(f["image_base64"]) for f in posted["faces"]]
        assert [(f.seed, f.psi, dict(f.conditions)) for f in batch.faces] == \
            [(f["seed"], f["psi"], f["conditions"]) for f in posted["faces"]]
        assert batch.model_version == posted["model_version"] == versions[0]
        drawn = client.get_faces(count=2)  # random seeds, returned with the faces
        assert len(drawn.faces) == 2 and all(0 <= f.seed <= MAX_SEED and f.png for f in drawn.faces)

        model, http_model = client.get_model(), main.get("/v1/model").json()
        assert (model.version, model.alias, model.resolution, model.precision) == \
            (http_model["version"], http_model["alias"], http_model["resolution"], http_model["precision"])
        assert {k: list(v.values) for k, v in model.conditions.items()} == http_model["conditions"] == ATTRIBUTES
        assert not model.HasField("num_ws")  # a DCGAN: nothing to mix
        limits = http_model["limits"]
        assert (model.max_count, model.max_seed, model.psi_min, model.psi_max, model.default_psi) == \
            (limits["max_count"], limits["max_seed"], limits["psi_min"], limits["psi_max"], limits["default_psi"])


@pytest.mark.parametrize("call, field", [
    (lambda c: c.get_face(-1), "seed"),
    (lambda c: c.get_face(MAX_SEED + 1), "seed"),                # beyond the configured max_seed
    (lambda c: c.get_face(1, psi=2.5), "psi"),
    (lambda c: c.get_face(1, psi=float("nan")), "psi"),
    (lambda c: c.get_face(1, conditions={"hair": "red"}), "hair"),
    (lambda c: c.get_face(1, conditions={"age": "ancient"}), "age"),
    (lambda c: c.get_face(1, mix_seed=2), "crossover"),
    (lambda c: c.get_face(1, mix_seed=2, crossover=1), "crossover"),  # a DCGAN cannot mix
    (lambda c: c.get_faces(count=9), "count"),                   # over max_count
    (lambda c: c.get_faces(count=0), "count"),
    (lambda c: c.get_faces(seeds=[1, 2], count=3), "count"),
    (lambda c: c.get_faces(seeds=[-1]), "seeds"),
    (lambda c: c.get_faces(seeds=[1], mix_seeds=[2, 3], crossover=1), "mix_seeds"),
])
def test_bad_grpc_request_is_invalid_argument_naming_the_field(service, call, field):
    with grpc_client(service) as client:
        code, details = grpc_code(lambda: call(client))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert field in details, details


def test_grpc_needs_the_api_key_and_overload_is_resource_exhausted(service):
    for key in [None, "wrong", MAIN_KEY[:-1]]:
        with grpc_client(service, api_key=key) as client:
            # The key is checked first: a bad request without it says nothing about the request.
            for call in (lambda: client.get_face(1), lambda: client.get_face(-1), client.get_model):
                code, details = grpc_code(call)
                assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key (metadata x-api-key)")
    with grpc_client(service, "reload", api_key=ENV_KEY) as client:
        assert client.get_model().version  # the key from $GANRAY_API_KEY
    # Full queues (the /overload application's): RESOURCE_EXHAUSTED, at least one answered.
    with grpc_client(service, "overload", api_key=None) as client, ThreadPoolExecutor(24) as pool:
        def call(seed: int) -> grpc.StatusCode:
            try:
                client.get_face(seed)
                return grpc.StatusCode.OK
            except grpc.RpcError as e:
                return e.code()
        codes = list(pool.map(call, range(24)))
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes


# ---------------------------------------------------------------------------------------------
# Metrics on Ray's Prometheus endpoint


def scrape_prometheus() -> dict[tuple[str, frozenset], float]:
    """Every sample on this node's Prometheus endpoint (Ray's metrics export port): (name, labels) -> value."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    text = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_metrics_count_what_was_sent(service):
    from ganray.serve.metrics import EXPORTED

    app = {"application": "test-serve-metrics"}
    key = {"X-API-Key": MAIN_KEY}
    base = service["metrics"]
    get, post = "/v1/faces/{seed}.png", "/v1/faces"
    scrapes_during_load: list[dict] = []
    loading = threading.Event()

    def scrape_while_loading():
        while loading.is_set():
            scrapes_during_load.append(scrape_prometheus())
            time.sleep(0.3)

    def http_get(i: int) -> int:  # 16 faces: 8 asking for age=old, 8 drawing every attribute
        params = {"psi": 0.6, "age": "old"} if i % 2 else {"psi": 0.6}
        return httpx.get(f"{base}/v1/faces/{200 + i}.png", params=params, headers=key, timeout=30).status_code

    loading.set()
    scraper = threading.Thread(target=scrape_while_loading)
    scraper.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(http_get, range(16)))
        with httpx.Client(base_url=base, headers=key, timeout=30) as client:
            posts = [client.post(post, json={"seeds": [300 + i, 400 + i, 500 + i], "conditions": {"smile": "yes"}})
                     for i in range(3)]                                       # 9 faces
            invalid = [client.get("/v1/faces/1.png", params={"psi": 5}) for _ in range(2)]
            unauthenticated = [httpx.get(f"{base}/v1/faces/1.png", timeout=30) for _ in range(3)]
        with grpc_client(service, "metrics") as client:
            grpc_faces = [client.get_face(600 + i, conditions={"age": "young"}) for i in range(2)]
            grpc_faces += list(client.get_faces(seeds=[700, 701, 702]).faces)  # 5 faces over gRPC
            grpc_code(lambda: client.get_face(1, psi=-1))
        with grpc_client(service, "metrics", api_key=None) as client:
            grpc_code(lambda: client.get_model())
    finally:
        loading.clear()
        scraper.join()
    assert statuses == [200] * 16 and [r.status_code for r in posts] == [200] * 3
    assert [r.status_code for r in invalid] == [422] * 2 and [r.status_code for r in unauthenticated] == [401] * 3
    assert len(grpc_faces) == 5 and scrapes_during_load, "no scrape while the load ran"

    latency = EXPORTED["latency"] + "_count"
    expected = {
        (EXPORTED["faces"], "http"): 16 + 9, (EXPORTED["faces"], "grpc"): 5,
        (latency, "http", get, "200"): 16, (latency, "http", post, "200"): 3, (latency, "http", get, "422"): 2,
        (latency, "http", "-", "401"): 3,
        (latency, "grpc", "GetFace", "OK"): 2, (latency, "grpc", "GetFaces", "OK"): 1,
        (latency, "grpc", "GetFace", "INVALID_ARGUMENT"): 1, (latency, "grpc", "GetModel", "UNAUTHENTICATED"): 1,
    }

    def counts(samples: dict) -> dict:
        found = {}
        for what in expected:
            name, protocol, *rest = what
            labels = {"protocol": protocol, **dict(zip(("route", "code"), rest))}
            found[what] = total(samples, name, **app, **labels)
        return found

    # Metrics reach the endpoint at Ray's export interval: poll until they show everything sent.
    deadline, samples = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        samples = scrape_prometheus()
        if counts(samples) == expected and total(samples, EXPORTED["batch_faces"] + "_count", **app) >= 1 \
                and total(samples, EXPORTED["queue_depth"], **app) == 0:
            break
        time.sleep(0.5)
    assert counts(samples) == expected
    rejected = EXPORTED["rejected"]
    assert {(p, r): total(samples, rejected, **app, protocol=p, reason=r)
            for p in ("http", "grpc") for r in ("invalid", "unauthenticated", "overload")} == {
        ("http", "invalid"): 2, ("http", "unauthenticated"): 3, ("http", "overload"): 0,
        ("grpc", "invalid"): 1, ("grpc", "unauthenticated"): 1, ("grpc", "overload"): 0}
    # The condition mix: every face counted once per attribute; requested values apart from drawn ones.
    mix = EXPORTED["condition_faces"]
    assert total(samples, mix, **app, attribute="age") == total(samples, mix, **app, attribute="smile") == 30
    assert total(samples, mix, **app, attribute="age", value="old", source="requested") == 8
    assert total(samples, mix, **app, attribute="age", value="young", source="requested") == 2
    assert total(samples, mix, **app, attribute="smile", value="yes", source="requested") == 9
    assert total(samples, mix, **app, attribute="age", source="drawn") == 16 + 9 + 5 - 8 - 2
    # Batches: at most one per rendering request, none above max_batch_size (16), and the generator
    # holds no request once the load is answered. (Ray reports a histogram's _sum from its buckets'
    # midpoints: only the counts are exact.)
    batches = total(samples, EXPORTED["batch_faces"] + "_count", **app)
    assert 1 <= batches <= 16 + 3 + 2 + 1
    at_most_16 = sum(v for (n, ls), v in samples.items() if n == EXPORTED["batch_faces"] + "_bucket"
                     and set(app.items()) <= ls and float(dict(ls)["le"]) == 16)
    assert at_most_16 == batches
    assert total(samples, EXPORTED["queue_depth"], **app) == 0

    # The Grafana dashboard charts only metrics this endpoint exports.
    exported = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name, _ in samples}
    for panel, metric in dashboard_metrics():
        assert metric in exported, f"panel {panel!r}: {metric} is not on the Prometheus endpoint"


def dashboard_metrics() -> list[tuple[str, str]]:
    """(panel title, metric name) for every metric a panel of cluster/grafana-face-api.json queries."""
    import re

    dashboard = json.loads((REPO / "cluster" / "grafana-face-api.json").read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in re.findall(r"\b(ray_[a-z0-9_]+)", target["expr"]):
                found.append((panel["title"], name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")))
    return found


def test_grafana_dashboard_is_valid_and_charts_the_face_apis_metrics():
    from ganray.serve.metrics import EXPORTED

    dashboard = json.loads((REPO / "cluster" / "grafana-face-api.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "application"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat", "heatmap", "bargauge"}, panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
    charted = {metric for _, metric in dashboard_metrics()}
    assert set(EXPORTED.values()) <= charted, set(EXPORTED.values()) - charted  # a panel for each


# ---------------------------------------------------------------------------------------------
# Config files and the CLI (no Ray needed)


def test_serve_config_file_builds_the_application():
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "configs" / "serve.yaml").read_text()))
    for app in config.applications:
        built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
        assert built is not None


def test_local_config_and_cli_errors(tmp_path, capsys):
    from ganray.cli import main

    job = load_config(ServeJob, REPO / "configs" / "serve_local.yaml")
    assert job.model.alias == "production" and job.http.port == 8000
    assert main(["serve", "--set", "api.max_count=1000"]) == 2  # above generator.max_batch_size
    assert main(["serve", "--set", f"model.registry={tmp_path}"]) == 2  # nothing to serve there
    assert "error" in capsys.readouterr().err


def test_grpc_port_is_off_unless_set(capsys):
    from ganray.cli import main
    from ganray.serve.grpc_ingress import SERVICER_FUNCTION, grpc_options

    job = load_config(ServeJob, REPO / "configs" / "serve_local.yaml")
    assert job.grpc.port is None  # HTTP only by default
    assert load_config(ServeJob, REPO / "configs" / "serve_local.yaml", ["grpc.port=9000"]).grpc.port == 9000
    assert main(["serve", "--set", "grpc.port=0"]) == 2 and "grpc.port" in capsys.readouterr().err
    options = grpc_options(9000)
    assert options.port == 9000 and options.grpc_servicer_functions == [SERVICER_FUNCTION]
    assert [f.__name__ for f in options.grpc_servicer_func_callable] == ["add_FaceServiceServicer_to_server"]


def test_api_config_errors(monkeypatch):
    from ganray.config import ConfigError
    from ganray.serve.app import build_app

    def api(**values) -> FaceServiceConfig:
        return load_config(FaceServiceConfig, base={"api": values})

    assert FaceServiceConfig().api.max_body_bytes == 64 * 1024  # the README's default
    # The body limit must hold a POST of max_count seeds at max_seed: {"seeds": [1000000, ...]}.
    largest_post = len(json.dumps({"seeds": [MAX_SEED] * 8}))
    assert api(max_count=8, max_seed=MAX_SEED, max_body_bytes=largest_post).api.max_body_bytes == largest_post
    with pytest.raises(ConfigError, match=rf"api.max_body_bytes \({largest_post - 1}\) is below the {largest_post}"):
        api(max_count=8, max_seed=MAX_SEED, max_body_bytes=largest_post - 1)
    # The key travels in a header: printable ASCII only, from the config or from $GANRAY_API_KEY.
    for key in ["clé", "two words", "tab\t"]:
        with pytest.raises(ConfigError, match="api.api_key.*printable ASCII"):
            api(api_key=key)
    monkeypatch.setenv("GANRAY_API_KEY", "clé")
    with pytest.raises(ConfigError, match=r"\$GANRAY_API_KEY: api_key must be printable ASCII"):
        build_app(app_config())


def test_app_args_accept_sections_and_dotted_keys():
    from ganray.config import ConfigError
    from ganray.serve.app import parse_app_args

    config = parse_app_args({"model": {"alias": "staging"}, "api.max_count": "4", "generator.max_replicas": "3"})
    assert config.model.alias == "staging" and config.api.max_count == 4 and config.generator.max_replicas == 3
    with pytest.raises(ConfigError, match="api.max_count"):
        parse_app_args({"api.max_count": "0"})
    assert json.loads(config.model_dump_json())["generator"]["max_replicas"] == 3


# ---------------------------------------------------------------------------------------------
# The generator's batches and replicas (no Ray needed)


def test_pngs_are_encoded_off_the_thread_that_runs_the_forward_pass(registry, monkeypatch):
    """A batch's forward pass does not wait for PNG encoding, and the bytes stay the bulk job's."""
    import asyncio
    import sys

    import ray.serve.batching

    from ganray.serve.app import FaceGenerator
    from ganray.serve.schemas import RenderRequest

    reg, url, versions = registry
    generator_class = FaceGenerator.func_or_class
    generator_module = sys.modules[generator_class.__module__]
    # Outside a replica, the batch queue's warning about max_ongoing_requests has no replica to read.
    monkeypatch.setattr(ray.serve.batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                        lambda self: None)
    # @serve.batch keeps one queue per class (a replica holds one instance): put it back as it was
    # after the test, so that the deployment still pickles for the applications built later.
    for method in vars(generator_class).values():
        if hasattr(method, "set_max_batch_size"):
            queue_wrapper = method.set_max_batch_size.__self__
            for name in ("_queue", "max_batch_size", "batch_wait_timeout_s"):
                monkeypatch.setattr(queue_wrapper, name, getattr(queue_wrapper, name))
    forward_threads: set[int] = set()
    encode_threads: set[int] = set()
    render_faces_, encode_png_ = generator_module.render_faces, generator_module.encode_png

    def recorded_render_faces(*args, **kwargs):
        forward_threads.add(threading.get_ident())
        return render_faces_(*args, **kwargs)

    def recorded_encode_png(image):
        encode_threads.add(threading.get_ident())
        return encode_png_(image)

    monkeypatch.setattr(generator_module, "render_faces", recorded_render_faces)
    monkeypatch.setattr(generator_module, "encode_png", recorded_encode_png)
    seeds = list(range(20, 26))

    async def render_concurrently():
        replica = FaceGenerator.func_or_class(device="cpu")
        await replica.reconfigure({"model": {"registry": url, "poll_interval_s": 0}, "max_batch_size": 16,
                                   "batch_wait_timeout_s": 0.05, "max_gather_s": 0.05})
        forward_threads.clear(), encode_threads.clear()  # only the requests' (not the load's test render)
        return await asyncio.gather(*(replica.render(RenderRequest((seed,), 0.7)) for seed in seeds))

    results = asyncio.run(render_concurrently())
    assert [result.pngs[0] for result in results] == expected_pngs(reg, versions[0], seeds, 0.7)
    assert forward_threads and encode_threads
    assert not forward_threads & encode_threads, "PNGs were encoded on the thread of the forward pass"


def shipped_serve_configs() -> dict[str, FaceServiceConfig]:
    """Every Serve application config the repository ships, by where it is."""
    from ganray.serve.app import parse_app_args

    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice-face-api.yaml").read_text())
    configs: dict[str, FaceServiceConfig] = {
        "defaults": FaceServiceConfig(),
        "configs/serve_local.yaml": load_config(ServeJob, REPO / "configs" / "serve_local.yaml"),
    }
    for where, serve_config in [("configs/serve.yaml", yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())),
                                ("rayservice-face-api.yaml", yaml.safe_load(manifest["spec"]["serveConfigV2"]))]:
        for app in serve_config["applications"]:
            configs[f"{where}:{app['name']}"] = parse_app_args(app["args"])
    return configs


def test_the_default_layout_is_one_replica_that_runs_with_ganrays_serve_settings(service):
    """The applications above use the default layout: routes and model in one deployment, whose replica
    process got ganray's RAY_SERVE_* settings (read when Serve's modules import there)."""
    import psutil
    from ray import serve

    from ganray.serve.app import REPLICA_ENV

    assert set(serve.status().applications["test-serve-main"].deployments) == {"FaceService"}
    (replica,) = [p for p in psutil.process_iter(["cmdline"])
                  if (p.info["cmdline"] or [""])[0] == "ray::ServeReplica:test-serve-main:FaceService"]
    environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{replica.pid}/environ").read_bytes().split(b"\0")
                   if b"=" in item)
    assert {k.encode(): v.encode() for k, v in REPLICA_ENV.items()}.items() <= environ.items()


def test_every_shipped_generator_can_fill_its_batches():
    # Serve sends a replica at most max_ongoing_requests requests, and the generator runs one batch
    # at a time (@serve.batch's max_concurrent_batches=1): below max_batch_size, single-face requests
    # can never fill a batch (Ray's own rule: max_ongoing_requests >= max_batch_size * max_concurrent_batches).
    for where, config in shipped_serve_configs().items():
        gen = config.generator
        assert gen.max_ongoing_requests >= gen.max_batch_size, (
            f"{where}: generator.max_ongoing_requests ({gen.max_ongoing_requests}) is below "
            f"generator.max_batch_size ({gen.max_batch_size})")


def test_accelerator_type_pins_the_generator_replicas_and_needs_gpus():
    from ganray.config import ConfigError
    from ganray.serve.app import build_app

    def generator_actor_options(**generator) -> tuple[dict, dict]:
        app = build_app(load_config(FaceServiceConfig, base={"layout": "split", "generator": generator}))
        ingress = app._bound_deployment
        return ingress.init_args[0]._bound_deployment.ray_actor_options, ingress.ray_actor_options

    pinned, ingress = generator_actor_options(num_gpus=1, accelerator_type="A100")
    assert pinned["accelerator_type"] == "A100" and pinned["num_gpus"] == 1
    assert "accelerator_type" not in ingress
    assert "accelerator_type" not in generator_actor_options(num_gpus=1)[0]  # any GPU when not pinned
    with pytest.raises(ConfigError, match=r"generator.accelerator_type \('A100'\) needs generator.num_gpus > 0"):
        load_config(FaceServiceConfig, base={"generator": {"accelerator_type": "A100"}})
    with pytest.raises(ConfigError, match="generator.accelerator_type"):
        load_config(FaceServiceConfig, base={"generator": {"num_gpus": 1, "accelerator_type": "A100 80GB"}})


def test_shipped_gpu_generators_are_pinned_to_one_gpu_kind():
    # A face's bytes depend on the GPU kind: replicas on mixed kinds answer one request differently.
    gpu_configs = {where: c for where, c in shipped_serve_configs().items() if c.generator.num_gpus > 0}
    assert gpu_configs, "no shipped config serves on GPUs"
    for where, config in gpu_configs.items():
        assert config.generator.accelerator_type, f"{where}: GPU replicas without generator.accelerator_type"
    # The RayService's GPU group runs on that kind and tells the autoscaler so.
    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice-face-api.yaml").read_text())
    (service,) = [c for where, c in gpu_configs.items() if where.startswith("rayservice-face-api.yaml")]
    (group,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    declared = json.loads(json.loads(group["rayStartParams"]["resources"]))
    assert declared == {f"accelerator_type:{service.generator.accelerator_type}": 1}
    assert group["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-accelerator"].removeprefix(
        "nvidia-").lower() == service.generator.accelerator_type.lower()
    # A launcher cluster with several GPU kinds declares each node type's kind, so that a pinned
    # replica can start the node type it needs.
    gcp = yaml.safe_load((REPO / "cluster" / "gcp.yaml").read_text())
    kinds = {name: [k for k in node["resources"] if k.startswith("accelerator_type:")]
             for name, node in gcp["available_node_types"].items() if node.get("resources", {}).get("GPU")}
    assert len(kinds) > 1 and all(len(k) == 1 for k in kinds.values()), kinds
    assert len({k[0] for k in kinds.values()}) == len(kinds), kinds
