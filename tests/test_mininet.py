"""The PP node in a Mininet topology (topologies/pp_line.py): a TCP connection from the
client host reaches the server host through static SNAT entries installed over P4Runtime."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import needs
import pytest
from finsy.proto import p4r

from cyberstar.codegen.p4info import build_p4info
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.p4rt.codec import update
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import parse_rules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "topologies"))
pytestmark = pytest.mark.root

SERVER_SCRIPT = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.2.0.2", 8080)); s.listen(); s.settimeout(20)
c, peer = s.accept(); c.sendall(f"{peer[0]}:{peer[1]}".encode()); c.close()
"""
CLIENT_SCRIPT = """
import socket
s = socket.socket(); s.settimeout(15)
s.bind(("10.1.0.2", 40001)); s.connect(("10.2.0.2", 8080)); print(s.recv(100).decode())
"""


def test_tcp_through_static_snat_in_mininet() -> None:
    needs.root()
    try:
        import mininet  # noqa: F401
    except ImportError:
        pytest.fail("Mininet is not importable: run `make install` (Debian's mininet)")
    from pp_line import PpLine

    line = PpLine()
    try:
        client = P4RuntimeClient(line.address, device_id=1, election_id=1, tls=line.tls)
        client.wait_ready(60)
        client.open_stream()
        client.set_pipeline(build_p4info(PIPELINE), b"")
        flow = {"tenant_id": 7, "protocol": 6}
        rules = [
            {"table": "tenant_classify", "action": "set_tenant", "params": {"tenant_id": 7},
             "match": {"ingress_port": 1, "vni": 0, "dst_addr": "10.2.0.0/24"}},
            {"table": "tenant_classify", "action": "set_tenant", "params": {"tenant_id": 7},
             "match": {"ingress_port": 2, "vni": 0, "dst_addr": "203.0.113.9/32"}},
            {"table": "next_hop", "match": {"nexthop_id": 1}, "action": "set_next_hop",
             "params": {"port": 1, "smac": line.mac("pp", "pp-eth1"),
                        "dmac": line.mac("client", "client-eth0")}},
            {"table": "next_hop", "match": {"nexthop_id": 2}, "action": "set_next_hop",
             "params": {"port": 2, "smac": line.mac("pp", "pp-eth2"),
                        "dmac": line.mac("server", "server-eth0")}},
            {"table": "flow_table", "action": "snat",
             "match": {**flow, "src_addr": "10.1.0.2", "dst_addr": "10.2.0.2",
                       "src_port": 40001, "dst_port": 8080},
             "params": {"src_addr": "203.0.113.9", "src_port": 50000, "nexthop_id": 2}},
            {"table": "flow_table", "action": "dnat",
             "match": {**flow, "src_addr": "10.2.0.2", "dst_addr": "203.0.113.9",
                       "src_port": 8080, "dst_port": 50000},
             "params": {"dst_addr": "10.1.0.2", "dst_port": 40001, "nexthop_id": 1}},
        ]  # fmt: skip
        client.write([update(p4r.Update.INSERT, PIPELINE, e) for e in parse_rules(rules, PIPELINE)])
        server = line.net["server"].popen([sys.executable, "-c", SERVER_SCRIPT])
        deadline = time.monotonic() + 20
        while ":8080" not in line.net["server"].cmd("ss -Hltn"):  # wait for it to listen
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.05)
        conn = line.net["client"].popen([sys.executable, "-c", CLIENT_SCRIPT],
                                        stdout=subprocess.PIPE, text=True)  # fmt: skip
        out, _ = conn.communicate(timeout=30)
        server.wait(20)
        assert out.strip() == "203.0.113.9:50000"  # the server saw the SNAT address
        client.close()
    finally:
        line.stop()
