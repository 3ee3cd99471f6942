"""A minimal HTTP endpoint (stdlib, one thread): Prometheus metrics and small admin calls."""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

# A sample: metric name, labels, value.
Sample = tuple[str, dict[str, str], float]
# A route: query parameters → (HTTP status, content type, body).
Route = Callable[[dict[str, str]], tuple[int, str, str]]


def render(samples: list[Sample]) -> str:
    lines = []
    for name, labels, value in samples:
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks its address up in DNS (socket.getfqdn): where no
        # resolver answers, that blocks for seconds, inside FM's event loop (its etcd lease
        # expired meanwhile). The name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def serve_http(address: str, routes: dict[str, Route]) -> ThreadingHTTPServer:
    """Serve GET routes on HOST:PORT; returns the running server."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            route = routes.get(url.path)
            if route is None:
                self.send_error(404, f"known paths: {', '.join(sorted(routes))}")
                return
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            status, ctype, text = route(query)
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug(fmt, *args)

    server = _Server((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def metrics_route(collect: Callable[[], list[Sample]]) -> Route:
    return lambda _query: (200, "text/plain; version=0.0.4", render(collect()))


def serve_metrics(address: str, collect: Callable[[], list[Sample]]) -> ThreadingHTTPServer:
    """Serve GET /metrics on HOST:PORT from `collect()`."""
    return serve_http(address, {"/metrics": metrics_route(collect)})
