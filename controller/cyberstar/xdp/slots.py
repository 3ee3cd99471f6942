"""An exact table kept in an open-addressed BPF array, mapped into the agent.

A BPF hash map costs a packet two dependent memory reads before its entry (the bucket, then
the element), each a cache and TLB miss once the table outgrows the caches. Here the table is
an array of key + value slots (`<table>_slots` of them, twice the entries it may hold, plus
`PROBES - 1` so no search wraps): a key's home slot is a seeded hash of its bytes, and the key
lives in the first free slot of the `PROBES` from there. A hit reads the home slot and usually
no more than a slot or two after it, adjacent in memory (bench/xdp_fastpath.py).

The home slot of a key of little-endian 64-bit words w0, w1, … under seed s: h = s; for each
word, h = (h ^ w) · 0x9E3779B97F4A7C15 mod 2^64, then h ^= h >> 32; home = ((h >> 32) · slots)
>> 32.

The agent writes the array's memory directly (`BPF_F_MMAPABLE`), without a system call, in C
(`_slots.c`, which says how each change keeps concurrent searches whole). The hash seed is drawn
per program load (`-D<TABLE>_SEED`), so which flows share a window is not known in advance (as
the kernel seeds the jhash of its hash maps).

A deleted slot is written again only after a grace period (`synchronize_rcu`, through
membarrier), so a packet whose search read an entry just before it was deleted finishes with
that entry's bytes, never another flow's (the kernel's hash maps reuse a deleted element at
once: preallocated ones always, the others since Linux 6.1's SLAB_TYPESAFE_BY_RCU). A thread per
table runs the grace periods in the background, `GRACE_BATCH_S` after a delete; a write that
finds nothing free in its window but retired slots waits for one itself.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
import time
import weakref

import numpy as np

from cyberstar.codegen.xdp_layout import SLOT_PROBES as PROBES
from cyberstar.xdp import _slots

ANY, NOEXIST, EXIST = 0, 1, 2  # update flags, as BPF's
SCAN_BLOCK = 65536  # slots of the live map a walk scans at a time
ENTRY = 1  # the live map's byte for a slot holding an entry (_slots.c)
GRACE_BATCH_S = 0.005  # the grace thread waits this long after a delete, to take more at once
GRACE_IDLE_S = 1.0  # and ends after this long without one


def new_seed() -> int:
    """A hash seed for one program load."""
    return int.from_bytes(os.urandom(8), "little")


def home(key: bytes, seed: int, slots: int) -> int:
    """The key's home slot (the program's `<table>_home`)."""
    return _slots.home(key, seed, slots)


class SlotTable:
    """One table's array: INSERT/MODIFY/DELETE by key, lookups, and walks over its entries."""

    def __init__(
        self, map_fd: int, map_entries: int, key_size: int, value_size: int,
        action_offset: int, seed: int, grace_thread: bool = True,
    ) -> None:  # fmt: skip
        """`grace_thread`: run grace periods in the background after deletes (without it, only
        a write that needs a retired slot, `grace` and `clear` wait for one)."""
        self.key_size, self.value_size = key_size, value_size
        self.slots = map_entries - PROBES + 1
        self.capacity = self.slots // 2
        self.length = map_entries
        self.slot_size = key_size + value_size
        self.seed = seed
        self.geometry = (self.slots, PROBES, key_size, value_size, action_offset, seed)
        size = -(-self.slot_size * map_entries // mmap.PAGESIZE) * mmap.PAGESIZE
        self.mem = mmap.mmap(map_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._rows = np.frombuffer(self.mem, dtype=np.uint8, count=self.slot_size * map_entries)
        self._rows = self._rows.reshape(map_entries, self.slot_size)
        self._actions = np.ndarray(
            (map_entries,), "<u4", self.mem, key_size + action_offset, (self.slot_size,)
        )
        self._live = np.zeros(map_entries, np.uint8)  # per slot, kept by _slots.c
        self._walks: weakref.WeakSet[SlotWalk] = weakref.WeakSet()
        self._lock = threading.Lock()  # one writer: the agent's calls or the grace thread
        self._retired = threading.Event()
        self._grace_thread: list[threading.Thread] = []  # the running one, if any
        self._grace_start = threading.Lock()
        self._background = grace_thread
        self.grace_periods = 0

    # ---- writes -------------------------------------------------------------------------------

    def update(self, keys: bytes, values: bytes, count: int, flags: int) -> list[tuple[int, int]]:
        """Write `count` packed entries: NOEXIST only new keys, EXIST only present ones, ANY
        both; (position, errno) of each refused (EEXIST, ENOENT, E2BIG: no free slot in its
        window). A write that needs a slot deleted since the last grace period waits for one;
        so does a MODIFY with no other free slot in its window, whose entry is missing
        (searches punt) meanwhile."""
        walks = list(self._walks)
        refused: list[tuple[int, int]] = []
        start, retired = 0, 0
        ks = self.key_size
        with self._lock:
            while True:
                more, moves, stopped, n, removed = _slots.update(
                    self.mem, self._live, self.geometry, keys, values, start, count, flags,
                    bool(walks),
                )  # fmt: skip
                refused += more
                retired += n
                for i, old, new in moves:
                    for w in walks:
                        w.moved(keys[i * ks : (i + 1) * ks], old, new)
                if stopped < 0:
                    break
                self._grace_locked()  # its window's free slots are all retired
                start = stopped
                if removed >= 0:  # a MODIFY with nowhere else to go: deleted, now inserted
                    lost, _, again, _, _ = _slots.update(
                        self.mem, self._live, self.geometry, keys, values, stopped, stopped + 1,
                        ANY, False,
                    )  # fmt: skip
                    if lost or again >= 0:  # cannot be: its own slot is free now
                        refused.append(lost[0] if lost else (stopped, errno.EAGAIN))
                    if walks:
                        key = keys[stopped * ks : (stopped + 1) * ks]
                        new = self.find(key)
                        for w in walks:
                            w.moved(key, removed, new)
                    start = stopped + 1
        if retired:
            self._schedule_grace()
        return refused

    def delete(self, keys: bytes, start: int, count: int) -> tuple[int, int]:
        """Delete entries `start`..`start+count` of the packed `keys`, stopping at the first
        missing one: (deleted, ENOENT or 0)."""
        with self._lock:
            deleted, err = _slots.delete(self.mem, self._live, self.geometry, keys, start, count)
        if deleted:
            self._schedule_grace()
        return deleted, err

    def touch(self, keys: bytes, count: int, offset: int, value: int) -> int:
        """Store the u64 `value` at `offset` of the values of those of the `count` keys present
        (a timer reset); how many were."""
        with self._lock:
            return _slots.touch(self.mem, self.geometry, keys, count, offset, value)

    def clear(self) -> None:
        """Remove every entry; returns once no program run can still read one."""
        with self._lock:
            self._actions[:] = 0
            self._live[:] = 0
            _slots.synchronize()

    # ---- grace periods ------------------------------------------------------------------------

    def grace(self) -> int:
        """Wait until no program run can still read a slot deleted before the call, and make
        those slots free; how many."""
        with self._lock:
            return self._grace_locked()

    def _grace_locked(self) -> int:
        if not _slots.seal(self._live):
            return 0
        _slots.synchronize()
        self.grace_periods += 1
        return _slots.release(self.mem, self._live, self.geometry)

    def _grace_once(self) -> None:
        with self._lock:
            if self.mem.closed or not _slots.seal(self._live):
                return
        _slots.synchronize()  # writes go on meanwhile; what they retire waits for the next one
        with self._lock:
            if not self.mem.closed:
                self.grace_periods += 1
                _slots.release(self.mem, self._live, self.geometry)

    def _schedule_grace(self) -> None:
        if not self._background or (self._retired.is_set() and self._grace_thread):
            return  # one is coming
        with self._grace_start:
            self._retired.set()
            if not self._grace_thread:
                thread = threading.Thread(
                    target=_grace_loop,
                    args=(weakref.ref(self), self._retired, self._grace_start, self._grace_thread),
                    daemon=True, name="slot-grace",
                )  # fmt: skip
                self._grace_thread.append(thread)
                thread.start()

    # ---- reads --------------------------------------------------------------------------------

    def find(self, key: bytes) -> int:
        """The key's slot, or -1."""
        return _slots.find(self.mem, self.geometry, key)

    def lookup(self, key: bytes) -> bytes | None:
        """The value under `key`, or None."""
        at = self.find(key)
        if at < 0:
            return None
        return self._rows[at, self.key_size :].tobytes()

    def entries(self, start: int, count: int) -> tuple[bytes, bytes, int, int]:
        """Packed keys and values of up to `count` entries in the slots from `start` on, their
        number, and the slot after the last one looked at."""
        found, n, pos = [], 0, start
        while pos < self.length and n < count:
            stop = min(pos + SCAN_BLOCK, self.length)
            at = np.flatnonzero(self._live[pos:stop] == ENTRY)
            if n + len(at) >= count:
                at = at[: count - n]
                stop = pos + int(at[-1]) + 1
            found.append(at + pos)
            n += len(at)
            pos = stop
        rows = self._rows[np.concatenate(found)] if found else self._rows[:0]
        ks = self.key_size
        return rows[:, :ks].tobytes(), rows[:, ks:].tobytes(), n, pos

    def walk(self, chunk: int) -> SlotWalk:
        """A walk over the entries, up to `chunk` entries a step."""
        w = SlotWalk(self, chunk)
        self._walks.add(w)
        return w

    def close(self) -> None:
        """Unmap the array (the map itself lives while the program holds it)."""
        with self._lock:
            self._rows = self._actions = None  # type: ignore[assignment]
            with contextlib.suppress(BufferError):  # a view still in use: unmapped when freed
                self.mem.close()
        self._retired.set()


def _grace_loop(
    ref: weakref.ref[SlotTable], retired: threading.Event, start: threading.Lock,
    running: list[threading.Thread],
) -> None:  # fmt: skip
    """The table's grace periods, while it is open and deletes come (it holds no reference to
    the table between them, so an unclosed table is still freed)."""
    while True:
        if not retired.wait(GRACE_IDLE_S):
            with start:  # a delete now starts another thread, or this one sees it
                if not retired.is_set():
                    running.clear()
                    return
        time.sleep(GRACE_BATCH_S)
        retired.clear()
        table = ref()
        if table is None or table.mem.closed:
            with start:
                running.clear()
            return
        table._grace_once()
        del table


class SlotWalk:
    """The table's entries, in slot order a chunk at a time: an entry is seen once, or not at all
    when it is inserted or deleted meanwhile. A MODIFY moves its entry; a move across the walk's
    position is made good here (the entry skipped where it is seen again, or read at the end
    where it would be missed)."""

    def __init__(self, table: SlotTable, chunk: int) -> None:
        self.table, self.chunk = table, max(1, chunk)
        self.cursor = 0  # slots before it have been read
        self.done = False
        self._seen_again: set[bytes] = set()
        self._missed: set[bytes] = set()

    def moved(self, key: bytes, old: int, new: int) -> None:
        if old < self.cursor <= new:
            self._seen_again.add(key)
        elif new < self.cursor <= old:
            self._missed.add(key)

    def next(self) -> tuple[bytes, bytes, int]:
        """The next step's packed keys and values and their count (0 when done)."""
        t = self.table
        if self.done:
            return b"", b"", 0
        if self.cursor >= t.length:
            self.done = True
            found = [(k, v) for k in self._missed if (v := t.lookup(k)) is not None]
            return b"".join(k for k, _ in found), b"".join(v for _, v in found), len(found)
        keys, values, n, self.cursor = t.entries(self.cursor, self.chunk)
        if self._seen_again and n:
            keys, values, n = self._without_seen(keys, values, n)
        if self.cursor >= t.length and not self._missed:
            self.done = True
        return keys, values, n

    def _without_seen(self, keys: bytes, values: bytes, n: int) -> tuple[bytes, bytes, int]:
        ks, vs = self.table.key_size, self.table.value_size
        kept_k, kept_v = [], []
        for i in range(n):
            k = keys[i * ks : (i + 1) * ks]
            if k in self._seen_again:
                self._seen_again.discard(k)
                continue
            kept_k.append(k)
            kept_v.append(values[i * vs : (i + 1) * vs])
        return b"".join(kept_k), b"".join(kept_v), len(kept_k)
