"""A lab certificate authority and per-node certificates (`cyberstar certs init DIR NODE...`).

Every control channel is mutual TLS: a node proves who it is with a certificate the lab CA
signed, and checks its peer's the same way. A node's name is the certificate's common name and
its role (`sc`, `fm`, `pp`, `etcd`, `admin`) the organizational unit; servers authorize calls by
role (an SC node takes `Transfer` only from another SC node) and the chain link by name (a node
takes updates only from its predecessor). Files in DIR:

| file | what |
|---|---|
| `ca.crt`, `ca.key` | the CA (the key stays with whoever makes certificates) |
| `NAME.crt`, `NAME.key` | node NAME's certificate (server and client use) and its key (mode 0600) |

Each certificate is valid for `localhost` (gRPC's name for a unix socket), 127.0.0.1, ::1, its
node name and the addresses given after `=`. An existing CA is reused, so nodes can be added
later; an existing node certificate is kept unless `--force`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("sc", "fm", "pp", "etcd", "admin")
ORGANIZATION = "cyberstar"
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


class CertError(ValueError):
    """A node spec or a CA directory that cannot be used; the message says why."""


@dataclass(frozen=True)
class NodeSpec:
    role: str
    name: str
    addresses: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NodeSpec:
        """`ROLE:NAME[=ADDR,ADDR...]`, e.g. `sc:sc1a=10.0.0.5,sc1a.lab`."""
        role, sep, rest = text.partition(":")
        name, _, addrs = rest.partition("=")
        if not sep or not name:
            raise CertError(f"{text!r}: expected ROLE:NAME[=ADDR,...] (roles: {', '.join(ROLES)})")
        if role not in ROLES:
            raise CertError(f"{text!r}: unknown role {role!r}; roles: {', '.join(ROLES)}")
        if "/" in name or name.startswith("."):
            raise CertError(f"{text!r}: a node name cannot contain '/' or start with '.'")
        if name == "ca":
            raise CertError(f"{text!r}: 'ca' is the CA's own file name")
        return cls(role, name, tuple(a for a in addrs.split(",") if a))


@dataclass(frozen=True)
class NodeFiles:
    cert: Path
    key: Path


def _names(spec: NodeSpec) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for text in (*DEFAULT_NAMES, spec.name, *spec.addresses):
        if text in seen:
            continue
        seen.add(text)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            out.append(x509.DNSName(text))
    return out


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertAuthority:
    """The CA in `directory` (created on first use)."""

    def __init__(self, directory: Path, days: int = 365) -> None:
        self.dir = directory
        self.days = days
        self.cert_path = directory / "ca.crt"
        self.key_path = directory / "ca.key"
        directory.mkdir(parents=True, exist_ok=True)
        if self.cert_path.exists() != self.key_path.exists():
            raise CertError(f"{directory}: has only one of ca.crt and ca.key; remove it or both")
        if self.cert_path.exists():
            self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CertError(f"{self.key_path}: expected an EC key")
            self.key = key
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{ORGANIZATION} lab CA"),
                ]
            )
            self.cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(minutes=5))
                .not_valid_after(_now() + datetime.timedelta(days=10 * days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_CA_USAGE, critical=True)
                .sign(self.key, hashes.SHA256())
            )
            _write_key(self.key_path, self.key)
            self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def files(self, name: str) -> NodeFiles:
        return NodeFiles(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    def issue(self, spec: NodeSpec, force: bool = False) -> NodeFiles:
        """Node `spec`'s certificate and key (kept if they exist, unless `force`)."""
        files = self.files(spec.name)
        if files.cert.exists() and files.key.exists() and not force:
            return files
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, spec.role),
                x509.NameAttribute(NameOID.COMMON_NAME, spec.name),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_names(spec)), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        _write_key(files.key, key)
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files


def init(directory: Path, specs: list[NodeSpec], days: int = 365,
         force: bool = False) -> dict[str, NodeFiles]:  # fmt: skip
    """Create (or reuse) the CA in `directory` and a certificate for each node."""
    names = [s.name for s in specs]
    twice = {n for n in names if names.count(n) > 1}
    if twice:
        raise CertError(f"node name(s) given twice: {', '.join(sorted(twice))}")
    ca = CertAuthority(directory, days)
    return {s.name: ca.issue(s, force) for s in specs}
