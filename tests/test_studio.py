"""`ganray studio` over real HTTP on 127.0.0.1: its pages of faces and filters against the shards read
directly, a face's detail, the output's own files, the API key, path traversal (404), a corrupt shard
and a missing output (readable errors), the face API re-render, and both shard layouts."""
from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn

from ganray.cli import main as cli
from ganray.config.studio import StudioConfig
from ganray.studio.app import build_app
from ganray.data.hf_features import hf_table, to_ganray_table
from ganray.studio.output import OutputError, StudioOutput
from ganray.studio.query import parse_filter
from studio_output import FACES, studio_output

KEY = "studio-key-for-tests"


def shard_rows(out: Path) -> list[dict]:
    """Every row of the output, read straight from its Parquet shards in order (image as PNG bytes)."""
    rows = []
    for path in sorted((out / "data").glob("*.parquet")):
        rows += to_ganray_table(pq.read_table(path)).to_pylist()
    return rows


class Studio:
    """The studio app served by uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, out: Path, **settings):
        self.output = StudioOutput(str(out))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(build_app(self.output, StudioConfig(port=0, **settings)), log_level="critical")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def raw_get(self, path: str) -> tuple[int, str]:
        """GET with the path sent exactly as given (httpx would normalize '..' away)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        conn.close()
        return response.status, body

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def out(ray_session, tmp_path_factory) -> Path:
    return studio_output(tmp_path_factory)


@pytest.fixture(scope="module")
def studio(out):
    server = Studio(out, page_size=10)
    yield server
    server.stop()


def test_pages_hold_every_face_once_with_the_shards_bytes(out, studio):
    info = httpx.get(f"{studio.url}/api/info").json()
    assert info["faces"] == FACES and info["unreadable_shards"] == []
    for facet in ("age_group", "smile", "stratum", "label_age_group"):
        assert facet in info["columns"]["facets"]
    assert {"label_age_group_confidence", "quality_contrast", "quality_sharpness"} <= set(info["columns"]["ranges"])
    truth = shard_rows(out)
    seen = []
    for page in range(3):
        body = httpx.get(f"{studio.url}/api/faces", params={"page": page}).json()
        assert body["total"] == FACES and len(body["faces"]) == (10 if page < 2 else 4)
        for face in body["faces"]:
            row = truth[face["index"]]
            assert base64.b64decode(face["image"]) == row["image"]
            assert (face["seed"], face["stratum"]) == (row["seed"], row["stratum"])
        seen += [face["index"] for face in body["faces"]]
    assert seen == list(range(FACES))
    assert httpx.get(f"{studio.url}/api/faces", params={"page": 3}).json()["faces"] == []


def test_filters_match_the_rows_that_carry_the_values(out, studio):
    truth = shard_rows(out)
    stratum = truth[0]["stratum"]
    bound = sorted(r["quality_contrast"] for r in truth)[FACES // 2]
    cases = [
        ([("eq.stratum", stratum)], lambda r: r["stratum"] == stratum),
        ([("eq.label_age_group", "child"), ("eq.label_age_group", "senior")],
         lambda r: r["label_age_group"] in ("child", "senior")),
        ([("min.quality_contrast", str(bound))], lambda r: r["quality_contrast"] >= bound),
        ([("eq.smile", "yes"), ("max.quality_contrast", str(bound))],
         lambda r: r["smile"] == "yes" and r["quality_contrast"] <= bound),
    ]
    for params, keep in cases:
        expected = [i for i, r in enumerate(truth) if keep(r)]
        assert 0 < len(expected) < FACES, params
        body = httpx.get(f"{studio.url}/api/faces", params=[*params, ("size", "500")]).json()
        assert [f["index"] for f in body["faces"]] == expected, params
        assert body["total"] == len(expected)
    assert httpx.get(f"{studio.url}/api/faces", params={"eq.no_such_column": "x"}).status_code == 404
    assert httpx.get(f"{studio.url}/api/faces", params={"eq.seed": "1"}).status_code == 404  # not a facet
    assert httpx.get(f"{studio.url}/api/faces", params={"min.quality_contrast": "nan"}).status_code == 422
    assert httpx.get(f"{studio.url}/api/faces", params={"size": "0"}).status_code == 422
    facets = httpx.get(f"{studio.url}/api/facets").json()
    if facets["complete"]:
        assert sum(facets["facets"]["stratum"].values()) == FACES


def test_a_face_detail_is_its_whole_row(out, studio):
    truth = shard_rows(out)
    body = httpx.get(f"{studio.url}/api/faces/7").json()
    face = body["face"]
    assert base64.b64decode(face.pop("image")) == truth[7]["image"]
    assert face.pop("index") == 7
    assert face == {k: v for k, v in truth[7].items() if k != "image"}
    assert body["shard"] == "data/train-00001-of-00006.parquet"
    for bad in ("24", "-1", "1.5", "x"):
        assert httpx.get(f"{studio.url}/api/faces/{bad}").status_code == 404


def test_the_outputs_files_and_nothing_else_are_served(out, studio):
    files = httpx.get(f"{studio.url}/api/info").json()["files"]
    assert "balance_report.png" in files and "balance_report.json" in files
    chart = httpx.get(f"{studio.url}/api/files/balance_report.png")
    assert chart.status_code == 200 and chart.content == (out / "balance_report.png").read_bytes()
    for name in ("job.json", "manifest.json", "_manifest", "data"):
        assert httpx.get(f"{studio.url}/api/files/{name}").status_code == 404, name


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%5c..%5cetc%5cpasswd",
    "/api/files/../job.json",
    "/api/files/..%2fjob.json",
    "/api/files/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/files/%2fetc%2fpasswd",
    "/api/faces/..%2f..%2fetc%2fpasswd",
    "/api/faces?eq.stratum=../../../etc/passwd",
    "/api/faces?page=..%2f..%2fetc",
    "/api/faces?eq.%2e%2e%2fx=1",
    "/api/render/1?psi=/etc/passwd",
    "/api/files/card.json%00.png",
    "/..%2f..%2fetc%2fpasswd",
])
def test_path_traversal_in_any_parameter_is_404(studio, path):
    status, body = studio.raw_get(path)
    assert status == 404, (path, status, body[:200])
    assert "root:" not in body and "Traceback" not in body


def test_the_api_key_guards_every_api_call(out):
    server = Studio(out, api_key=KEY)
    try:
        assert httpx.get(f"{server.url}/").status_code == 200  # the page itself asks for the key
        assert httpx.get(f"{server.url}/static/studio.js").status_code == 200
        for path in ("/api/info", "/api/faces", "/api/faces/0", "/api/files/balance_report.png"):
            assert httpx.get(server.url + path).status_code == 401, path
            assert httpx.get(server.url + path, headers={"X-API-Key": KEY + "x"}).status_code == 401, path
            assert httpx.get(server.url + path, headers={"X-API-Key": KEY}).status_code == 200, path
    finally:
        server.stop()


def test_a_corrupt_shard_and_a_vanished_output_are_readable_errors(out, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "data" / "train-00001-of-00006.parquet").write_bytes(b"not parquet at all" * 100)
    server = Studio(copy, page_size=5)
    try:
        info = httpx.get(f"{server.url}/api/info").json()
        assert any("train-00001-of-00006.parquet" in e for e in info["unreadable_shards"])
        assert httpx.get(f"{server.url}/api/faces", params={"page": 0}).status_code == 200  # shard 0 is fine
        for response in (httpx.get(f"{server.url}/api/faces", params={"page": 1}),
                         httpx.get(f"{server.url}/api/faces/6"),
                         httpx.get(f"{server.url}/api/faces", params={"eq.smile": "yes", "page": 3})):
            assert response.status_code == 500
            assert "train-00001-of-00006.parquet cannot be read" in response.json()["detail"]
            assert "Traceback" not in response.text
        shutil.rmtree(copy)
        gone = httpx.get(f"{server.url}/api/faces", params={"page": 3})
        assert gone.status_code == 500 and "cannot be read" in gone.json()["detail"]
        missing_page = httpx.get(f"{server.url}/no/such/page")
        assert missing_page.status_code == 404 and "<h1>not found</h1>" in missing_page.text
    finally:
        server.stop()


def test_a_missing_output_or_bad_option_exits_2(tmp_path, capsys):
    assert cli(["studio", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["studio", str(tmp_path / "empty")]) == 2
    assert "is not a ganray generate output: it has no job.json" in capsys.readouterr().err
    assert cli(["studio", str(tmp_path / "empty"), "--api", "ftp://x"]) == 2
    assert "--api:" in capsys.readouterr().err


class _FaceAPI(http.server.BaseHTTPRequestHandler):
    """Answers GET /v1/faces/SEED.png as the face API does (a PNG, X-Model-Version) and records the request."""

    requests: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        _FaceAPI.requests.append((parts.path, parse_qs(parts.query), self.headers.get("X-API-Key")))
        png = base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("X-Model-Version", "v9")
        self.end_headers()
        self.wfile.write(png)

    def log_message(self, *args):
        pass


def test_a_face_is_re_rendered_through_the_face_api_with_its_seed_and_conditions(out):
    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FaceAPI)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    server = Studio(out, api_key=KEY, face_api=f"http://127.0.0.1:{api.server_address[1]}")
    try:
        truth = shard_rows(out)[5]
        response = httpx.get(f"{server.url}/api/render/5", params={"psi": "0.4"}, headers={"X-API-Key": KEY})
        assert response.status_code == 200 and response.headers["X-Model-Version"] == "v9"
        path, query, key = _FaceAPI.requests[-1]
        assert path == f"/v1/faces/{truth['seed']}.png" and key == KEY
        assert query == {"psi": ["0.4"], **{k: [v] for k, v in json.loads(truth["conditions"]).items()}}
        assert httpx.get(f"{server.url}/api/render/5", params={"psi": "3"},
                         headers={"X-API-Key": KEY}).status_code == 422
        api.shutdown()
        api.server_close()
        down = httpx.get(f"{server.url}/api/render/5", headers={"X-API-Key": KEY})
        assert down.status_code == 502 and "cannot be reached" in down.json()["detail"]
    finally:
        server.stop()


def _tiny_output(root: Path, hf: bool) -> Path:
    """A finished two-shard output (files as a generate job names them) in one table layout."""
    out = root / ("hf" if hf else "plain")
    (out / "parquet").mkdir(parents=True)
    entries = []
    for k in range(2):
        ids = [2 * k, 2 * k + 1]
        columns = {"face_id": ids, "seed": ids, "image": [b"png%d" % i for i in ids], "smile": ["yes", "no"],
                   "label_smile_confidence": [0.9, 0.2]}
        types = {"face_id": pa.int64(), "seed": pa.int64(), "label_smile_confidence": pa.float32()}
        table = hf_table(columns, types, {"smile": ["no", "yes"]}) if hf else pa.table(
            {n: pa.array(v, types.get(n)) for n, v in columns.items()})
        rel = f"parquet/shard-{k:05d}.parquet"
        pq.write_table(table, out / rel)
        entries.append({"shard": k, "rows": 2, "files": {rel: {}}})
    (out / "job.json").write_text(json.dumps({"job_id": "j", "parameters": {"format": "parquet"}}))
    (out / "manifest.json").write_text(json.dumps({"faces": 4, "shards": entries}))
    return out


@pytest.mark.parametrize("hf", [False, True], ids=["plain", "hf-datasets"])
def test_both_shard_layouts_read_as_png_bytes_and_label_strings(tmp_path, hf):
    """The Hugging Face layout (Image struct, ClassLabel indices) reads and filters as the plain one."""
    output = StudioOutput(str(_tiny_output(tmp_path, hf)))
    assert (output.columns.facets, output.columns.ranges) == (["smile"], ["label_smile_confidence"])
    rows = output.rows([3, 0], ["smile", "seed"], images=True)
    assert [(r["index"], r["smile"], base64.b64decode(r["image"])) for r in rows] == [(3, "no", b"png3"),
                                                                                      (0, "yes", b"png0")]
    indices, total = output.matching(parse_filter([("eq.smile", "no")], output.columns), 10)
    assert (list(indices), total) == ([1, 3], 2)
    output.start_filter_index()
    assert output.wait_for_filter_index(30)
    assert output.facet_values()["facets"]["smile"] == {"no": 2, "yes": 2}


def test_a_png_folder_output_shows_and_tars_alone_or_paths_outside_are_refused(tmp_path):
    """format png: rows from the folder's metadata.parquet, pictures from its files."""
    out = tmp_path / "png"
    (out / "png" / "shard-00000").mkdir(parents=True)
    for i in range(2):
        (out / "png" / "shard-00000" / f"{i:09d}.png").write_bytes(b"png%d" % i)
    pq.write_table(pa.table({"face_id": [0, 1], "seed": [0, 1], "smile": ["no", "yes"],
                             "file": [f"png/shard-00000/{i:09d}.png" for i in range(2)]}),
                   out / "png" / "shard-00000" / "metadata.parquet")
    (out / "job.json").write_text(json.dumps({"job_id": "j", "parameters": {"format": "png"}}))
    manifest = {"faces": 2, "shards": [{"shard": 0, "rows": 2, "files": {"png/shard-00000/": {}}}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    output = StudioOutput(str(out))
    assert [(r["smile"], base64.b64decode(r["image"])) for r in output.rows([1, 0], ["smile"], images=True)] == [
        ("yes", b"png1"), ("no", b"png0")]
    for files, message in (({"webdataset/shard-00000.tar": {}}, "has no Parquet rows or PNG folder"),
                           ({"../elsewhere/shard-00000.parquet": {}}, "unsafe path")):
        (out / "manifest.json").write_text(json.dumps({**manifest, "shards": [{"shard": 0, "rows": 2,
                                                                              "files": files}]}))
        with pytest.raises(OutputError, match=message):
            StudioOutput(str(out))


def test_the_card_and_evaluation_files_are_served_when_present(tmp_path):
    out = _tiny_output(tmp_path, hf=False)
    files = {"README.md": b"---\nlicense: apache-2.0\n---\n# faces\n", "card.json": b'{"evaluation": {"fid": 12.5}}',
             "eval-demo.json": b'{"fid": 12.5}', "eval-demo-closest-pairs.png": b"\x89PNG", "notes.txt": b"no"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    server = Studio(out)
    try:
        listed = httpx.get(f"{server.url}/api/info").json()["files"]
        assert listed == sorted(set(files) - {"notes.txt"})
        for name in listed:
            assert httpx.get(f"{server.url}/api/files/{name}").content == files[name]
        assert httpx.get(f"{server.url}/api/files/notes.txt").status_code == 404
    finally:
        server.stop()


def test_the_page_loads_nothing_from_elsewhere():
    page = (Path(__file__).resolve().parents[1] / "ganray" / "studio" / "static" / "index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == ["/static/studio.css", "/static/studio.js"]
    script = (Path(__file__).resolve().parents[1] / "ganray" / "studio" / "static" / "studio.js").read_text()
    assert "http://" not in page + script and "https://" not in page + script


def test_an_output_on_s3_opens_and_pages(s3_bucket, tmp_path):
    """The same reads against a real S3-protocol server (moto on loopback)."""
    import fsspec

    url = f"s3://{s3_bucket}/faces"
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    fs.put(str(_tiny_output(tmp_path, hf=True)) + "/", url + "/", recursive=True)
    server = Studio(url)
    try:
        assert httpx.get(f"{server.url}/api/info").json()["faces"] == 4
        body = httpx.get(f"{server.url}/api/faces", params={"eq.smile": "no"}).json()
        assert [(f["index"], base64.b64decode(f["image"])) for f in body["faces"]] == [(1, b"png1"), (3, b"png3")]
    finally:
        server.stop()


def test_the_page_ships_as_package_data():
    """pyproject's package data names the static folder, so a wheel (not only a checkout) serves the page."""
    import fnmatch
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ganray"]
    folder = repo / "ganray" / "studio" / "static"
    static = sorted(p.relative_to(repo / "ganray").as_posix() for p in folder.iterdir())
    assert static == ["studio/static/index.html", "studio/static/studio.css", "studio/static/studio.js"]
    assert all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in static)
