"""A minimal Prometheus text-format endpoint (stdlib HTTP server, one thread)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

# A sample: metric name, labels, value.
Sample = tuple[str, dict[str, str], float]


def render(samples: list[Sample]) -> str:
    lines = []
    for name, labels, value in samples:
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"


def serve_metrics(address: str, collect: Callable[[], list[Sample]]) -> ThreadingHTTPServer:
    """Serve GET /metrics on HOST:PORT from `collect()`; returns the running server."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = render(collect()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug(fmt, *args)

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
