"""Two PP nodes in an ECMP group, programmed by one FM (paper §5.1, §5.2, §6.1).

Flows rehashed to another PP node, and replies returning through a different PP node than
their flow left by, are answered from FM's rule cache: SC is asked once per connection. The
group is two XDP nodes, then one XDP node and one bmv2 node (the hardware-enhanced PP running
the generated P4): FM programs both kinds the same way, and a restarted node of either kind is
reprogrammed and its established connections answered from the cache.
"""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest
from finsy.proto import p4r

from cyberstar import netns
from cyberstar.lab.slowpath import (
    FABRIC_NEXTHOP_BASE,
    FABRIC_VNI,
    GATEWAY_CLIENT,
    GATEWAY_SERVER,
    PUBLIC_IP,
    SERVER_PORT,
    SERVERS,
    VIP,
    VIP_PORT,
    SlowPathLab,
    gateway,
)
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.p4tools import THRIFT_PORT
from cyberstar.pipeline.pp import PIPELINE
from fm.helpers import open_connections, running_lab, sc_requests

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(
    scope="module",
    params=[("xdp", "xdp"), pytest.param(("xdp", "bmv2"), marks=pytest.mark.bmv2)],
    ids=lambda kinds: "+".join(kinds),
)
def lab(request):
    if "bmv2" in request.param:
        request.getfixturevalue("bmv2_tools")
    with running_lab(scgs=1, nodes_per_scg=3, mode="native", pp_kinds=request.param) as lab:
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
    # An XDP node takes each batch's rules and packets as one StreamWrite; bmv2 does not offer
    # it and gets a Write call and PacketOuts.
    nodes = lab.fm_get("fm1", "/status")["pp_nodes"]
    for i, kind in enumerate(lab.pp_kinds):
        writes = nodes[f"pp{i + 1}"]["rule_writes"]
        used, unused = ("stream", "rpc") if kind == "xdp" else ("rpc", "stream")
        assert writes[used] > 0 and writes[unused] == 0, (kind, writes)


def test_snat_and_load_balancer_through_the_group(lab) -> None:
    lab.route_via([0, 1])
    before, seen = len(lab.accepted), packet_ins(lab)
    _, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 300)
    assert errors == []
    snat = [peer for _, peer in lab.accepted[before:]]
    assert len(snat) == 300 and {ip for ip, _ in snat} == {PUBLIC_IP}
    assert len({port for _, port in snat}) == 300, "a public port was handed out twice"
    before = len(lab.accepted)
    _, errors = open_connections(lab, VIP, VIP_PORT, 100)
    assert errors == []
    assert {peer[0] for _, peer in lab.accepted[before:]} == {PUBLIC_IP}
    after = packet_ins(lab)
    assert all(after[pp] - seen[pp] >= 50 for pp in after), f"ECMP used one PP: {after}"


@pytest.mark.parametrize("index", [0, 1], ids=["first", "second"])
def test_a_restarted_node_serves_established_connections_from_the_cache(lab, index) -> None:
    lab.route_via([0, 1])
    sockets, errors = open_connections(lab, SERVERS[1], SERVER_PORT, 40, keep=True)
    assert errors == []
    try:
        asked, restarts = sc_requests(lab), pp_connections(lab)
        lab.restart_pp(index)
        for s in sockets:
            s.sendall(b"after restart")
            assert s.recv(100) == b"echo:after restart"
        assert pp_connections(lab)[f"pp{index + 1}"] > restarts[f"pp{index + 1}"]
        assert sc_requests(lab) == asked, "FM should answer repeated requests from its cache"
    finally:
        for s in sockets:
            s.close()


def pp_connections(lab: SlowPathLab) -> dict[str, int]:
    """How many times FM (re)established its stream to each PP node."""
    return {pp: n["connections"] for pp, n in lab.fm_get("fm1", "/status")["pp_nodes"].items()}


def test_no_thrift_server_is_reachable_from_tenants(lab) -> None:
    """bmv2 always opens an unauthenticated Thrift server; only its own namespace reaches it.
    An XDP node opens none; from the tenants' side every node must look the same."""
    for i, kind in enumerate(lab.pp_kinds):
        if kind == "bmv2":
            with netns.entered(lab.pp_ns[i]):
                inside = socket.create_connection(("127.0.0.1", THRIFT_PORT), timeout=5)
            inside.close()
        s = lab.client_socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, f"c{i}".encode())
        s.settimeout(1)
        with pytest.raises(OSError):
            s.connect((gateway(GATEWAY_CLIENT, i), THRIFT_PORT))
        s.close()
