"""The punts waiting for FM's slow path, shared fairly between tenants.

One FIFO per tenant, served round robin: a batch takes one packet from each waiting tenant in
turn, so a tenant flooding new flows fills its own queue while every other tenant's first
packets still go out with the next batch (a tenant's wait is bounded by one batch, whatever the
others send). Bounded twice: `per_tenant` packets per tenant (more are shed, counted against
that tenant) and `total` for all (a full queue sheds the newest packet of the longest queue, so
the flooding tenant pays, not the one that just arrived). A shed first packet is not lost: the
PP punts the flow's next packet (a retransmitted SYN) again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self._queues: dict[int, deque[T]] = {}
        self._turns: deque[int] = deque()  # tenants with packets waiting, in serving order
        self._size = 0
        self._ready = asyncio.Event()
        self.shed: dict[int, int] = defaultdict(int)  # tenant → packets dropped

    def __len__(self) -> int:
        return self._size

    def put(self, tenant: int, item: T) -> bool:
        """Queue `item` for `tenant`; False when it was shed instead."""
        q = self._queues.get(tenant)
        if q is not None and len(q) >= self.per_tenant:
            self.shed[tenant] += 1
            return False
        if self._size >= self.total:
            longest = max(self._queues, key=lambda t: len(self._queues[t]))
            if q is not None and len(q) >= len(self._queues[longest]):
                self.shed[tenant] += 1
                return False
            self._queues[longest].pop()
            self.shed[longest] += 1
            self._size -= 1
            if not self._queues[longest]:
                del self._queues[longest]
                self._turns.remove(longest)
        if q is None:
            q = self._queues[tenant] = deque()
            self._turns.append(tenant)
        q.append(item)
        self._size += 1
        self._ready.set()
        return True

    def take(self, n: int) -> list[T]:
        """Up to `n` items, one per waiting tenant in turn."""
        out: list[T] = []
        turns, queues = self._turns, self._queues
        while turns and len(out) < n:
            tenant = turns.popleft()
            q = queues[tenant]
            out.append(q.popleft())
            if q:
                turns.append(tenant)
            else:
                del queues[tenant]
        self._size -= len(out)
        if not self._size:
            self._ready.clear()
        return out

    async def wait(self) -> None:
        """Until something is queued."""
        await self._ready.wait()
