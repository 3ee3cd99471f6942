"""Speaking the SC chain link by hand, as an impostor or a careless client would: TCP (or TLS
with a certificate of one's choosing) and length-prefixed protobuf frames."""

from __future__ import annotations

import socket
import ssl
import struct

from cyberstar.tls import TlsFiles

FRAME = struct.Struct(">I")


def connect(address: str, tls: TlsFiles | None, timeout: float = 10.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    if tls is None:
        return sock
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx.wrap_socket(sock, server_hostname=host)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(FRAME.pack(len(payload)) + payload)


def read_frame(sock: socket.socket) -> bytes | None:
    """The next frame, or None when the peer closed the connection."""
    head = _read(sock, 4)
    if head is None:
        return None
    (n,) = FRAME.unpack(head)
    return _read(sock, n)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes the connection within `timeout` (frames before are ignored)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True
    return True


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    try:
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
    except (ConnectionError, ssl.SSLError):
        return None
    return data
