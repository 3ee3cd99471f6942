"""The HTTP endpoint of the daemons: Prometheus metrics and small admin calls (FM's `/status`,
`POST /scale`).

One asyncio server, bounded like every other door: at most `max_connections` connections
(more are answered 503 and closed), a request must arrive whole within `timeout_s` and fit in
`MAX_REQUEST_BYTES`, one request per connection, a listen backlog of `BACKLOG`. Routes that
need it take a bearer token (`Authorization: Bearer TOKEN`): none → 401, a wrong one → 403.
Errors are JSON (`{"error": "..."}`); a bad request is logged at most once per peer a minute.

FM runs it on its own event loop (its routes read FM's state there, no thread between); a
threaded daemon (the PP agent) runs it on a loop of its own in a thread (`serve_metrics`).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

from cyberstar.listen import PeerLog

log = logging.getLogger(__name__)

# A sample: metric name, labels, value.
Sample = tuple[str, dict[str, str], float]
MAX_REQUEST_BYTES = 16 * 1024
BACKLOG = 128
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 413: "Content Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    peer: str


class HttpError(Exception):
    """Raised by a route: answered as `{"error": message}` with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# A handler: the request → (status, content type, body); may be a coroutine.
Handler = Callable[[Request], "tuple[int, str, str] | Awaitable[tuple[int, str, str]]"]


@dataclass(frozen=True)
class Route:
    method: str  # GET reads; POST changes state
    handler: Handler
    auth: bool = True  # needs the bearer token (when the server has one)


@dataclass
class HttpServer:
    routes: dict[str, Route]
    token: str | None = None  # None: no route needs one (a loopback lab, or metrics only)
    max_connections: int = 64
    timeout_s: float = 10.0
    stats: dict[str, int] = field(default_factory=lambda: {"refused": 0, "bad_requests": 0})

    def __post_init__(self) -> None:
        self._bad = PeerLog(log)
        self._open = 0
        self._server: asyncio.Server | None = None

    async def start(self, address: str, tls: ssl.SSLContext | None = None) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            self._server = await asyncio.start_server(
                self._serve, host, int(port), backlog=BACKLOG, ssl=tls, reuse_port=False,
                limit=MAX_REQUEST_BYTES, ssl_handshake_timeout=self.timeout_s if tls else None,
            )  # fmt: skip
        except OSError as exc:
            raise OSError(f"HTTP endpoint: cannot listen on {address}: {exc.strerror}") from None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        where = writer.get_extra_info("peername")
        peer = where[0] if isinstance(where, tuple) else "?"
        if self._open >= self.max_connections:
            self.stats["refused"] += 1
            await self._send(writer, 503, {"error": "too many connections; try again"})
            return
        self._open += 1
        try:
            status, ctype, body, extra = await asyncio.wait_for(
                self._answer(reader, peer), self.timeout_s
            )
        except TimeoutError:
            status, ctype, body, extra = 408, "", {"error": "request not received in time"}, {}
        except Exception:
            log.exception("HTTP handler failed")
            status, ctype, body, extra = 500, "", {"error": "internal error (logged)"}, {}
        finally:
            self._open -= 1
        if status >= 400 and status not in (401, 500):
            self.stats["bad_requests"] += 1
            self._bad.bad_request(peer, f"HTTP {status}: {body.get('error', '')}")
        await self._send(writer, status, body, ctype, extra)

    async def _answer(self, reader: asyncio.StreamReader, peer: str):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            return 413, "", {"error": f"request head over {MAX_REQUEST_BYTES} bytes"}, {}
        except asyncio.IncompleteReadError:
            return 400, "", {"error": "incomplete request"}, {}
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "", {"error": "expected METHOD PATH HTTP/1.x"}, {}
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_REQUEST_BYTES:
            return 413, "", {"error": f"a body of at most {MAX_REQUEST_BYTES} bytes"}, {}
        if int(length):
            await reader.readexactly(int(length))  # nothing takes a body: read and ignore
        url = urlparse(target)
        route = self.routes.get(url.path)
        if route is None:
            return 404, "", {"error": f"no {url.path}; paths: {', '.join(sorted(self.routes))}"}, {}
        if method != route.method:
            return (405, "", {"error": f"{url.path} takes {route.method}, not {method}"},
                    {"Allow": route.method})  # fmt: skip
        if route.auth and self.token is not None:
            given = headers.get("authorization", "")
            if not given.startswith("Bearer "):
                return (401, "", {"error": "missing bearer token (Authorization: Bearer TOKEN)"},
                        {"WWW-Authenticate": "Bearer"})  # fmt: skip
            if not hmac.compare_digest(given[7:].strip().encode(), self.token.encode()):
                return 403, "", {"error": "wrong bearer token"}, {}
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            result = route.handler(Request(method, url.path, query, peer))
            if inspect.isawaitable(result):
                result = await result
        except HttpError as exc:
            return exc.status, "", {"error": str(exc) or REASONS.get(exc.status, "error")}, {}
        status, ctype, text = result
        return status, ctype, text, {}

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: dict | str,
                    ctype: str = "", extra: dict | None = None) -> None:  # fmt: skip
        if isinstance(body, dict):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data = body.encode()
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Type: {ctype}",
                f"Content-Length: {len(data)}", "Connection: close"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        try:
            writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + data)
            await asyncio.wait_for(writer.drain(), self.timeout_s)
        except (OSError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def render(samples: list[Sample]) -> str:
    lines = []
    for name, labels, value in samples:
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"


def metrics_route(collect: Callable[[], list[Sample]], auth: bool = True) -> Route:
    return Route("GET", lambda _req: (200, "text/plain; version=0.0.4", render(collect())), auth)


class ThreadedServer:
    """An `HttpServer` on an event loop of its own, in a daemon thread."""

    def __init__(self, server: HttpServer, address: str, tls: ssl.SSLContext | None) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        started: list[BaseException | None] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(server.start(address, tls))
                started.append(None)
            except BaseException as exc:
                started.append(exc)
                return
            finally:
                ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, name="http", daemon=True).start()
        ready.wait()
        if started[0] is not None:
            raise started[0]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)


def serve_metrics(address: str, collect: Callable[[], list[Sample]],
                  tls: ssl.SSLContext | None = None) -> ThreadedServer:  # fmt: skip
    """Serve GET /metrics on HOST:PORT from `collect()` (called in the server's thread)."""
    return ThreadedServer(
        HttpServer({"/metrics": metrics_route(collect, auth=False)}), address, tls
    )
