"""The web app: one static page (package data, ganray/eval/human/static/) and a small JSON API.

    GET  /                              the page (no token needed to load it; it asks for one on a 401)
    GET  /static/app.js                 its script
    GET  /api/session                   mode, question, items, resolution
    POST /api/pairs      {"rater"}      issue a new pair to that rater -> {"pair_id", "left", "right"}
    GET  /api/pairs/{pair_id}/{side}.png  the face shown on that side (side: left | right)
    POST /api/choices    {"pair_id", "choice": "left" | "right"}  -> {"recorded": true, "judgments": n}
    GET  /api/results                   what `ganray eval human results` computes

With a token configured, every /api/ call must carry it in the X-Eval-Token header (401 without
it, or with another). Bad input is a 4xx with a message in "detail": 422 for a malformed body,
404 for a pair id the server never issued, 409 for a pair already answered.
"""
from __future__ import annotations

import hmac
import os
from importlib import resources
from typing import Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ganray.eval.human import results as human_results
from ganray.local_web import listen, page_url
from ganray.eval.human.session import HumanEvalSession
from ganray.eval.human.store import PAIR_ID, AlreadyAnswered, UnknownPair

ANONYMOUS = "anonymous"
MAX_RATER_CHARS = 64
TOKEN_HEADER = "X-Eval-Token"
TOKEN_ENV = "GANRAY_EVAL_TOKEN"


class PairRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rater: str = Field("", max_length=MAX_RATER_CHARS, description="the name the rater typed; empty: anonymous")

    @field_validator("rater")
    @classmethod
    def _printable(cls, rater: str) -> str:
        rater = rater.strip()
        if any(not ch.isprintable() for ch in rater):
            raise ValueError("rater must be printable text (no control characters)")
        return rater or ANONYMOUS


class ChoiceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pair_id: str = Field(..., max_length=40)
    choice: Literal["left", "right"]


def _static(name: str) -> str:
    return resources.files("ganray.eval.human").joinpath("static", name).read_text(encoding="utf-8")


def build_app(session: HumanEvalSession, token: str | None = None) -> FastAPI:
    def check_token(x_eval_token: str | None = Header(None)) -> None:
        if token is None:
            return
        if x_eval_token is None:
            raise HTTPException(401, f"this evaluation needs a token: send it in the {TOKEN_HEADER} header")
        if not hmac.compare_digest(x_eval_token.encode(), token.encode()):
            raise HTTPException(401, "wrong token")

    def known_pair(pair_id: str) -> str:
        if not PAIR_ID.fullmatch(pair_id):
            raise HTTPException(404, f"pair {pair_id!r} was not issued by this server")
        return pair_id

    app = FastAPI(title="ganray human evaluation", docs_url=None, redoc_url=None, openapi_url=None)
    page, script = _static("index.html"), _static("app.js")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/static/app.js")
    def app_js() -> Response:
        return Response(script, media_type="text/javascript")

    api = APIRouter(prefix="/api", dependencies=[Depends(check_token)])

    @api.get("/session")
    def describe() -> dict:
        return {**session.describe(), "token_required": token is not None}

    @api.post("/pairs")
    def new_pair(request: PairRequest) -> dict:
        pair_id = session.issue_pair(request.rater)
        return {"pair_id": pair_id, "rater": request.rater,
                "left": f"/api/pairs/{pair_id}/left.png", "right": f"/api/pairs/{pair_id}/right.png"}

    @api.get("/pairs/{pair_id}/{side}.png")
    def face(pair_id: str, side: str) -> Response:
        if side not in ("left", "right"):
            raise HTTPException(404, f"side must be left or right, got {side!r}")
        try:
            data = session.store.image(known_pair(pair_id), side)
        except UnknownPair:
            raise HTTPException(404, f"pair {pair_id!r} was not issued by this server") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    @api.post("/choices")
    def choose(request: ChoiceRequest) -> dict:
        try:
            session.store.choose(known_pair(request.pair_id), request.choice)
        except UnknownPair:
            raise HTTPException(404, f"pair {request.pair_id!r} was not issued by this server: "
                                     "ask for a pair with POST /api/pairs first") from None
        except AlreadyAnswered:
            raise HTTPException(409, f"pair {request.pair_id!r} is already answered") from None
        return {"recorded": True, **session.store.counts()}

    @api.get("/results")
    def results() -> dict:
        return human_results.compute(session.store.judgments(), session.cfg.prior_wins)

    app.include_router(api)
    return app



def token_of(configured: str | None) -> str | None:
    """The token: human.token, else $GANRAY_EVAL_TOKEN, else None (no token)."""
    return configured or os.environ.get(TOKEN_ENV) or None


def serve(session: HumanEvalSession, host: str, port: int, token: str | None) -> None:
    """Serve until interrupted (the socket bound first: port 0 is printed as the real port)."""
    sock = listen(host, port, "human.host/human.port", backlog=2048)
    print(f"[ganray eval human] {session.cfg.mode}: {', '.join(session.describe()['items'])}; judgments -> "
          f"{session.cfg.db}", flush=True)
    print(f"[ganray eval human] open {page_url(host, sock)}"
          + (" (token required: X-Eval-Token)" if token else ""), flush=True)
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[ganray eval human] warning: listening on {host} without a token: anyone who can reach it can "
              "vote (set human.token or $GANRAY_EVAL_TOKEN)", flush=True)
    config = uvicorn.Config(build_app(session, token), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
