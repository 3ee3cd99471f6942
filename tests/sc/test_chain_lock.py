"""A node killed while it holds its group's chain lock must not leave the chain unrepaired.

The lock lives on a lease: once the dead holder's lease lapses, the surviving nodes must take
the lock and drop the dead node, even though the membership change they are repairing came
before the lock was free and no other change follows. (Reproduced in a full CI run: the nodes
gave up on the lock after five seconds and waited for a membership event that never came.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from cyberstar.lab.sc import ScLab
from cyberstar.sc import coord
from cyberstar.sc.server import CHAIN_LOCK_TTL_S
from sc.test_chain import TENANTS, chain_ids, watched_group

pytestmark = pytest.mark.usefixtures("need_etcd")


def test_the_chain_is_repaired_once_a_dead_holders_lock_lapses() -> None:
    async def go() -> None:
        with ScLab(TENANTS, lease_ttl_s=2) as lab:
            async with watched_group(lab) as (smap, client):
                # Stands in for a node that took the lock and died: never released or refreshed.
                lock = client.lock(coord.Keys().chain_lock("scg1"), ttl=CHAIN_LOCK_TTL_S)
                assert await lock.acquire(timeout=5)
                held_at = time.monotonic()
                victim = chain_ids(smap, "scg1")[1]
                lab.nodes[victim].kill()
                await smap.wait_until(lambda m: victim not in chain_ids(m, "scg1"), 40)
                # Not before the lock was free: the repair really waited for it.
                assert time.monotonic() - held_at >= CHAIN_LOCK_TTL_S - 1
                assert len(chain_ids(smap, "scg1")) == 2

    asyncio.run(go())
