"""Two PP nodes in an ECMP group, programmed by one FM (paper §5.1, §5.2).

Flows rehashed to another PP node, and replies returning through a different PP node than
their flow left by, are answered from FM's rule cache: SC is asked once per connection.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from finsy.proto import p4r

from cyberstar.lab.slowpath import (
    FABRIC_NEXTHOP_BASE,
    FABRIC_VNI,
    GATEWAY_SERVER,
    SERVER_PORT,
    SERVERS,
    VIP,
    VIP_PORT,
    SlowPathLab,
    gateway,
)
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.pipeline.pp import PIPELINE
from fm.helpers import open_connections, running_lab, sc_requests

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab():
    with running_lab(scgs=1, nodes_per_scg=3, mode="native", pps=2) as lab:
        yield lab


def test_fm_installs_the_fabric_next_hops_between_pp_nodes(lab) -> None:
    decoder = PipelineDecoder(PIPELINE)
    next_hop = PIPELINE.table("next_hop").id
    for i, node in enumerate(lab.pps):
        client = P4RuntimeClient(node.address, node.device_id, election_id=1, tls=node.tls)
        try:
            client.wait_ready(10)
            entities = client.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=next_hop))])
        finally:
            client.close()
        entries = [decoder.table(next_hop).decode(e.table_entry, kind=p4r.Update.INSERT)
                   for e in entities]  # fmt: skip
        tunnels = {e.match["nexthop_id"]: e.params for e in entries
                   if e.action == "set_next_hop_vxlan"}  # fmt: skip
        peer = 1 - i
        assert set(tunnels) == {FABRIC_NEXTHOP_BASE + peer}, f"pp{i + 1}: {tunnels}"
        params = tunnels[FABRIC_NEXTHOP_BASE + peer]
        assert params["vni"] == FABRIC_VNI and params["port"] == 2
        assert params["src_addr"] == int(ip_address(gateway(GATEWAY_SERVER, i)))
        assert params["dst_addr"] == int(ip_address(gateway(GATEWAY_SERVER, peer)))


def packet_ins(lab: SlowPathLab) -> dict[str, int]:
    return {pp: n["packet_in"] for pp, n in lab.fm_get("fm1", "/status")["pp_nodes"].items()}


def test_flows_rehashed_to_another_pp_are_served_from_the_cache(lab) -> None:
    lab.route_via([0])
    try:
        sockets, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 50, keep=True)
        assert errors == []
        asked, seen = sc_requests(lab), packet_ins(lab)
        lab.route_via([1], side="client")  # the client's next packets reach the other PP node
        for s in sockets:
            s.sendall(b"moved")
            assert s.recv(100) == b"echo:moved"
        assert sc_requests(lab) == asked, "a rehashed flow must be answered from FM's cache"
        assert packet_ins(lab)["pp2"] - seen["pp2"] >= 50
    finally:
        for s in sockets:
            s.close()
        lab.route_via([0, 1])


def test_ecmp_spreads_connections_and_asks_sc_once_per_connection(lab) -> None:
    lab.route_via([0, 1])
    asked, seen = sc_requests(lab), packet_ins(lab)
    _, errors = open_connections(lab, SERVERS[1], SERVER_PORT, 300)
    assert errors == []
    _, errors = open_connections(lab, VIP, VIP_PORT, 100)
    assert errors == []
    after = packet_ins(lab)
    assert all(after[pp] - seen[pp] >= 50 for pp in after), f"ECMP used one PP: {after}"
    # Replies often return through the other PP node: it punts, and FM answers from its cache.
    assert sc_requests(lab) - asked == 400
