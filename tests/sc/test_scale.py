"""Scale out and in with real processes while requests flow: 1 → 2 → 4 SC groups and back to 1.

Every move goes through the Scale RPC (`start`) to the owning SCG's head and ends with `fin`
(ScaleStatus); the load must see no failed request and no element handed out twice, and at
the end the one remaining group holds exactly the live allocations and every other element
free."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from cyberstar.lab.sc import ScLab, cluster_census
from cyberstar.sc.client import ScClient
from cyberstar.sc.routing import ScRouter, ShardMap
from sc.test_chain import TENANTS, UNIVERSE, snat_load_on

NODES_PER_SCG = 2


async def move(router: ScRouter, kind: str, shard: str, target: str) -> None:
    shard_map = router.map
    sid = next(s for s in shard_map.shards if str(s) == shard)
    async with ScClient(shard_map.head(shard_map.shards[sid]), router.tls) as client:
        start = client.scale_out if kind == "out" else client.scale_in
        op = await start(shard, target)
        reply = await client.scale_status(op, wait_s=30)
    assert reply.phase == "fin", reply
    return list(reply.shards)


def owners(shard_map: ShardMap) -> dict[str, str]:
    return {str(s): scg for s, scg in shard_map.shards.items()}


@pytest.mark.usefixtures("need_etcd")
def test_scale_out_to_four_groups_and_back_to_one_under_load() -> None:
    asyncio.run(_scale_out_and_in())


def _formed(shard_map: ShardMap) -> bool:
    """Four groups of NODES_PER_SCG nodes, one shard."""
    chains = shard_map.chains.values()
    return (
        len(shard_map.shards) == 1
        and len(chains) == 4
        and all(len(c.nodes) == NODES_PER_SCG for c in chains)
    )


async def _scale_out_and_in() -> None:
    with ScLab(TENANTS, lease_ttl_s=2) as lab:
        groups = dict.fromkeys(("scg1", "scg2", "scg3", "scg4"), NODES_PER_SCG)
        async with snat_load_on(lab, groups, _formed, 300) as (shard_map, router, load):
            # 1 → 2
            await move(router, "out", "7:0-1024", "scg2")
            await shard_map.wait_until(
                lambda m: owners(m) == {"7:0-512": "scg1", "7:512-1024": "scg2"}, 10
            )
            await load.wait_for_more(200, 30)
            # 2 → 4, both moves at once
            await asyncio.gather(
                move(router, "out", "7:0-512", "scg3"),
                move(router, "out", "7:512-1024", "scg4"),
            )
            # Both splits alone also make four shards: wait for both moves' map switches.
            await shard_map.wait_until(
                lambda m: set(owners(m).values()) == {"scg1", "scg2", "scg3", "scg4"}, 10
            )
            assert len(shard_map.shards) == 4
            await load.wait_for_more(200, 30)
            # 4 → 2: each new group's shard merges back into its neighbour
            await asyncio.gather(
                move(router, "in", "7:256-512", "scg1"),
                move(router, "in", "7:768-1024", "scg2"),
            )
            await shard_map.wait_until(lambda m: len(m.shards) == 2, 10)
            await load.wait_for_more(200, 30)
            # 2 → 1
            await move(router, "in", "7:512-1024", "scg1")
            await shard_map.wait_until(lambda m: owners(m) == {"7:0-1024": "scg1"}, 10)
            await load.wait_for_more(200, 30)
            await load.stop()
        assert not load.failed, load.failed[:5]
        census = await cluster_census([n.address for n in lab.nodes.values()], lab.client_tls)
        expected = Counter(list(load.held))
        for node_id, (free, held, shards, _info) in census.items():
            if node_id.startswith("scg1"):
                assert [s[0] for s in shards] == ["7:0-1024"], shards
                extra = Counter(held) - expected
                missing = expected - Counter(held)
                assert not extra, f"{node_id} invented {[hex(e) for e in extra]}"
                assert not missing, f"{node_id} lost {[hex(e) for e in missing]}"
                everything = Counter(free) + Counter(held)
                assert max(everything.values()) == 1, f"{node_id} holds an element twice"
                assert len(everything) == UNIVERSE, f"{node_id} leaked elements"
            else:
                assert not shards, f"{node_id} still holds {shards}"
        assert load.ok > 1000
