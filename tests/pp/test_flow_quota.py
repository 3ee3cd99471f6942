"""Per-tenant quotas on flow-table entries (`pp serve --flow-quota`): a tenant at its quota
gets RESOURCE_EXHAUSTED and its misses are dropped and counted, while other tenants keep their
room and their punts."""

from __future__ import annotations

import os
import queue
import socket

import grpc
import pytest
from finsy.proto import p4r

from cyberstar import netns
from cyberstar.lab.pp_process import start_agent
from cyberstar.lab.wait import wait_until
from cyberstar.p4rt.client import P4RuntimeError
from cyberstar.p4rt.codec import update
from cyberstar.packets import tcp_frame
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE

pytestmark = pytest.mark.root
INSERT, DELETE = p4r.Update.INSERT, p4r.Update.DELETE
NETS = {7: "10.0.0.0/8", 8: "11.0.0.0/8", 9: "12.0.0.0/8"}  # tenant → destinations


@pytest.fixture
def node():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netns.with_pp_ports(f"cs-quota-{os.getpid()}") as ns:
        node = start_agent(ns, ["pp1", "pp2"], extra=["--flow-quota", "3", "--flow-quota", "8=5"])
        try:
            yield node
        finally:
            assert node.stop() == 0


def flow(tenant: int, sport: int) -> TableEntry:
    dst = NETS[tenant].split(".")[0] + ".0.0.5"
    return build_entry(
        PIPELINE, "flow_table",
        {"tenant_id": tenant, "src_addr": "192.168.1.2", "dst_addr": dst, "protocol": 6,
         "src_port": sport, "dst_port": 80},
        "forward", {"nexthop_id": 2},
    )  # fmt: skip


def insert(c, entries: list[TableEntry]) -> list[tuple[int, str]]:
    try:
        c.write([update(INSERT, PIPELINE, e) for e in entries])
    except P4RuntimeError as err:
        return [(i, code) for i, code, _ in err.errors]
    return []


def test_a_tenant_at_its_quota_is_refused_and_its_misses_dropped(node) -> None:
    c = node.primary_with_pipeline()
    c.write([update(INSERT, PIPELINE, build_entry(
        PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0, "dst_addr": net},
        "set_tenant", {"tenant_id": t})) for t, net in NETS.items()])  # fmt: skip
    # tenant 7 (default quota 3) in one batch of four: the fourth is refused
    assert insert(c, [flow(7, p) for p in range(1, 5)]) == [(3, "RESOURCE_EXHAUSTED")]
    with pytest.raises(P4RuntimeError, match="tenant 7 holds its quota of 3") as err:
        c.write([update(INSERT, PIPELINE, flow(7, 9))])
    assert err.value.code == grpc.StatusCode.UNKNOWN
    # tenant 8 has a quota of its own, tenant 9 the default: tenant 7 takes none of their room
    assert insert(c, [flow(8, p) for p in range(1, 6)]) == []
    assert insert(c, [flow(9, p) for p in range(1, 4)]) == []
    assert insert(c, [flow(8, 6), flow(9, 4)]) == [
        (0, "RESOURCE_EXHAUSTED"),
        (1, "RESOURCE_EXHAUSTED"),
    ]

    with netns.entered(node.ns):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind(("peer1", 0))

    def send_miss(tenant: int, sport: int) -> None:
        dst = NETS[tenant].split(".")[0] + ".0.0.5"
        tx.send(tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01", "192.168.1.2", dst, sport, 80))

    reasons = PIPELINE.counter("drop_reasons").id
    quota_drops = PIPELINE.drop_reason("flow_quota")

    def dropped() -> int:
        return c.read_counter(reasons).get(quota_drops, (0, 0))[0]

    send_miss(7, 100)  # tenant 7 is full: dropped and counted, never punted
    wait_until(lambda: dropped() == 1, 10, "a flow_quota drop")
    assert c.packet_ins.empty()
    c.write([update(DELETE, PIPELINE, flow(7, 1))])  # room again: misses punt
    send_miss(7, 101)
    pin = c.packet_ins.get(timeout=10)
    assert b"\x00\x65" in pin.payload[34:36]  # source port 101
    assert dropped() == 1
    assert insert(c, [flow(7, 1)]) == []
    with pytest.raises(queue.Empty):
        c.packet_ins.get(timeout=0.5)
    tx.close()
