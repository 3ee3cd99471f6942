"""Elephant flows move to a DPU in front of the host (paper §6.1), end to end.

A bmv2 DPU hands every packet to the XDP host by default; when a connection's rate on the host
reaches the elephant threshold FM writes its rules into the DPU, and its packets stop reaching
the host (the host's direct counters say so) while the client keeps talking. Idle offloaded
rules are torn down on the DPU and the host carries the flow again, from its own rules: SC is
never asked twice. Outcomes are counted by the client: every message is echoed, no reset.
"""

from __future__ import annotations

import re
import time
from ipaddress import ip_address

import pytest
from finsy.proto import p4r

from cyberstar.lab.pp_process import PpNode
from cyberstar.lab.slowpath import CLIENT_IP, PUBLIC_IP, SERVER_PORT, SERVERS
from cyberstar.lab.wait import wait_until
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.pipeline.pp import PIPELINE
from fm.helpers import running_lab, sc_requests

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.bmv2]

ELEPHANT_PPS = 200
DPU_IDLE_S = 1
HOST_IDLE_S = 3
FLOW_TABLE = PIPELINE.table("flow_table")
Key = tuple[str, int, str, int]


@pytest.fixture(scope="module")
def lab(bmv2_tools):
    offload = {"min_packets_per_s": ELEPHANT_PPS, "interval_ms": 300, "idle_timeout_s": DPU_IDLE_S}
    with running_lab(scgs=1, nodes_per_scg=3, idle_timeout_s=HOST_IDLE_S, offload=offload) as lab:
        yield lab


def flow_counters(node: PpNode) -> dict[Key, int]:
    """Packets per flow-table entry, by (src, sport, dst, dport), read over P4Runtime."""
    client = P4RuntimeClient(node.address, node.device_id, tls=node.tls)
    try:
        client.wait_ready(10)
        req = p4r.TableEntry(table_id=FLOW_TABLE.id)
        req.counter_data.SetInParent()
        entities = client.read([p4r.Entity(table_entry=req)])
    finally:
        client.close()
    decoder = PipelineDecoder(PIPELINE).table(FLOW_TABLE.id)
    out = {}
    for e in entities:
        m = decoder.decode_match(e.table_entry)
        key = (str(ip_address(m["src_addr"])), m["src_port"],
               str(ip_address(m["dst_addr"])), m["dst_port"])  # fmt: skip
        out[key] = e.table_entry.counter_data.packet_count
    return out


class Talker:
    """One client connection that counts its echoes; any reset or timeout is an error."""

    def __init__(self, lab) -> None:
        before = len(lab.accepted)
        self.sock = lab.connect(SERVERS[0], SERVER_PORT)
        me = self.sock.getsockname()
        wait_until(lambda: len(lab.accepted) > before, 5, "the server to see the connection")
        public = next(peer for who, peer in lab.accepted if who == f"{me[0]}:{me[1]}")
        assert public[0] == PUBLIC_IP
        self.forward: Key = (CLIENT_IP, me[1], SERVERS[0], SERVER_PORT)
        self.back: Key = (SERVERS[0], SERVER_PORT, PUBLIC_IP, public[1])
        self.echoed = 0

    def talk(self, messages: int = 0, seconds: float = 0.0, pause: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        sent = 0
        while sent < messages or time.monotonic() < deadline:
            self.sock.sendall(b"ping")
            assert self.sock.recv(100) == b"echo:ping"
            self.echoed += 1
            sent += 1
            time.sleep(pause)

    def counters(self, node: PpNode) -> tuple[int, int]:
        c = flow_counters(node)
        return c.get(self.forward, -1), c.get(self.back, -1)

    def close(self) -> None:
        self.sock.close()


def metric(lab, name: str) -> float:
    text = lab.fm_metrics("fm1", timeout=10)
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def idle_while_offloaded(lab) -> int:
    return lab.fm_get("fm1", "/status")["slow_path"].get("idle_while_offloaded", 0)


def test_a_mouse_stays_on_the_host(lab) -> None:
    t = Talker(lab)
    try:
        t.talk(messages=5, pause=0.2)
        assert t.counters(lab.dpu) == (-1, -1), "a slow flow must not be offloaded"
        forward, back = t.counters(lab.pp)
        assert forward >= 5 and back >= 5
        assert t.echoed == 5
    finally:
        t.close()


def test_an_elephant_moves_to_the_dpu_and_leaves_the_host_then_comes_back(lab) -> None:
    asked = sc_requests(lab)
    offloads, teardowns = (metric(lab, f"cyberstar_fm_{n}_total")
                           for n in ("offloads", "offload_teardowns"))  # fmt: skip
    t = Talker(lab)
    try:
        # Faster than the threshold until FM moves the connection's rules into the DPU.
        deadline = time.monotonic() + 20
        while -1 in t.counters(lab.dpu):
            assert time.monotonic() < deadline, "the elephant was never offloaded"
            t.talk(seconds=0.3)
        assert metric(lab, "cyberstar_fm_offloads_total") == offloads + 1

        on_host = t.counters(lab.pp)
        on_dpu = t.counters(lab.dpu)
        t.talk(seconds=HOST_IDLE_S + 1)  # past the host's idle timeout: it must keep the rules
        assert t.counters(lab.pp) == on_host, "offloaded packets still reached the host"
        moved = [after - before for after, before in zip(t.counters(lab.dpu), on_dpu, strict=True)]
        assert min(moved) >= 300, f"the DPU carried too little: {moved}"
        assert idle_while_offloaded(lab) >= 1

        # Quiet: the DPU tears the rules down; the host still has them and takes over.
        wait_until(lambda: t.counters(lab.dpu) == (-1, -1), 15, "the DPU to tear the flow down")
        assert metric(lab, "cyberstar_fm_offload_teardowns_total") == teardowns + 2
        # The host's rules saw no packet since the offload; the idle notice it sends next must
        # not release a flow that ran on the DPU until a moment ago.
        ignored = idle_while_offloaded(lab)
        wait_until(lambda: idle_while_offloaded(lab) > ignored, 2 * HOST_IDLE_S + 4,
                 "the host's next idle notice, ignored")  # fmt: skip
        t.talk(messages=20)
        forward, back = t.counters(lab.pp)
        assert forward >= on_host[0] + 20 and back >= on_host[1] + 20
        assert t.counters(lab.dpu) == (-1, -1), "twenty slow messages are no elephant"
        assert sc_requests(lab) == asked + 1, "SC is asked once, when the connection opens"
    finally:
        t.close()
    # Closed and quiet: the host's idle timeout now applies and the connection is released.
    wait_until(lambda: t.forward not in flow_counters(lab.pp), 4 * HOST_IDLE_S + 5,
             "the host to forget the closed connection")  # fmt: skip
