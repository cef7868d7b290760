"""Serving the studio: the socket is bound first (ganray/local_web.py), then uvicorn runs."""
from __future__ import annotations

import uvicorn

from ganray.config.studio import LOOPBACK_HOSTS, StudioConfig
from ganray.local_web import listen, page_url
from ganray.studio.app import build_app
from ganray.studio.output import StudioOutput


def serve(output: StudioOutput, cfg: StudioConfig) -> None:
    """Serve until interrupted."""
    sock = listen(cfg.host, cfg.port, "studio host/port", backlog=512)
    output.start_filter_index()
    print(f"[ganray studio] {output.url}: {output.total} faces in {len(output.shards)} shards", flush=True)
    for error in (s.error for s in output.shards if s.error):
        print(f"[ganray studio] warning: {error}", flush=True)
    if cfg.api_key is None and cfg.host not in LOOPBACK_HOSTS:
        print(f"[ganray studio] warning: listening on {cfg.host} without an API key: anyone who can reach it "
              "can look at every face (set GANRAY_API_KEY)", flush=True)
    print(f"[ganray studio] open {page_url(cfg.host, sock)}" + (" (API key required: X-API-Key)"
                                                                if cfg.api_key else ""), flush=True)
    config = uvicorn.Config(build_app(output, cfg), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
