"""A stream's outgoing messages: filled from any thread, drained by the stream's coroutine.

The punt and idle-timeout threads publish without waiting for the event loop; the loop is woken
only when the stream's writer is asleep, so a burst costs one wake-up, not one per message.
"""

from __future__ import annotations

import asyncio
import collections


class Outbox:
    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._items: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._asleep = False
        self.limit = limit

    def put(self, msg: object) -> bool:
        """Queue a message (any thread); False when the outbox is full."""
        if len(self._items) >= self.limit:
            return False
        self._items.append(msg)
        if self._asleep:
            self._asleep = False
            self._loop.call_soon_threadsafe(self._wake.set)
        return True

    def put_urgent(self, msg: object) -> None:
        """Queue a message that must not be dropped (arbitration, errors, the end)."""
        self._items.append(msg)
        if self._asleep:
            self._asleep = False
            self._loop.call_soon_threadsafe(self._wake.set)

    async def take(self) -> list:
        """Everything queued, waiting for at least one message."""
        while not self._items:
            self._wake.clear()
            self._asleep = True
            if self._items:  # a producer may have queued before it saw us asleep
                break
            await self._wake.wait()
        self._asleep = False
        items = self._items
        return [items.popleft() for _ in range(len(items))]
