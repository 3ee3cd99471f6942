"""Running PP agents as real processes, for tests, benchmarks and the lab."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cyberstar.codegen.p4info import build_p4info
from cyberstar.lab.certs import LabCerts
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.subprocs import tied_to_parent
from cyberstar.tls import TlsFiles

CYBERSTAR = [sys.executable, "-m", "cyberstar.cli"]


@dataclass
class PpNode:
    ns: str
    address: str
    device_id: int
    proc: subprocess.Popen
    log: Path
    certs: LabCerts
    clients: list[P4RuntimeClient] = field(default_factory=list)

    @property
    def tls(self) -> TlsFiles:
        """A controller's certificate for this node (role admin)."""
        return self.certs.files("admin", "lab-admin")

    def client(self, election_id: int = 1, arbitrate: bool = True) -> P4RuntimeClient:
        c = P4RuntimeClient(self.address, self.device_id, election_id, tls=self.tls)
        c.wait_ready(30)
        if arbitrate:
            c.open_stream()
        self.clients.append(c)
        return c

    def primary_with_pipeline(self, election_id: int = 10) -> P4RuntimeClient:
        c = self.client(election_id)
        c.set_pipeline(build_p4info(PIPELINE), b"")
        return c

    def stop(self) -> int:
        for c in self.clients:
            c.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_agent(
    ns: str,
    ifaces: list[str],
    device_id: int = 1,
    mode: str = "skb",
    extra: list[str] | None = None,
    address: str | None = None,
    certs: LabCerts | None = None,
    name: str = "pp",
) -> PpNode:
    """Start `cyberstar pp serve` on `ifaces` of netns `ns`; P4Runtime (mutual TLS, with a
    certificate for `name` from `certs`, a new lab CA unless given) on a unix socket in a fresh
    directory unless `address` is given (a restart keeps its predecessor's)."""
    tmp = Path(tempfile.mkdtemp(prefix="cyberstar-pp-"))
    if certs is None:
        certs = LabCerts(tmp / "certs")
    if address is None:
        address = f"unix:{tmp / 'p4rt.sock'}"
    elif address.startswith("unix:"):
        Path(address.removeprefix("unix:")).unlink(missing_ok=True)
    log = tmp / "agent.log"
    cmd = [*CYBERSTAR, "-v", "pp", "serve", "--netns", ns, "--grpc", address,
           "--device-id", str(device_id), "--mode", mode,
           *certs.flags("pp", name)]  # fmt: skip
    for i in ifaces:
        cmd += ["--iface", i]
    cmd = tied_to_parent(cmd + (extra or []))
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    node = PpNode(ns, address, device_id, proc, log, certs)
    probe = P4RuntimeClient(address, device_id, tls=node.tls)
    try:
        probe.wait_ready(60)  # the agent listens once its program is loaded and attached
    except Exception:
        node.stop()
        raise RuntimeError(f"the PP agent did not start: {log.read_text()[-3000:]}") from None
    finally:
        probe.close()
    return node
