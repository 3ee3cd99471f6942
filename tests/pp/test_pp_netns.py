"""A real TCP connection through the XDP PP node, set up by a test controller over P4Runtime.

client ns (10.1.0.2) ── pp1 [PP ns: agent, XDP] pp2 ── server ns (10.2.0.2)

The client's SYN misses the flow table and is punted; the controller gets the PacketIn, installs
the forward SNAT entry and the return entry, and sends the SYN back through the pipeline with a
PacketOut. The connection completes, the server sees the translated source, and after the
connection is gone both entries idle out and their notifications arrive.
"""

from __future__ import annotations

import os
import queue
import socket
import threading

import pytest
from finsy.proto import p4r

from cyberstar import netns
from cyberstar.lab.pp_process import start_agent
from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.frames import parse
from cyberstar.pipeline.pp import PIPELINE

pytestmark = pytest.mark.root
PUBLIC = "203.0.113.9"
SERVER_PORT = 8080
TENANT = 7
IDLE_NS = 1_000_000_000


def mac_of(ifname: str, ns: str) -> str:
    return netns.ip("-o", "link", "show", ifname, ns=ns).stdout.split("link/ether ")[1].split()[0]


@pytest.fixture
def topology():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netns.line("ppn", ports=("pp1", "pp2"), server_route="203.0.113.0/24") as line:
        names = {"client": line.client, "pp": line.middle, "server": line.server}
        netns.exec_in(names["pp"], "sysctl", "-qw", "net.ipv4.ip_forward=0")
        for ns, dev in ((names["client"], "c0"), (names["server"], "s0")):
            # Native XDP_REDIRECT into a veth needs GRO (or an XDP program) on the peer; and
            # frames that cross XDP lose the skb's "checksum to be completed" mark, so the hosts
            # must send full checksums (a NIC's received frames always have them).
            netns.exec_in(ns, "ethtool", "-K", dev, "gro", "on", "tx", "off", check=False)
        yield names


class SnatController:
    """Installs SNAT entries for each punted SYN and re-injects it (what FM will do)."""

    def __init__(self, client, macs: dict[str, str]) -> None:
        self.client = client
        self.macs = macs
        self.next_port = 50000
        self.installed: dict[tuple, int] = {}
        self.punts = 0
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def setup(self) -> None:
        rules = [
            build_entry(PIPELINE, "tenant_classify",
                        {"ingress_port": 1, "vni": 0, "dst_addr": "10.2.0.0/24"},
                        "set_tenant", {"tenant_id": TENANT}),
            build_entry(PIPELINE, "tenant_classify",
                        {"ingress_port": 2, "vni": 0, "dst_addr": "203.0.113.0/24"},
                        "set_tenant", {"tenant_id": TENANT}),
            build_entry(PIPELINE, "next_hop", {"nexthop_id": 1}, "set_next_hop",
                        {"port": 1, "smac": self.macs["pp1"], "dmac": self.macs["c0"]}),
            build_entry(PIPELINE, "next_hop", {"nexthop_id": 2}, "set_next_hop",
                        {"port": 2, "smac": self.macs["pp2"], "dmac": self.macs["s0"]}),
        ]  # fmt: skip
        self.client.write([update(p4r.Update.INSERT, PIPELINE, e) for e in rules])
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pin = self.client.packet_ins.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._on_packet_in(pin)
            except Exception as exc:  # surfaced by the test
                self.errors.append(exc)

    def _on_packet_in(self, pin: p4r.PacketIn) -> None:
        self.punts += 1
        meta = {m.metadata_id: int.from_bytes(m.value, "big") for m in pin.metadata}
        ingress_port, tenant = meta[1], meta[3]
        hdrs = parse(pin.payload).headers
        ip, tcp = hdrs["ipv4"], hdrs["tcp"]
        flow = (ip["src_addr"], ip["dst_addr"], tcp["src_port"], tcp["dst_port"])
        if flow not in self.installed:  # a retransmitted SYN is re-injected, not re-installed
            public_port = self.next_port
            self.next_port += 1
            forward = build_entry(
                PIPELINE, "flow_table",
                {"tenant_id": tenant, "src_addr": ip["src_addr"], "dst_addr": ip["dst_addr"],
                 "protocol": 6, "src_port": tcp["src_port"], "dst_port": tcp["dst_port"]},
                "snat", {"src_addr": PUBLIC, "src_port": public_port, "nexthop_id": 2},
                idle_timeout_ns=IDLE_NS,
            )  # fmt: skip
            back = build_entry(
                PIPELINE, "flow_table",
                {"tenant_id": tenant, "src_addr": ip["dst_addr"], "dst_addr": PUBLIC,
                 "protocol": 6, "src_port": tcp["dst_port"], "dst_port": public_port},
                "dnat", {"dst_addr": ip["src_addr"], "dst_port": tcp["src_port"], "nexthop_id": 1},
                idle_timeout_ns=IDLE_NS,
            )  # fmt: skip
            self.client.write([update(p4r.Update.INSERT, PIPELINE, e) for e in (forward, back)])
            self.installed[flow] = public_port
        fields = {f.name: i for i, f in enumerate(PIPELINE.packet_out.fields, start=1)}
        self.client.packet_out(
            pin.payload,
            [(fields["submit_to_ingress"], b"\x01"),
             (fields["ingress_port"], ingress_port.to_bytes(2, "big")),
             (fields["egress_port"], b"\x00")],
        )  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


def serve_once(ns: str, ready: threading.Event, result: dict) -> None:
    with netns.entered(ns):
        srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("10.2.0.2", SERVER_PORT))
    srv.listen()
    srv.settimeout(20)
    ready.set()
    conn, peer = srv.accept()
    result["peer"] = peer
    result["request"] = conn.recv(100)
    conn.sendall(b"pong:" + result["request"])
    conn.close()
    srv.close()


@pytest.mark.parametrize("mode", ["skb", "native"])
def test_tcp_through_snat_set_up_by_a_controller(topology, mode: str) -> None:
    node = start_agent(topology["pp"], ["pp1", "pp2"], mode=mode)
    try:
        c = node.primary_with_pipeline()
        macs = {
            "pp1": mac_of("pp1", topology["pp"]),
            "pp2": mac_of("pp2", topology["pp"]),
            "c0": mac_of("c0", topology["client"]),
            "s0": mac_of("s0", topology["server"]),
        }
        ctl = SnatController(c, macs)
        ctl.setup()
        ready, result = threading.Event(), {}
        server = threading.Thread(target=serve_once, args=(topology["server"], ready, result))
        server.start()
        assert ready.wait(10)
        with netns.entered(topology["client"]):
            cli = socket.socket()
        cli.settimeout(15)
        cli.connect(("10.2.0.2", SERVER_PORT))
        local_port = cli.getsockname()[1]
        cli.sendall(b"ping")
        reply = cli.recv(100)
        cli.close()
        server.join(timeout=20)
        ctl.stop()
        assert not ctl.errors, ctl.errors
        assert reply == b"pong:ping"
        assert result["peer"] == (PUBLIC, ctl.installed[next(iter(ctl.installed))])
        assert ctl.punts >= 1
        assert next(iter(ctl.installed))[2] == local_port

        # Both entries idle out once the connection is gone: the forward one (source port =
        # the client's) and the return one (source port = the server's).
        expired_src_ports: set[int] = set()
        while len(expired_src_ports) < 2:
            note = c.idle_notifications.get(timeout=10)
            for te in note.table_entry:
                assert te.idle_timeout_ns == IDLE_NS
                src_port = next(m.exact.value for m in te.match if m.field_id == 5)
                expired_src_ports.add(int.from_bytes(src_port, "big"))
        assert expired_src_ports == {local_port, SERVER_PORT}
    finally:
        assert node.stop() == 0, node.log.read_text()[-3000:]
