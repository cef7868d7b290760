"""Serving the studio: the socket is bound here (port 0 prints the real port), then uvicorn runs."""
from __future__ import annotations

import socket

import uvicorn

from ganray.config.studio import LOOPBACK_HOSTS, StudioConfig
from ganray.studio.app import build_app
from ganray.studio.output import StudioOutput


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"studio host/port: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(512)  # before the URL is printed: a client that reads it can connect at once
    return sock


def serve(output: StudioOutput, cfg: StudioConfig) -> None:
    """Serve until interrupted."""
    sock = listen(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    shown_host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    output.start_filter_index()
    print(f"[ganray studio] {output.url}: {output.total} faces in {len(output.shards)} shards", flush=True)
    for error in (s.error for s in output.shards if s.error):
        print(f"[ganray studio] warning: {error}", flush=True)
    if cfg.api_key is None and cfg.host not in LOOPBACK_HOSTS:
        print(f"[ganray studio] warning: listening on {cfg.host} without an API key: anyone who can reach it "
              "can look at every face (set GANRAY_API_KEY)", flush=True)
    print(f"[ganray studio] open http://{shown_host}:{port}/" + (" (API key required: X-API-Key)"
                                                                 if cfg.api_key else ""), flush=True)
    config = uvicorn.Config(build_app(output, cfg), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
