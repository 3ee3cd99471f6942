"""Running PP nodes as real processes, for tests, benchmarks and the lab: XDP nodes
(`cyberstar pp serve`) and bmv2 nodes (`simple_switch_grpc` running the generated P4), both
P4Runtime targets programmed with the same P4Info."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cyberstar.codegen.p4info import build_p4info
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.p4tools import compile_p4, guard_thrift, require_tools, switch_command
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.subprocs import tied_to_parent

CYBERSTAR = [sys.executable, "-m", "cyberstar.cli"]


@dataclass
class PpNode:
    ns: str
    address: str
    device_id: int
    proc: subprocess.Popen
    log: Path
    kind: str = "xdp"  # or "bmv2"
    # What SetForwardingPipelineConfig carries: bmv2's JSON; an XDP agent takes none.
    device_config: bytes = b""
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
        c.set_pipeline(build_p4info(PIPELINE), self.device_config)
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
) -> PpNode:
    """Start `cyberstar pp serve` on `ifaces` of netns `ns`; P4Runtime on a unix socket in a
    fresh directory unless `address` is given (a restart keeps its predecessor's)."""
    tmp = Path(tempfile.mkdtemp(prefix="cyberstar-pp-"))
    if address is None:
        address = f"unix:{tmp / 'p4rt.sock'}"
    elif address.startswith("unix:"):
        Path(address.removeprefix("unix:")).unlink(missing_ok=True)
    log = tmp / "agent.log"
    cmd = [*CYBERSTAR, "-v", "pp", "serve", "--netns", ns, "--grpc", address,
           "--device-id", str(device_id), "--mode", mode]  # fmt: skip
    for i in ifaces:
        cmd += ["--iface", i]
    cmd = tied_to_parent(cmd + (extra or []))
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    node = PpNode(ns, address, device_id, proc, log)
    _wait_listening(node, "the PP agent")  # it listens once its program is loaded and attached
    return node


def start_switch(
    ns: str, ifaces: list[str], device_id: int = 1, address: str | None = None
) -> PpNode:
    """Start bmv2 (`simple_switch_grpc`) on `ifaces` of netns `ns` as ports 1, 2, … with no
    program: the controller sets the pipeline with `node.device_config`, p4c's JSON of the
    generated P4. P4Runtime on a unix socket in a fresh directory unless `address` is given."""
    switch, _ = require_tools()
    compiled = compile_p4()
    tmp = Path(tempfile.mkdtemp(prefix="cyberstar-bmv2-node-"))
    if address is None:
        address = f"unix:{tmp / 'p4rt.sock'}"
    elif address.startswith("unix:"):
        Path(address.removeprefix("unix:")).unlink(missing_ok=True)
    guard_thrift(ns)
    log = tmp / "switch.out"
    cmd = switch_command(
        switch,
        ns,
        {i: name for i, name in enumerate(ifaces, start=1)},
        address,
        device_id,
        tmp,
        PIPELINE.constants["CPU_PORT"],
    )
    proc = subprocess.Popen(
        tied_to_parent(cmd), stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp
    )
    node = PpNode(ns, address, device_id, proc, log, "bmv2", compiled.json_path.read_bytes())
    _wait_listening(node, "simple_switch_grpc")
    return node


def start_pp_node(kind: str, ns: str, ifaces: list[str], mode: str = "skb",
                  address: str | None = None) -> PpNode:  # fmt: skip
    """An XDP or a bmv2 PP node on `ifaces` of `ns`, P4Runtime at `address`."""
    if kind == "bmv2":
        return start_switch(ns, ifaces, address=address)
    if kind == "xdp":
        return start_agent(ns, ifaces, mode=mode, address=address)
    raise ValueError(f"unknown PP node kind {kind!r}: expected xdp or bmv2")


def _wait_listening(node: PpNode, what: str) -> None:
    probe = P4RuntimeClient(node.address, node.device_id)
    try:
        probe.wait_ready(60)
    except Exception:
        node.stop()
        raise RuntimeError(f"{what} did not start: {node.log.read_text()[-3000:]}") from None
    finally:
        probe.close()
