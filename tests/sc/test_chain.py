"""Chain replication with real processes: kill each node of an SC group in turn under load.

Three `cyberstar sc serve` processes form one SCG; a load of new SNAT flows and releases runs
through the FM-side router the whole time. The tail, then the middle, then the head are
killed with SIGKILL and restarted; each time the group must go on answering, and at the end
every node must hold exactly the allocations the clients were told about — none lost, none
duplicated, none leaked."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from cyberstar.lab.sc import ScLab, SnatLoad, cluster_census
from cyberstar.lab.wait import wait_until_async
from cyberstar.sc import coord
from cyberstar.sc.routing import ScRouter, ShardMap

TENANTS = [
    {
        "id": 7,
        "chain": ["fw", "nat"],
        "forward_nexthop": 2,
        "return_nexthop": 1,
        "home_scg": "scg1",
        "nfs": {
            "fw": {"kind": "firewall", "rules": [{"action": "allow", "src": ["10.0.0.0/8"]}]},
            "nat": {"kind": "snat", "pool": ["203.0.113.1:1024-4095", "203.0.113.2:1024-4095"]},
        },
    }
]
UNIVERSE = 2 * 3072


def chain_ids(shard_map: ShardMap, scg: str) -> list[str]:
    chain = shard_map.chains.get(scg)
    return [n.id for n in chain.nodes] if chain else []


@contextlib.asynccontextmanager
async def watched_group(lab: ScLab, scg: str = "scg1", size: int = 3
                        ) -> AsyncIterator[tuple[ShardMap, coord.EtcdClient]]:  # fmt: skip
    """An SC group of `size` nodes whose chain has formed, a shard map watching it and an
    etcd client of the test's own."""
    lab.add_scg(scg, size)
    smap = ShardMap(lab.etcd_config())
    await smap.start()
    client = await coord.connect(lab.etcd_config(), "test")
    try:
        await smap.wait_until(lambda m: len(chain_ids(m, scg)) == size, 30)
        yield smap, client
    finally:
        await client.close()
        await smap.close()


@contextlib.asynccontextmanager
async def snat_load_on(
    lab: ScLab, groups: dict[str, int], ready: Callable[[ShardMap], bool], warmup: int
) -> AsyncIterator[tuple[ShardMap, ScRouter, SnatLoad]]:
    """SC groups of the given sizes, a shard map watching them until `ready`, and a load of new
    SNAT flows and releases through the FM-side router that has then answered `warmup` calls."""
    for scg, size in groups.items():
        lab.add_scg(scg, size)
    shard_map = ShardMap(lab.etcd_config())
    await shard_map.start()
    router = ScRouter(shard_map, lab.client_tls, attempts=400, pause_s=0.05)
    load = SnatLoad(router, 7, batch=10, release_ratio=0.3)
    try:
        await shard_map.wait_until(ready, 30)
        load.start()
        await load.wait_for_more(warmup, 30)
        yield shard_map, router, load
    finally:
        await load.stop()
        await router.close()
        await shard_map.close()


def one_shard_on_a_chain_of_three(shard_map: ShardMap) -> bool:
    return len(chain_ids(shard_map, "scg1")) == 3 and len(shard_map.shards) == 1


async def converged(lab: ScLab, size: int) -> bool:
    """Every live node is in the chain and applied what the head applied."""
    census = await cluster_census(
        [n.address for n in lab.nodes.values() if n.alive], lab.client_tls
    )
    infos = [c[3] for c in census.values()]
    if len(infos) != size or {i.role for i in infos} != {"head", "middle", "tail"}:
        return False
    return len({i.applied_seq for i in infos}) == 1 and len({i.committed_seq for i in infos}) == 1


@pytest.mark.usefixtures("need_etcd")
def test_kill_each_node_in_turn_under_load() -> None:
    asyncio.run(_kill_each_node_in_turn())


async def _kill_each_node_in_turn() -> None:
    with ScLab(TENANTS, lease_ttl_s=2) as lab:
        group = snat_load_on(lab, {"scg1": 3}, one_shard_on_a_chain_of_three, 200)
        async with group as (shard_map, _router, load):
            victims = []
            # A restarted node rejoins at the tail: killing the tail, then the middle, then the
            # head kills every node once and every role once.
            for position in (2, 1, 0):
                victim = chain_ids(shard_map, "scg1")[position]
                victims.append(victim)
                lab.nodes[victim].kill()
                await shard_map.wait_until(lambda m, v=victim: v not in chain_ids(m, "scg1"), 20)
                await load.wait_for_more(100, 30)  # the two survivors carry the load
                lab.restart_node(victim)
                await shard_map.wait_until(lambda m: len(chain_ids(m, "scg1")) == 3, 20)
                await load.wait_for_more(100, 30)
                assert not load.failed, load.failed[:5]
            assert sorted(victims) == sorted(lab.nodes)
            await load.stop()
            await wait_until_async(lambda: converged(lab, 3), 20, "the chain to converge")
        assert not load.failed, load.failed[:5]
        census = await cluster_census([n.address for n in lab.nodes.values()], lab.client_tls)
        expected = Counter(list(load.held))
        for node_id, (free, held, _shards, _info) in census.items():
            assert Counter(held) == expected, f"{node_id} lost or invented allocations"
            everything = Counter(free) + Counter(held)
            assert max(everything.values()) == 1, f"{node_id} holds an element twice"
            assert len(everything) == UNIVERSE, f"{node_id} leaked elements"
        assert load.ok > 500 and load.released > 100
        # The tails answered (packet-pass-through) through all this, whoever was the tail.
        assert sum(c[3].counters["answers_delivered"] for c in census.values()) > 0
