"""A stream's outgoing messages: filled from any thread, drained by the stream's coroutine.

The idle-timeout thread publishes without waiting for the event loop; the loop is woken only
when the stream's writer is asleep, so a burst costs one wake-up, not one per message. Punts
are published from the loop itself (a reader callback), which sets the writer's event directly.
The limit is on the messages' total weight (by default one each; the server weighs a batch of
PacketIns by its packets). Urgent messages (answers, errors) are never dropped; instead the
stream's reader waits (`urgent_below`) while too many of them wait for a controller that does
not read its stream, so that controller's requests wait in gRPC's flow control, not in memory.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable


def _one(_: object) -> int:
    return 1


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Outbox:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, limit: int, weight: Callable[[object], int] = _one
    ) -> None:
        self._loop = loop
        self._items: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._asleep = False
        self._weight = weight
        self._load = 0  # the queued items' total weight
        self._urgent = 0  # urgent items queued
        self._taken = asyncio.Event()  # set when the writer takes what is queued
        self._lock = threading.Lock()  # producers run on several threads
        self.limit = limit

    def put(self, msg: object) -> bool:
        """Queue a message (any thread); False when it would take the outbox over its limit."""
        w = self._weight(msg)
        with self._lock:
            if self._load + w > self.limit:
                return False
            self._load += w
            self._items.append(msg)
        self._wake_writer()
        return True

    def put_urgent(self, msg: object) -> None:
        """Queue a message that must not be dropped (arbitration, errors, the end)."""
        w = self._weight(msg)
        with self._lock:
            self._load += w
            self._urgent += 1
            self._items.append(msg)
        self._wake_writer()

    async def urgent_below(self, count: int) -> None:
        """Wait (on the event loop) until fewer than `count` urgent messages are queued."""
        while self._urgent >= count:
            self._taken.clear()
            await self._taken.wait()

    def _wake_writer(self) -> None:
        if self._asleep:
            self._asleep = False
            if _running_loop() is self._loop:  # a reader callback of the loop itself
                self._wake.set()
            else:
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
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._load = self._urgent = 0
        self._taken.set()
        return items
