"""The daemons' HTTP endpoint (metrics, FM's admin calls) is bounded: idle connections cost no
thread and are closed after the timeout, connections over the cap are answered 503 at once,
an oversized request is refused, and the listen backlog is not 5.

The unhardened server (ThreadingHTTPServer) started a thread per connection and kept it while
the client said nothing: 1 000 slow connections made 1 007 threads."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time

from cyberstar.lab.procs import free_port
from cyberstar.metrics import BACKLOG, HttpServer, ThreadedServer, metrics_route


def serve(max_connections: int = 64, timeout_s: float = 1.0) -> tuple[ThreadedServer, int]:
    port = free_port()
    routes = {"/metrics": metrics_route(lambda: [("up", {}, 1)], auth=False)}
    server = HttpServer(routes, max_connections=max_connections, timeout_s=timeout_s)
    return ThreadedServer(server, f"127.0.0.1:{port}", None), port


def get(port: int, head: bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_idle_connections_take_no_thread_and_are_closed() -> None:
    # The idle timeout is long enough that no held connection is closed (freeing its slot for
    # one in the backlog) before the refusals are all read, even on a loaded machine.
    timeout_s = 3.0
    server, port = serve(max_connections=64, timeout_s=timeout_s)
    try:
        assert get(port).startswith(b"HTTP/1.1 200 OK")
        threads = threading.active_count()
        opened = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
        time.sleep(0.3)
        assert threading.active_count() == threads
        # Over the cap: answered 503 and closed at once.
        refused = 0
        for s in idle[64:]:
            s.settimeout(timeout_s / 2)
            with contextlib.suppress(TimeoutError):
                refused += s.recv(100).startswith(b"HTTP/1.1 503")
        assert refused == 136, refused
        # The held ones are answered 408 and closed after the timeout.
        for s in idle[:64]:
            s.settimeout(timeout_s + 5)
            assert s.recv(100).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - opened < timeout_s + 3
        for s in idle:
            s.close()
        assert get(port).startswith(b"HTTP/1.1 200 OK")
    finally:
        server.close()


def test_an_oversized_request_is_refused() -> None:
    server, port = serve()
    try:
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"
        assert get(port, huge).startswith(b"HTTP/1.1 413")
        assert get(port, b"BLAH\r\n\r\n").startswith(b"HTTP/1.1 400")
    finally:
        server.close()


def test_the_listen_backlog_is_sized() -> None:
    server, port = serve()
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        assert int(out[2]) == BACKLOG >= 128, out
    finally:
        server.close()
