"""Two PP nodes in an ECMP group, programmed by one FM (paper §5.1).

Flows rehashed to another PP node, and replies returning through a different PP node than
their flow left by, are answered from FM's rule cache: SC is asked once per connection.
"""

from __future__ import annotations

import os
import shutil

import pytest

from cyberstar.lab.slowpath import SERVER_PORT, SERVERS, VIP, VIP_PORT, SlowPathLab, wait_for
from fm.helpers import open_connections, sc_requests

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF, network namespaces)")
    if shutil.which("etcd") is None:
        pytest.skip("etcd (Debian's etcd-server) is not installed: run `make install`")
    with SlowPathLab(scgs=1, nodes_per_scg=3, mode="native", pps=2) as lab:
        wait_for(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "fm1 to lead")
        wait_for(
            lambda: all(n["primary"] for n in lab.fm_get("fm1", "/status")["pp_nodes"].values()),
            30, "fm1 to be primary on both PP nodes",
        )  # fmt: skip
        yield lab


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
