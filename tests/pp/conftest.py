"""Fixtures for PP-node tests: a real `cyberstar pp serve` process on veths in a namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cyberstar import netns
from cyberstar.codegen.p4info import build_p4info
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.pipeline.pp import PIPELINE

REPO = Path(__file__).resolve().parents[2]
CYBERSTAR = [sys.executable, "-m", "cyberstar.cli"]


@dataclass
class PpNode:
    ns: str
    address: str
    device_id: int
    proc: subprocess.Popen
    log: Path
    clients: list[P4RuntimeClient] = field(default_factory=list)

    def client(self, election_id: int = 1, arbitrate: bool = True) -> P4RuntimeClient:
        c = P4RuntimeClient(self.address, self.device_id, election_id)
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
) -> PpNode:
    tmp = Path(tempfile.mkdtemp(prefix="cyberstar-pp-"))
    address = f"unix:{tmp / 'p4rt.sock'}"
    log = tmp / "agent.log"
    cmd = [*CYBERSTAR, "-v", "pp", "serve", "--netns", ns, "--grpc", address,
           "--device-id", str(device_id), "--mode", mode]  # fmt: skip
    for i in ifaces:
        cmd += ["--iface", i]
    proc = subprocess.Popen(
        cmd + (extra or []), stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO
    )
    node = PpNode(ns, address, device_id, proc, log)
    probe = P4RuntimeClient(address, device_id)
    try:
        probe.wait_ready(60)  # the agent listens once its program is loaded and attached
    except Exception:
        node.stop()
        raise RuntimeError(f"the PP agent did not start: {log.read_text()[-3000:]}") from None
    finally:
        probe.close()
    return node


def _pp_node(name: str):
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF, network namespaces)")
    ns = f"cs-{name}-{os.getpid()}"
    netns.create(ns)
    netns.veth("pp1", "peer1", ns, ns)
    netns.veth("pp2", "peer2", ns, ns)
    node = start_agent(ns, ["pp1", "pp2"])
    try:
        yield node
    finally:
        code = node.stop()
        netns.delete(ns)
        assert code == 0, f"agent exited with {code}; log: {node.log.read_text()[-2000:]}"


@pytest.fixture
def pp_node():
    """A PP agent of its own on two veths (pp1, pp2) whose peers share its namespace."""
    yield from _pp_node("pp")


@pytest.fixture(scope="module")
def shared_pp_node():
    yield from _pp_node("pps")


_election = iter(range(100, 1 << 30))


@pytest.fixture
def primary(shared_pp_node):
    """A primary client with a freshly committed (empty) pipeline on the module's agent."""
    c = shared_pp_node.client(election_id=next(_election))
    c.set_pipeline(build_p4info(PIPELINE), b"")
    yield c
    c.close()
    shared_pp_node.clients.remove(c)
