"""The socket a local web page (the studio, the human-evaluation page) listens on, bound before
uvicorn runs so that port 0 can be printed as the real port."""
from __future__ import annotations

import socket


def listen(host: str, port: int, setting: str, backlog: int) -> socket.socket:
    """A listening TCP socket on host:port; OSError naming `setting` (the config keys) when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"{setting}: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(backlog)  # before the URL is printed: a client that reads it can connect at once
    return sock


def page_url(host: str, sock: socket.socket) -> str:
    """The URL of the page behind `sock` (IPv6 hosts bracketed)."""
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{sock.getsockname()[1]}/"
