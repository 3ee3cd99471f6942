"""Live migration between heterogeneous PP nodes (paper §6.2), end to end.

The tenant's traffic reaches its PP nodes through one ECMP group (the paper's virtual ENI: the
multipath routes of the client and the server). The tenant moves from two XDP nodes to a bmv2
node: the bmv2 node joins the group, then the XDP nodes leave it; and back. Established TCP
connections keep talking throughout (every round of every connection is counted by the client);
flows landing on a node that lacks their rules are answered from FM's cache, so SC's request
counter does not move for them. The idle timeout is short, so the nodes a tenant left have
forgotten its flows by the time it comes back: the way back is answered from the cache too.
"""

from __future__ import annotations

import time

import pytest

from cyberstar.lab.slowpath import SERVER_PORT, SERVERS, VIP, VIP_PORT, SlowPathLab
from fm.helpers import Conversations, open_connections, running_lab, sc_requests
from fm.test_offload import flow_counters

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.bmv2]

XDP_NODES, BMV2_NODE = [0, 1], [2]
IDLE_S = 3


@pytest.fixture(scope="module")
def lab(bmv2_tools):
    kinds = ("xdp", "xdp", "bmv2")
    with running_lab(scgs=1, nodes_per_scg=3, mode="native", pp_kinds=kinds,
                     idle_timeout_s=IDLE_S) as lab:  # fmt: skip
        yield lab


def packet_ins(lab: SlowPathLab) -> dict[str, int]:
    return {pp: n["packet_in"] for pp, n in lab.fm_get("fm1", "/status")["pp_nodes"].items()}


def move(lab: SlowPathLab, talk: Conversations, old: list[int], new: list[int]) -> None:
    """The new nodes join the group, traffic flows over all of them, then the old ones leave."""
    lab.route_via(old + new)
    talk.wait_rounds(5)
    lab.route_via(new)
    talk.wait_rounds(5)
    # Long enough for the nodes left behind to idle the tenant's flows out.
    time.sleep(IDLE_S + 1.5)
    talk.wait_rounds(2)


def test_established_connections_move_to_bmv2_and_back_without_sc(lab) -> None:
    lab.route_via(XDP_NODES)
    snat, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 40, keep=True)
    lb, lb_errors = open_connections(lab, VIP, VIP_PORT, 20, keep=True)
    assert errors == [] and lb_errors == []
    with Conversations(snat + lb) as talk:
        talk.wait_rounds(3)
        asked, seen = sc_requests(lab), packet_ins(lab)

        move(lab, talk, XDP_NODES, BMV2_NODE)
        assert talk.failures == [], f"connections broke on the way to bmv2: {talk.failures[:3]}"
        on_bmv2 = packet_ins(lab)
        assert on_bmv2["pp3"] - seen["pp3"] >= 60, "every connection must have punted on bmv2"
        assert sc_requests(lab) == asked, "moved flows must be answered from FM's cache"
        assert len(flow_counters(lab.pps[2])) >= 120, "bmv2 holds both rules of each connection"
        assert all(len(flow_counters(lab.pps[i])) == 0 for i in XDP_NODES), (
            "the XDP nodes should have idled the tenant's flows out"
        )

        move(lab, talk, BMV2_NODE, XDP_NODES)
        assert talk.failures == [], f"connections broke on the way back: {talk.failures[:3]}"
        back = packet_ins(lab)
        assert sum(back[f"pp{i + 1}"] - on_bmv2[f"pp{i + 1}"] for i in XDP_NODES) >= 60
        assert sc_requests(lab) == asked, "the way back is answered from FM's cache too"
        assert len(flow_counters(lab.pps[2])) == 0
        rounds, echoes = talk.rounds, talk.echoes
    assert talk.failures == []
    assert echoes >= 60 * (rounds - 1), "every connection answered every round"


def test_new_connections_during_a_move_ask_sc_once_each(lab) -> None:
    lab.route_via(XDP_NODES + BMV2_NODE)
    try:
        asked = sc_requests(lab)
        _, errors = open_connections(lab, SERVERS[1], SERVER_PORT, 60)
        assert errors == []
        assert sc_requests(lab) - asked == 60
    finally:
        lab.route_via(XDP_NODES)
