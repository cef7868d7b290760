"""A TCP proxy on loopback in front of the S3 server, which a test can make go away mid-request.

Every S3 client of the test session (s3fs and pyarrow in the driver, Ray workers, Serve replicas)
reaches the S3 server through it (conftest.py points AWS_ENDPOINT_URL here). It passes bytes
through untouched until a test arms a fault:

- `cut_at(pattern)`: the next request whose request line matches `pattern` (a regex over bytes,
  e.g. rb"PUT /bucket/.*/shard-00001") is forwarded only partly — its request line, headers and
  at most `partial_bytes` more — and then the endpoint goes away: every open connection is reset
  and new connections are refused (the listening socket closes), as when the server dies in the
  middle of a write. The S3 server itself never sees a complete request, so nothing of that write
  is stored.
- `down()`: the same, at once.
- `stall()`: the endpoint accepts connections and takes requests but never answers (what a
  network partition looks like to a client); `stalled_requests` lists the request lines it swallowed.
- `up()`: listening again on the same port, passing everything through; the S3 server still holds
  every object written before.

The fault is real at the socket level: clients see a reset connection, then "connection refused",
and their own retry logic decides what happens; nothing inside ganray, s3fs or botocore is patched.
"""
from __future__ import annotations

import re
import socket
import threading

BUFFER = 65536


class FaultProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.host = host
        self.upstream = (host, upstream_port)
        probe = socket.socket()
        probe.bind((host, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._pattern: re.Pattern[bytes] | None = None
        self._partial_bytes = 0
        self.cuts: list[bytes] = []  # the request lines at which the endpoint went away
        self._listener: socket.socket | None = None
        self._stalled = False
        self.stalled_requests: list[bytes] = []
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control -------------------------------------------------------------------------------

    def up(self) -> None:
        with self._lock:
            self._stalled = False
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
            self._pattern = None
        if listener is not None:
            _shut(listener)  # wakes the accept loop; close() alone leaves the port listening (below)
            listener.close()
        for conn in connections:
            _reset(conn)

    def stall(self) -> None:
        with self._lock:
            self._stalled = True
            self.stalled_requests = []

    def cut_at(self, pattern: bytes, partial_bytes: int = 1024) -> None:
        with self._lock:
            self._pattern = re.compile(pattern)
            self._partial_bytes = partial_bytes

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    # -- forwarding ----------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _reset(client)
                    _reset(server)
                    continue
                self._connections.update((client, server))
            pair = _Pair(client, server)
            threading.Thread(target=self._pipe, args=(client, server, True, pair), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False, pair), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool, pair: "_Pair") -> None:
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if from_client and self._stalled:
                    self.stalled_requests += re.findall(rb"(?m)^[A-Z]+ /\S* HTTP/1\.1(?=\r$)", data)
                    continue  # swallowed: the server never sees it, the client never gets an answer
                if from_client and self._pattern is not None:
                    match = self._pattern.search(data)
                    if match is not None:
                        line_end = data.find(b"\r\n", match.start())
                        self.cuts.append(data[data.rfind(b"\n", 0, match.start()) + 1:line_end])
                        headers_end = data.find(b"\r\n\r\n", match.start())
                        keep = (headers_end + 4 if headers_end >= 0 else len(data)) + self._partial_bytes
                        dst.sendall(data[:max(keep, 0)][:len(data) - 1])  # never the whole request
                        self.down()
                        return
                dst.sendall(data)
        except OSError:
            _reset(dst)
        finally:
            if pair.one_side_done():
                with self._lock:
                    self._connections.difference_update((src, dst))
                src.close()
                dst.close()


class _Pair:
    """A client connection and its server connection: closed once both directions have ended."""

    def __init__(self, client: socket.socket, server: socket.socket):
        self._lock = threading.Lock()
        self._open_sides = 2

    def one_side_done(self) -> bool:
        with self._lock:
            self._open_sides -= 1
            return self._open_sides == 0


def _shut(sock: socket.socket) -> None:
    """shutdown() before close(): on Linux, close() does not wake a thread blocked in accept() or
    recv() on the socket, and the kernel keeps the socket alive until that call returns. A closed
    listener went on accepting (clients saw a reset, not "refused"); an idle keep-alive connection
    stayed open with nobody forwarding it, so a client's next request on it could wait out its read
    timeout (30 s) instead of failing at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection reset, not a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    _shut(sock)
    try:
        sock.close()
    except OSError:
        pass
