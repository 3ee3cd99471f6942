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
"""

from __future__ import annotations

import contextlib
import mmap
import os
import weakref

import numpy as np

from cyberstar.codegen.xdp_layout import SLOT_PROBES as PROBES
from cyberstar.xdp import _slots

ANY, NOEXIST, EXIST = 0, 1, 2  # update flags, as BPF's
SCAN_BLOCK = 65536  # slots of the live map a walk scans at a time


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
        action_offset: int, seed: int,
    ) -> None:  # fmt: skip
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
        self._live = np.zeros(map_entries, np.uint8)  # 1 where an entry is (kept by _slots.c)
        self._walks: weakref.WeakSet[SlotWalk] = weakref.WeakSet()

    # ---- writes -------------------------------------------------------------------------------

    def update(self, keys: bytes, values: bytes, count: int, flags: int) -> list[tuple[int, int]]:
        """Write `count` packed entries: NOEXIST only new keys, EXIST only present ones, ANY
        both; (position, errno) of each refused (EEXIST, ENOENT, E2BIG: no free slot in its
        window)."""
        walks = list(self._walks)
        refused, moves = _slots.update(
            self.mem, self._live, self.geometry, keys, values, count, flags, bool(walks)
        )
        ks = self.key_size
        for i, old, new in moves:
            for w in walks:
                w.moved(keys[i * ks : (i + 1) * ks], old, new)
        return refused

    def delete(self, keys: bytes, start: int, count: int) -> tuple[int, int]:
        """Delete entries `start`..`start+count` of the packed `keys`, stopping at the first
        missing one: (deleted, ENOENT or 0)."""
        return _slots.delete(self.mem, self._live, self.geometry, keys, start, count)

    def touch(self, keys: bytes, count: int, offset: int, value: int) -> int:
        """Store the u64 `value` at `offset` of the values of those of the `count` keys present
        (a timer reset); how many were."""
        return _slots.touch(self.mem, self.geometry, keys, count, offset, value)

    def clear(self) -> None:
        self._actions[:] = 0
        self._live[:] = 0

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
            at = np.flatnonzero(self._live[pos:stop])
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
        self._rows = self._actions = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view still in use: unmapped when freed
            self.mem.close()


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
