"""Idle timeouts close the loop: PP notifies, FM deletes the rules and releases the connection
in SC, whose SNAT port goes back to the pool (and serves the next connection)."""

from __future__ import annotations

import asyncio

import needs
import pytest

from cyberstar.lab.slowpath import (
    SERVER_PORT,
    SMALL_POOL_SIZE,
    SMALL_SERVER,
    SlowPathLab,
)
from cyberstar.lab.wait import wait_until
from cyberstar.sc.client import ScClient

pytestmark = [pytest.mark.root, pytest.mark.slow]


def sc_counter(lab: SlowPathLab, name: str) -> int:
    async def total() -> int:
        n = 0
        for node in lab.sc.nodes.values():
            async with ScClient(node.config["listen"], lab.sc.client_tls) as c:
                n += (await c.inspect()).counters.get(name, 0)
        return n

    return asyncio.run(total())


def test_idle_flows_are_released_and_their_ports_reused() -> None:
    needs.root()
    needs.etcd()
    with SlowPathLab(scgs=1, nodes_per_scg=1, idle_timeout_s=1) as lab:
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "fm1 to lead")
        for done in (1, 2):  # twice the pool's size in total: ports must come back
            for _ in range(SMALL_POOL_SIZE):
                lab.connect(SMALL_SERVER, SERVER_PORT).close()
            wait_until(lambda: lab.fm_get("fm1", "/status")["cached_connections"] == 0, 20,
                     "the closed connections to idle out of FM's cache")  # fmt: skip
            # FM drops a connection from its cache before SC has freed its port: wait for SC
            wait_until(lambda n=done: sc_counter(lab, "freed_connections") >= n * SMALL_POOL_SIZE,
                       20, "SC to free the pool's ports")  # fmt: skip
        stats = lab.fm_get("fm1", "/status")["slow_path"]
        assert stats["rules_expired"] >= 4 * SMALL_POOL_SIZE, stats
        assert stats.get("pool_exhausted_alarms", 0) == 0
        assert sc_counter(lab, "freed_connections") >= 2 * SMALL_POOL_SIZE
