"""The fault suite (issue 8): kill -9 each component in turn under a running connection load.

A tenant's clients keep ten connections talking (an echo every half second) and open new ones
without pause, through the XDP PP node, FM (a leader and a standby) and an SC group of three.
Then, one at a time: the SC chain's tail, middle and head (each restarted), the PP agent
(restarted at the same address), the FM leader (the standby takes over). The clients count what
they saw. No established connection may break; new connections may wait (a SYN retransmitted
while the slow path recovers) but the ones that fail within the clients' 20 s timeout are
bounded, and every count is printed as JSON for the record."""

from __future__ import annotations

import asyncio
import json
import time

import needs
import pytest

from cyberstar.lab.slowpath import SERVER_PORT, SERVERS, SlowPathLab
from cyberstar.lab.wait import wait_until
from cyberstar.sc import coord
from faults.load import ConnectionLoad, Counts

pytestmark = [pytest.mark.root, pytest.mark.slow]


def chain(lab: SlowPathLab) -> list[str]:
    async def read() -> list[str]:
        client = await coord.connect(lab.sc.etcd_config(), "test")
        try:
            chains = await coord.read_chains(client, coord.Keys(), coord.BadValues())
        finally:
            await client.close()
        return [n.id for n in chains["scg1"].nodes] if "scg1" in chains else []

    return asyncio.run(read())


def delta(after: Counts, before: dict) -> dict:
    return {k: v - before[k] for k, v in after.as_dict().items()}


def test_kill_9_each_component_under_load() -> None:
    needs.root()
    needs.etcd()
    with SlowPathLab(scgs=1, nodes_per_scg=3, mode="native") as lab:
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "fm1 to lead")
        wait_until(lambda: lab.fm_get("fm1", "/status")["pp_nodes"]["pp1"]["primary"], 30,
                   "fm1 to be primary on pp1")  # fmt: skip
        lab.start_fm("fm2")
        wait_until(lambda: lab.fm_get("fm2", "/status")["pp_nodes"]["pp1"]["connections"], 30,
                   "the standby fm2 to reach pp1")  # fmt: skip
        load = ConnectionLoad(lambda t: lab.connect(SERVERS[0], SERVER_PORT, timeout=t))
        load.start()
        report: dict[str, dict] = {}
        try:
            load.wait_for_more(50, 60)
            for position, role in ((2, "tail"), (1, "middle"), (0, "head")):
                before, t0 = load.counts.as_dict(), time.monotonic()
                victim = chain(lab)[position]
                lab.sc.nodes[victim].kill()
                wait_until(lambda v=victim: v not in chain(lab), 30, f"{victim} out of the chain")
                load.wait_for_more(20, 60)
                lab.sc.restart_node(victim)
                wait_until(lambda: len(chain(lab)) == 3, 30, "the chain of three again")
                load.wait_for_more(20, 60)
                report[f"sc {role} killed"] = delta(load.counts, before)
                report[f"sc {role} killed"]["seconds"] = round(time.monotonic() - t0, 1)

            before, t0 = load.counts.as_dict(), time.monotonic()
            node = lab.pps[0]
            assert node is not None
            streams = lab.fm_get("fm1", "/status")["pp_nodes"]["pp1"]["connections"]
            node.proc.kill()
            node.proc.wait()
            lab.start_pp(node.address, 0)
            wait_until(lambda: lab.fm_get("fm1", "/status")["pp_nodes"]["pp1"]["connections"]
                       > streams, 60, "fm1 to reconnect to the new PP agent")  # fmt: skip
            load.wait_for_more(20, 90)
            report["pp agent killed"] = delta(load.counts, before)
            report["pp agent killed"]["seconds"] = round(time.monotonic() - t0, 1)

            before, t0 = load.counts.as_dict(), time.monotonic()
            lab.kill_fm("fm1")
            wait_until(lambda: lab.fm_get("fm2", "/status")["leader"], 60, "fm2 to lead")
            load.wait_for_more(20, 90)
            report["fm leader killed"] = delta(load.counts, before)
            report["fm leader killed"]["seconds"] = round(time.monotonic() - t0, 1)
        finally:
            counts = load.stop()
        report["total"] = counts.as_dict()
        print(json.dumps(report, indent=1))
        assert counts.reset == 0, counts.errors[:5]
        assert counts.exchanges > 100
        # New connections wait while a component recovers; few may fail outright.
        assert counts.failed <= max(5, counts.attempted // 20), (report, counts.errors[:5])
