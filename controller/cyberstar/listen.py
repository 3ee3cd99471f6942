"""gRPC listeners, opened the same way by every daemon.

* Mutual TLS (`cyberstar.tls`), or plaintext that the configuration asked for, on loopback or
  a unix socket only, with a warning.
* No SO_REUSEPORT: gRPC sets it by default, so a second process configured with a taken port
  would start "fine" and answer a share of the first one's calls. Here it fails, naming the
  address (and a unix socket someone answers on is not taken over).
* Bounded: message size, connections, concurrent calls, the TLS handshake of a new connection,
  the idle time of a connection without calls; keep-alive pings find dead peers.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass

import grpc

from cyberstar.tls import TlsFiles, require_local, server_credentials, warn_plaintext


@dataclass(frozen=True)
class GrpcLimits:
    max_message_bytes: int = 4 << 20
    max_connections: int = 256
    max_calls: int = 256  # concurrent calls; more are refused with RESOURCE_EXHAUSTED
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0  # a connection with no call open for this long is closed
    keepalive_s: float = 60.0  # ping a quiet peer this often; close it if it does not answer


def server_options(limits: GrpcLimits) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", int(limits.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def bind(server: grpc.Server | grpc.aio.Server, address: str, tls: TlsFiles | None,
         what: str) -> int:  # fmt: skip
    """Add a listening port to `server`; returns the port (1 for a unix socket).

    Raises OSError naming the address when it cannot listen: taken by another process, not an
    address of this host, or (plaintext) not local."""
    if tls is None:
        require_local(address, what)
    _refuse_taken(address, what)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"{what}: cannot listen on {address}: {_why(address)}")
    if tls is None:
        warn_plaintext(what, address)
    return port


def _refuse_taken(address: str, what: str) -> None:
    """gRPC removes an existing unix socket file before it binds: refuse if someone answers."""
    if not address.startswith("unix:"):
        return
    path = address.removeprefix("unix:")
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        try:
            s.connect(path)
        except OSError:
            return  # a stale file: gRPC replaces it
    raise OSError(f"{what}: cannot listen on {address}: another process is listening there")


def _why(address: str) -> str:
    """Why binding failed, from a plain socket's errno."""
    host, _, port = address.rpartition(":")
    if address.startswith("unix") or not port.isdigit():
        return "not a usable address (host:port or unix:PATH)"
    host = host.strip("[]") or "0.0.0.0"
    try:
        family = socket.getaddrinfo(host, int(port))[0][0]
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    with socket.socket(family) as s:
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the address is in use by another process"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "not an address of this host"
            return exc.strerror or str(exc)
    return "gRPC refused it (it is free now: another process may have held it a moment ago)"


class PeerLog:
    """Bad requests logged at most once per peer (host) per `interval_s`, the rest counted: a
    client sending garbage must not flood the log, and one line per peer still says who."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 max_peers: int = 4096) -> None:  # fmt: skip
        self.logger = logger
        self.interval_s = interval_s
        self.max_peers = max_peers
        self._last: dict[str, tuple[float, int]] = {}  # peer → (last logged, suppressed since)

    def bad_request(self, peer: str, message: str) -> None:
        host = peer_host(peer)
        now = time.monotonic()
        last, quiet = self._last.get(host, (-1e18, 0))
        if now - last < self.interval_s:
            self._last[host] = (last, quiet + 1)
            return
        if len(self._last) >= self.max_peers:
            self._last.clear()
        self._last[host] = (now, 0)
        more = f" ({quiet} more from it since the last report)" if quiet else ""
        self.logger.warning("bad request from %s: %s%s", host, message, more)


def peer_host(peer: str) -> str:
    """gRPC's `context.peer()` (`ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678`, `unix:...`) without the
    client's port: one peer per host."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]")
    return peer
