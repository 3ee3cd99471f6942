"""How a control channel is protected: mutual TLS with the lab CA's certificates, or plaintext
that a configuration asked for by name (then on loopback or a unix socket only).

A configuration section says which, and nothing is implied:

```yaml
tls: {ca: certs/ca.crt, cert: certs/sc1a.crt, key: certs/sc1a.key}   # mutual TLS
plaintext: true                                                       # or: loopback only
```

Certificates come from `cyberstar certs init` (`cyberstar.certs`): a peer's name is the
certificate's common name and its role the organizational unit.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from cyberstar.errors import UsageError
from cyberstar.yamlconf import Section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """The CA that signs every peer, and this process's own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert),
                           ("key", self.key)):  # fmt: skip
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise UsageError(
                    f"cannot read the TLS {what} {path}: {exc.strerror} "
                    "(`cyberstar certs init DIR ROLE:NAME` makes them)"
                ) from None
        return out[0], out[1], out[2]


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of an authenticated channel."""

    name: str
    role: str


# -- configuration ----------------------------------------------------------------------------
def parse_tls(sec: Section, base: Path, what: str) -> TlsFiles | None:
    """`tls: {ca, cert, key}` (paths relative to the config file) or `plaintext: true`; exactly
    one of them. None means plaintext."""
    if sec.has("tls") and sec.has("plaintext"):
        raise sec.error("plaintext", f"{what}: give either tls or plaintext, not both")
    if sec.has("tls"):
        t = sec.section("tls")
        files = TlsFiles(base / t.str("ca"), base / t.str("cert"), base / t.str("key"))
        t.done()
        return files
    if not sec.has("plaintext"):
        raise sec.error(
            None,
            f"missing key 'tls' for {what}: give tls: {{ca, cert, key}} (`cyberstar certs init` "
            "makes them), or plaintext: true for a loopback-only lab",
        )
    raw = sec.raw("plaintext")
    if raw is not True:
        raise sec.error("plaintext", f"expected true (or a tls section instead), found {raw!r}")
    return None


def is_local(address: str) -> bool:
    """A unix socket, or a host:port whose host is a loopback address or `localhost`."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_local(address: str, what: str) -> None:
    """Plaintext is for a lab on one host: refuse it anywhere else."""
    if not is_local(address):
        raise UsageError(
            f"{what} {address} is plaintext but not on loopback or a unix socket: configure "
            "TLS (tls: {ca, cert, key}; `cyberstar certs init` makes them) or bind to 127.0.0.1"
        )


def warn_plaintext(what: str, address: str) -> None:
    log.warning("%s %s is PLAINTEXT (the configuration says so): loopback only", what, address)


# -- gRPC ---------------------------------------------------------------------------------------
def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server side of mutual TLS: clients must present a certificate the CA signed."""
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)  # fmt: skip


def _tls_options(address: str, options: list) -> list:
    # gRPC names a unix socket by its path, which no certificate lists: check it as
    # `localhost`, the name every certificate of `cyberstar certs init` carries.
    if address.startswith("unix"):
        return [*options, ("grpc.ssl_target_name_override", "localhost")]
    return options


def secure_or_plain_channel(address: str, tls: TlsFiles | None, options: list,
                            what: str) -> grpc.Channel:  # fmt: skip
    """A synchronous channel: TLS, or plaintext to a local address."""
    if tls is None:
        require_local(address, what)
        return grpc.insecure_channel(address, options=options)
    creds = channel_credentials(tls)
    return grpc.secure_channel(address, creds, options=_tls_options(address, options))


def aio_channel(address: str, tls: TlsFiles | None, options: list,
                what: str) -> grpc.aio.Channel:  # fmt: skip
    """An asyncio channel: TLS, or plaintext to a local address."""
    if tls is None:
        require_local(address, what)
        return grpc.aio.insecure_channel(address, options=options)
    creds = channel_credentials(tls)
    return grpc.aio.secure_channel(address, creds, options=_tls_options(address, options))


def grpc_peer(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> Peer | None:
    """The authenticated client of a call (None on a plaintext server)."""
    pem = context.auth_context().get("x509_pem_cert")
    return _peer_of_pem(pem[0]) if pem else None


@lru_cache(maxsize=256)
def _peer_of_pem(pem: bytes) -> Peer:
    cert = x509.load_pem_x509_certificate(pem)
    return Peer(_attr(cert.subject, NameOID.COMMON_NAME),
                _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME))  # fmt: skip


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


# -- plain sockets (the SC chain link) ----------------------------------------------------------
def server_ssl(tls: TlsFiles, client_auth: bool = True) -> ssl.SSLContext:
    """A TLS server context; clients must show a certificate of the CA unless not
    `client_auth` (HTTPS, where a bearer token authenticates)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.verify_mode = ssl.CERT_REQUIRED if client_auth else ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_ssl(tls: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def ssl_peer(peercert: dict | None) -> Peer | None:
    """The peer of an SSL socket, from `getpeercert()` (None without a verified certificate)."""
    if not peercert:
        return None
    fields = {k: v for rdn in peercert.get("subject", ()) for k, v in rdn}
    return Peer(fields.get("commonName", ""), fields.get("organizationalUnitName", ""))
