"""False failure detection must not cost state (issue 8).

* The membership lease is refreshed from a thread of its own: an event loop stalled for longer
  than the TTL (a big batch, a long GC, a loaded host) keeps the node's lease; a loop stuck for
  longer than `stall_limit_s` lets it lapse, so a hung node is still replaced.
* A node whose lease lapsed anyway (here: the process stopped with SIGSTOP) keeps its state and
  rejoins at the tail; its new predecessor sends only the updates it missed, not a snapshot.

On the unhardened code the lease was refreshed by a task of the event loop (a 3 s lease expired
under CPU load with no fault injected) and a node that found itself removed dropped its state
and was sent a full snapshot."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from cyberstar.lab.certs import LabCerts
from cyberstar.lab.sc import LocalEtcd, ScLab, cluster_census
from cyberstar.lab.wait import wait_until_async
from cyberstar.sc import coord
from sc.test_chain import (
    TENANTS,
    chain_ids,
    converged,
    one_shard_on_a_chain_of_three,
    snat_load_on,
)

pytestmark = pytest.mark.usefixtures("need_etcd")


@pytest.fixture
def etcd(tmp_path):
    certs = LabCerts(tmp_path / "certs")
    server = LocalEtcd(tmp_path, certs)
    try:
        yield server
    finally:
        server.close()


async def _lease_survives(etcd: LocalEtcd, stall_s: float, stall_limit_s: float) -> int:
    config = etcd.config("sc", "keeper-test")
    client = await coord.connect(config, "test")
    lease = await client.lease(2)
    keeper = coord.LeaseKeeper(config, lease.id, 2, stall_limit_s=stall_limit_s, what="test")
    keeper.start()
    try:
        keeper.beat()
        time.sleep(stall_s)  # the event loop is stuck: nothing of it runs
        keeper.beat()
        await asyncio.sleep(1.0)
        return (await client.get_lease_info(lease.id, keys=False)).TTL
    finally:
        await asyncio.to_thread(keeper.stop)
        await client.close()


def test_a_stalled_loop_keeps_its_lease(etcd: LocalEtcd) -> None:
    assert asyncio.run(_lease_survives(etcd, stall_s=5.0, stall_limit_s=10.0)) > 0


def test_a_stuck_loop_lets_its_lease_lapse(etcd: LocalEtcd) -> None:
    assert asyncio.run(_lease_survives(etcd, stall_s=5.0, stall_limit_s=1.0)) <= 0


def test_a_node_whose_lease_lapsed_rejoins_without_a_snapshot() -> None:
    asyncio.run(_rejoin())


async def _inspect_all(lab: ScLab) -> dict:
    census = await cluster_census([n.address for n in lab.nodes.values()], lab.client_tls)
    return {node: c[3] for node, c in census.items()}


async def _rejoin() -> None:
    with ScLab(TENANTS, lease_ttl_s=2) as lab:
        group = snat_load_on(lab, {"scg1": 3}, one_shard_on_a_chain_of_three, 200)
        async with group as (shard_map, _router, load):
            tail, middle = chain_ids(shard_map, "scg1")[2], chain_ids(shard_map, "scg1")[1]
            before = await _inspect_all(lab)
            proc = lab.nodes[tail].proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGSTOP)  # the whole process, keeper thread included
            try:
                await shard_map.wait_until(lambda m: tail not in chain_ids(m, "scg1"), 20)
                await load.wait_for_more(200, 30)  # updates the stopped node misses
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            await shard_map.wait_until(lambda m: len(chain_ids(m, "scg1")) == 3, 30)
            assert chain_ids(shard_map, "scg1")[2] == tail
            await load.wait_for_more(100, 30)
            await load.stop()
            await wait_until_async(lambda: converged(lab, 3), 30, "the chain to converge")
            after = await _inspect_all(lab)
        assert not load.failed, load.failed[:5]
        assert after[tail].counters["lease_lost"] == before[tail].counters["lease_lost"] + 1
        sent = sum(after[n].counters["snapshots_sent"] - before[n].counters["snapshots_sent"]
                   for n in after)  # fmt: skip
        assert sent == 0, "the rejoining node was sent a snapshot"
        assert (
            after[middle].counters["resyncs_incremental"]
            > (before[middle].counters["resyncs_incremental"])
        )
        census = await cluster_census([n.address for n in lab.nodes.values()], lab.client_tls)
        expected = Counter(list(load.held))
        for node_id, (_free, held, _shards, _info) in census.items():
            assert Counter(held) == expected, f"{node_id} lost or invented allocations"
