"""FM keeps its PP nodes: a rogue P4Runtime client that arbitrates with a huge election id
takes a node for a moment, not for good. FM says it lost primary, takes the node back, and new
connections work again.

Before, the node kept 2^100 as the highest id it had seen, FM's ids (2^32 + an etcd revision)
could never reach it, and every new connection failed until the PP agent restarted — with
nothing in any log.
"""

from __future__ import annotations

import time

import pytest
from finsy.proto import rpc_code

from cyberstar.lab.slowpath import PUBLIC_IP, SERVER_PORT, SERVERS
from cyberstar.lab.wait import wait_until
from cyberstar.p4rt.client import P4RuntimeClient
from fm.helpers import open_connections, running_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_fm_takes_its_node_back_from_a_rogue_election_id() -> None:
    with running_lab(scgs=1, nodes_per_scg=1) as lab:
        _, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 5)
        assert errors == []
        node = lab.pp
        rogue = P4RuntimeClient(node.address, node.device_id, election_id=1 << 100)
        rogue.wait_ready(10)
        try:
            assert rogue.open_stream().status.code == rpc_code.OK  # the rogue is primary
            fm_log = lab.workdir / "fm1.log"
            wait_until(lambda: "lost primary" in fm_log.read_text(), 10, "FM to log it")
            # FM takes the node back while the rogue is still connected
            taken = rogue.arbitrations.get(timeout=20)
            assert taken.status.code == rpc_code.ALREADY_EXISTS
            status = lab.fm_get("fm1", "/status")["pp_nodes"]["pp1"]
            assert status["lost_primary"] == 1
            assert status["election_id"] == (1 << 100) + 1
            time.sleep(8)  # the rogue stays ten seconds in all
        finally:
            rogue.close()
        wait_until(lambda: lab.fm_get("fm1", "/status")["pp_nodes"]["pp1"]["primary"], 10,
                   "FM to be primary")  # fmt: skip
        before = len(lab.accepted)
        _, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 20)
        assert errors == []
        assert {ip for _, (ip, _) in lab.accepted[before:]} == {PUBLIC_IP}
