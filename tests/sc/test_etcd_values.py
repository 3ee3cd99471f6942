"""A malformed value under our etcd prefix is logged once and skipped, never retried in a loop:
the shard map keeps the good entries, and an SC group still repairs its chain.

On the unhardened code one bad shard-map value made every reload raise, so the watch retried
for ever (logging each time) and the map never loaded; a bad member value stalled repair."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cyberstar.lab.certs import LabCerts
from cyberstar.lab.sc import LocalEtcd, ScLab
from cyberstar.sc import coord
from cyberstar.sc.flows import ShardId
from cyberstar.sc.routing import ShardMap
from sc.test_chain import TENANTS, chain_ids, watched_group

pytestmark = pytest.mark.usefixtures("need_etcd")
BAD = {
    b"/cyberstar/shards/7/512-1024": b"garbage",
    b"/cyberstar/shards/8/lo-hi": b'{"scg": "scg1"}',
    b"/cyberstar/shards/9/0-1024": b'{"scg": 5}',
    b"/cyberstar/scg/scg2/chain": b'{"epoch": "one", "nodes": []}',
}


async def _map_with_bad_values(etcd: LocalEtcd) -> tuple[ShardMap, coord.EtcdClient]:
    client = await coord.connect(etcd.config("admin", "t"), "test")
    await client.put(b"/cyberstar/shards/7/0-512", b'{"scg": "scg1"}')
    for key, value in BAD.items():
        await client.put(key, value)
    smap = ShardMap(etcd.config("admin", "t"))
    await asyncio.wait_for(smap.start(), 10)
    return smap, client


def test_the_shard_map_skips_bad_values_once(tmp_path, caplog) -> None:
    etcd = LocalEtcd(tmp_path, LabCerts(tmp_path / "certs"))
    caplog.set_level(logging.ERROR, logger="cyberstar.sc.coord")

    async def go() -> None:
        smap, client = await _map_with_bad_values(etcd)
        try:
            assert smap.shards == {ShardId(7, 0, 512): "scg1"}
            assert "scg2" not in smap.chains
            # More changes reload the map: the same bad values are not logged again.
            for i in range(5):
                await client.put(b"/cyberstar/shards/7/0-512", b'{"scg": "scg%d"}' % i)
            await smap.wait_until(lambda m: m.shards.get(ShardId(7, 0, 512)) == "scg4", 10)
            assert smap.bad_values.count == len(BAD)
        finally:
            await smap.close()
            await client.close()

    try:
        asyncio.run(go())
    finally:
        etcd.close()
    logged = [r for r in caplog.records if "malformed value" in r.getMessage()]
    assert len(logged) == len(BAD), [r.getMessage() for r in logged]


def test_a_group_repairs_its_chain_around_bad_values() -> None:
    async def go() -> None:
        with ScLab(TENANTS, lease_ttl_s=2) as lab:
            async with watched_group(lab) as (smap, client):
                await client.put(b"/cyberstar/members/sc/ghost", b"not json")
                await client.put(b"/cyberstar/shards/7/2000-3000", b"{")
                victim = chain_ids(smap, "scg1")[1]
                lab.nodes[victim].kill()
                await smap.wait_until(lambda m: victim not in chain_ids(m, "scg1"), 60)
                lab.restart_node(victim)
                await smap.wait_until(lambda m: len(chain_ids(m, "scg1")) == 3, 60)
            logs = "".join(n.log.read_text() for n in lab.nodes.values())
            assert "members/sc/ghost: skipping a malformed value" in logs

    asyncio.run(go())
