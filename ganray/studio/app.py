"""The studio's web app: one static page (package data, ganray/studio/static/) and a JSON API.

    GET /                         the page (open: it asks for the API key on a 401)
    GET /static/NAME              its script and style sheet (only those)
    GET /api/info                 the output: size, columns, facets, files present, linked services
    GET /api/facets               each facet's values and counts (exact once every shard is indexed)
    GET /api/faces?page&size&FILTER   a page of faces (PNG as base64) and the match count
    GET /api/faces/INDEX          one face: its whole row and its PNG
    GET /api/render/INDEX?psi=P   the face re-rendered by the configured face API with another psi
    GET /api/files/NAME           the output's card, balance report and evaluation files (only those)

Every /api/ request needs the key in X-API-Key when one is set. A parameter that looks like a path
(a '..' part, a leading '/', a backslash, NUL) is a 404 before any route runs; so is anything not
listed above. A shard or output that cannot be read is a readable message, never a stack trace.
"""
from __future__ import annotations

import hmac
import html
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ganray import storage
from ganray.config.studio import StudioConfig
from ganray.studio.output import OutputError, StudioOutput
from ganray.studio.query import BadFilterValue, UnknownColumn, parse_filter

KEY_HEADER = "X-API-Key"
MAX_PAGE_SIZE = 500
RENDER_TIMEOUT_S = 30
STATIC = {"studio.js": "text/javascript", "studio.css": "text/css"}
# The output's own files the page shows; nothing else under the output is served.
OUTPUT_FILES = {"README.md": "text/markdown; charset=utf-8", "card.json": "application/json",
                "balance_report.json": "application/json", "balance_report.png": "image/png",
                "summary.json": "application/json"}
EVAL_FILE = re.compile(r"eval[A-Za-z0-9_.-]*\.(json|png)")  # `ganray eval` results kept inside the output
INDEX = re.compile(r"\d{1,12}")


def _static(name: str) -> str:
    return resources.files("ganray.studio").joinpath("static", name).read_text(encoding="utf-8")


def looks_like_a_path(text: str) -> bool:
    """A value that could climb out of a folder or name an absolute or Windows path."""
    return ("\x00" in text or "\\" in text or text.startswith(("/", "~"))
            or any(part == ".." for part in text.split("/")))


def _error(request: Request, status: int, message: str) -> Response:
    """JSON for the API, a small readable HTML page elsewhere (never a stack trace)."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status)
    title = "not found" if status == 404 else "ganray studio: error"
    body = (f"<!doctype html><meta charset=utf-8><title>{title}</title><body style='font-family:sans-serif'>"
            f"<h1>{title}</h1><p id=error>{html.escape(message)}</p><p><a href='/'>back to the studio</a></p>")
    return HTMLResponse(body, status)


def build_app(output: StudioOutput, cfg: StudioConfig) -> FastAPI:
    app = FastAPI(title="ganray studio", docs_url=None, redoc_url=None, openapi_url=None)
    key = cfg.api_key.encode("ascii") if cfg.api_key else None
    page, assets = _static("index.html"), {name: _static(name) for name in STATIC}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = urllib.parse.unquote(raw.decode("latin-1").split("?")[0])
        texts = [path.lstrip("/"), *(t for pair in request.query_params.multi_items() for t in pair)]
        if any(looks_like_a_path(t) for t in texts):
            return _error(request, 404, "not found")
        if key is not None and request.url.path.startswith("/api/"):
            given = request.headers.get(KEY_HEADER, "").encode("latin-1")
            if not hmac.compare_digest(given, key):
                return JSONResponse({"detail": f"missing or wrong API key (header {KEY_HEADER})"}, 401,
                                    headers={"WWW-Authenticate": "ApiKey"})
        try:
            return await call_next(request)
        except OutputError as e:
            return _error(request, 500, str(e))
        except Exception as e:  # noqa: BLE001 - the page shows a message; the server log has the rest
            return _error(request, 500, f"the output {output.url} cannot be read: {type(e).__name__}: {e}")

    @app.exception_handler(404)
    async def not_found(request: Request, _exc) -> Response:
        return _error(request, 404, "not found")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        if name not in STATIC:
            return _error(request, 404, "not found")
        return Response(assets[name], media_type=STATIC[name])

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        parameters = output.job.get("parameters", {})
        return {
            "output": output.url, "faces": output.total, "shards": len(output.shards),
            "unreadable_shards": [s.error for s in output.shards if s.error],
            "job_id": output.job.get("job_id"), "model_version": parameters.get("model_version"),
            "columns": {"all": output.columns.names, "facets": output.columns.facets,
                        "ranges": output.columns.ranges, "grid": output.columns.grid_columns()},
            "files": _present_files(output), "page_size": cfg.page_size,
            "face_api": cfg.face_api is not None, "human_eval": cfg.human_eval,
        }

    @app.get("/api/facets")
    def facets() -> dict[str, Any]:
        return output.facet_values()

    @app.get("/api/faces")
    def faces(request: Request, page: str = "0", size: str | None = None) -> Response:
        try:
            flt = parse_filter(request.query_params.multi_items(), output.columns)
        except UnknownColumn as e:
            return _error(request, 404, str(e))
        except BadFilterValue as e:
            return _error(request, 422, str(e))
        if not INDEX.fullmatch(page) or (size is not None and not INDEX.fullmatch(size)):
            return _error(request, 422, "page and size must be whole numbers")
        number, count = int(page), cfg.page_size if size is None else int(size)
        if not 1 <= count <= MAX_PAGE_SIZE:
            return _error(request, 422, f"size must be 1 .. {MAX_PAGE_SIZE}")
        indices, total = output.matching(flt, (number + 1) * count)
        wanted = [int(i) for i in indices[number * count:(number + 1) * count]]
        rows = output.rows(wanted, output.columns.grid_columns(), images=True)
        return JSONResponse({"page": number, "size": count, "total": total, "matched_so_far": len(indices)
                             if total is None else total, "faces": rows})

    @app.get("/api/faces/{index}")
    def face(request: Request, index: str) -> Response:
        number = _row_index(index, output)
        if number is None:
            return _error(request, 404, f"no face {index!r} in this output (0 .. {output.total - 1})")
        row = output.rows([number], output.columns.detail_columns(), images=True)[0]
        return JSONResponse({"face": row, "shard": output.shards[output.locate(number)[0]].rel})

    @app.get("/api/render/{index}")
    def render(request: Request, index: str, psi: str = "1.0") -> Response:
        number = _row_index(index, output)
        if number is None:
            return _error(request, 404, f"no face {index!r} in this output")
        if cfg.face_api is None:
            return _error(request, 404, "no face API configured (ganray studio --api URL)")
        try:
            psi_value = float(psi)
        except ValueError:
            return _error(request, 422, f"psi must be a number, got {psi!r}")
        if not 0 <= psi_value <= 2:
            return _error(request, 422, "psi must be 0 .. 2")
        row = output.rows([number], ["seed", "conditions", "mix_seed", "crossover"])[0]
        return _render(cfg, row, psi_value, request)

    @app.get("/api/files/{name}")
    def output_file(request: Request, name: str) -> Response:
        if name not in _present_files(output):
            return _error(request, 404, f"{name!r} is not one of this output's card, report or evaluation files")
        data = storage.read_bytes(storage.join(output.url, name))
        media = OUTPUT_FILES.get(name) or ("image/png" if name.endswith(".png") else "application/json")
        return Response(data, media_type=media, headers={"Cache-Control": "no-store"})

    return app


def _row_index(text: str, output: StudioOutput) -> int | None:
    if not INDEX.fullmatch(text) or int(text) >= output.total:
        return None
    return int(text)


def _present_files(output: StudioOutput) -> list[str]:
    """The card, report and evaluation files that exist at the output's top level."""
    try:
        names = [u.rstrip("/").rsplit("/", 1)[-1] for u in storage.ls(output.url)]
    except (OSError, FileNotFoundError) as e:
        raise OutputError(f"{output.url} cannot be listed: {e}") from None
    return sorted(n for n in names if n in OUTPUT_FILES or EVAL_FILE.fullmatch(n))


def _render(cfg: StudioConfig, row: dict[str, Any], psi: float, request: Request) -> Response:
    """Ask the face API for this row's face (its seed, conditions and mix) with another psi."""
    query: dict[str, Any] = {"psi": psi}
    try:
        query |= json.loads(row.get("conditions") or "{}")
    except ValueError:
        pass
    if row.get("mix_seed") is not None and row.get("crossover") is not None:
        query |= {"mix_seed": row["mix_seed"], "crossover": row["crossover"]}
    url = f"{cfg.face_api}/v1/faces/{int(row['seed'])}.png?{urllib.parse.urlencode(query)}"
    headers = {KEY_HEADER: cfg.api_key} if cfg.api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=RENDER_TIMEOUT_S) as r:
            data, version = r.read(), r.headers.get("X-Model-Version", "")
    except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode("utf-8", "replace")
        return _error(request, 502, f"the face API answered {e.code}: {detail}")
    except (urllib.error.URLError, OSError) as e:
        return _error(request, 502, f"the face API at {cfg.face_api} cannot be reached: {e}")
    return Response(data, media_type="image/png", headers={"X-Model-Version": version, "Cache-Control": "no-store"})
