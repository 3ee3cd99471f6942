"""Mininet topology: client — PP — server, no switches (no Open vSwitch needed).

    client (10.1.0.2/24, gw 10.1.0.1) ── pp-eth1 [pp: cyberstar pp serve] pp-eth2 ── server
                                                                              (10.2.0.2/24)

The PP host runs the XDP agent on pp-eth1 (port 1) and pp-eth2 (port 2) with P4Runtime (mutual
TLS, certificates of a lab CA in its directory: `tls` is a controller's) on a unix socket; its
interfaces carry the gateway addresses only so the hosts' ARP is answered (the
PP host does not forward: XDP does). Run it with `sudo python3 topologies/pp_line.py` for a
Mininet CLI, or use `PpLine` from Python (tests/test_mininet.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from mininet.net import Mininet
from mininet.topo import Topo

from cyberstar.lab.certs import LabCerts

REPO = Path(__file__).resolve().parents[1]


class PpLineTopo(Topo):
    def build(self) -> None:
        client = self.addHost("client", ip="10.1.0.2/24", defaultRoute="via 10.1.0.1")
        pp = self.addHost("pp", ip=None)
        server = self.addHost("server", ip="10.2.0.2/24", defaultRoute="via 10.2.0.1")
        self.addLink(client, pp, intfName2="pp-eth1")
        self.addLink(server, pp, intfName2="pp-eth2")


class PpLine:
    """The topology, started, with the PP agent running in the `pp` host."""

    def __init__(self, python: str = sys.executable, mode: str = "skb") -> None:
        self.net = Mininet(topo=PpLineTopo(), controller=None, build=True)
        self.net.start()
        pp = self.net["pp"]
        pp.cmd("ip addr add 10.1.0.1/24 dev pp-eth1; ip addr add 10.2.0.1/24 dev pp-eth2")
        pp.cmd("sysctl -qw net.ipv4.ip_forward=0")
        for host, dev in (("client", "client-eth0"), ("server", "server-eth0")):
            self.net[host].cmd(f"ethtool -K {dev} tx off gro on")  # see the README on veth
        self.dir = Path(tempfile.mkdtemp(prefix="cyberstar-mininet-"))
        self.address = f"unix:{self.dir / 'p4rt.sock'}"
        self.log = (self.dir / "agent.log").open("w")
        certs = LabCerts(self.dir / "certs")
        self.tls = certs.files("admin", "mininet-admin")
        self.agent = pp.popen(
            [python, "-m", "cyberstar.cli", "-v", "pp", "serve", "--iface", "pp-eth1",
             "--iface", "pp-eth2", "--grpc", self.address, "--mode", mode,
             *certs.flags("pp", "pp")],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=str(REPO),
        )  # fmt: skip

    def mac(self, host: str, intf: str) -> str:
        return self.net[host].intf(intf).MAC()

    def stop(self) -> None:
        self.agent.terminate()
        try:
            self.agent.wait(15)
        except subprocess.TimeoutExpired:
            self.agent.kill()
        self.net.stop()


if __name__ == "__main__":
    from mininet.cli import CLI

    line = PpLine()
    print(f"PP agent P4Runtime at {line.address} (TLS: {line.tls}); log {line.log.name}")
    try:
        CLI(line.net)
    finally:
        line.stop()
