"""The labs' certificates: a CA in the lab's directory and one certificate per process, made
on first use (`cyberstar.certs`), so every lab runs with mutual TLS like a deployment."""

from __future__ import annotations

from pathlib import Path

from cyberstar.certs import CertAuthority, NodeSpec
from cyberstar.tls import TlsFiles


class LabCerts:
    def __init__(self, directory: Path) -> None:
        self.ca = CertAuthority(directory)

    def files(self, role: str, name: str, addresses: tuple[str, ...] = ()) -> TlsFiles:
        """Process `name`'s certificate, valid for loopback and `addresses` besides its name
        (a process of the Mininet lab is dialled at its host's management address)."""
        made = self.ca.issue(NodeSpec(role, name, addresses))
        return TlsFiles(self.ca.cert_path, made.cert, made.key)

    def section(self, role: str, name: str, addresses: tuple[str, ...] = ()) -> dict[str, str]:
        """The `tls:` section of a YAML config (absolute paths)."""
        f = self.files(role, name, addresses)
        return {"ca": str(f.ca), "cert": str(f.cert), "key": str(f.key)}

    def flags(self, role: str, name: str, addresses: tuple[str, ...] = ()) -> list[str]:
        """`--tls-ca/--tls-cert/--tls-key` for a command line."""
        f = self.files(role, name, addresses)
        return ["--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key)]
