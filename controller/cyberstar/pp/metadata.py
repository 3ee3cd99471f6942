"""The controller's opaque metadata of table entries (P4Runtime `TableEntry.metadata`), by key.

The one thing about an entry the kernel maps cannot give back: FM writes a 14-byte cookie
(connection and slot) with every rule and rebuilds its cache from it. Millions of entries must
not cost a Python object each, so the store is an open-addressing hash table in numpy arrays,
worked on a batch of keys at a time: keys, values up to `INLINE` bytes and their lengths in
flat arrays (34 bytes a slot, 37.5 % to 75 % of them in use); longer values go to a dict.
"""

from __future__ import annotations

import secrets

import numpy as np

INLINE = 16  # metadata bytes kept in the arrays; longer ones in a dict
_EMPTY, _USED, _GONE = 0, 1, 2  # slot states (_GONE: deleted, probing goes on past it)
_MAX_LOAD = 0.75
_MIN_SLOTS = 1024
_WINDOW = 8  # slots of a probe path read at once


class MetadataStore:
    def __init__(self, key_size: int) -> None:
        self.key_size = key_size
        self._words = -(-key_size // 8)  # the key as 64-bit words, for hashing
        self._mult = np.uint64(secrets.randbits(63) * 2 + 1)  # per process: no crafted clusters
        self.long: dict[bytes, bytes] = {}
        self._allocate(_MIN_SLOTS)

    def __len__(self) -> int:
        return self._used + len(self.long)

    @property
    def nbytes(self) -> int:
        keys = sum(k.nbytes for k in self._keys)
        return keys + self._values.nbytes + self._lens.nbytes + self._state.nbytes

    def _allocate(self, slots: int) -> None:
        self._slots = slots
        self._keys = [np.zeros(slots, np.uint64) for _ in range(self._words)]
        self._values = np.zeros(slots, dtype=f"V{INLINE}")
        self._lens = np.zeros(slots, dtype=np.uint8)
        self._state = np.zeros(slots, dtype=np.uint8)
        self._used = 0
        self._gone = 0

    # ---- batch operations ---------------------------------------------------------------------

    def put(self, keys: list[bytes], values: list[bytes]) -> None:
        """Set the metadata of `keys` (distinct); an empty value removes a key's."""
        inline_keys, inline_values, drop = [], [], []
        for k, v in zip(keys, values, strict=True):
            if len(v) > INLINE:
                self.long[k] = v
                drop.append(k)  # any short value it had
                continue
            if self.long:
                self.long.pop(k, None)
            if v:
                inline_keys.append(k)
                inline_values.append(v)
            else:
                drop.append(k)
        if drop:
            self._remove_inline(drop)
        if not inline_keys:
            return
        self._reserve(len(inline_keys))
        karr = self._key_array(inline_keys)
        slots, found = self._probe(karr)
        self._settle_collisions(karr, slots, found)
        new = ~found
        self._gone -= int(np.count_nonzero(self._state[slots[new]] == _GONE))
        self._used += int(np.count_nonzero(new))
        self._set_keys(slots, karr)
        self._values[slots] = np.array([v.ljust(INLINE, b"\0") for v in inline_values],
                                       f"V{INLINE}")  # fmt: skip
        self._lens[slots] = np.array([len(v) for v in inline_values], np.uint8)
        self._state[slots] = _USED

    def get(self, keys: list[bytes]) -> list[bytes]:
        """The metadata of each key (b"" where there is none)."""
        out = [b""] * len(keys)
        if self._used and keys:
            slots, found = self._probe(self._key_array(keys))
            hits = np.flatnonzero(found)
            values, lens = self._values[slots[hits]], self._lens[slots[hits]]
            for i, v, n in zip(hits.tolist(), values.tolist(), lens.tolist(), strict=True):
                out[i] = v[:n]
        if self.long:
            for i, k in enumerate(keys):
                if k in self.long:
                    out[i] = self.long[k]
        return out

    def remove(self, keys: list[bytes]) -> None:
        if self.long:
            for k in keys:
                self.long.pop(k, None)
        self._remove_inline(keys)

    def clear(self) -> None:
        self.long.clear()
        self._allocate(_MIN_SLOTS)

    def _remove_inline(self, keys: list[bytes]) -> None:
        if not self._used or not keys:
            return
        slots, found = self._probe(self._key_array(keys))
        gone = np.unique(slots[found])
        self._state[gone] = _GONE
        self._used -= len(gone)
        self._gone += len(gone)

    # ---- the hash table -----------------------------------------------------------------------

    def _key_array(self, keys: list[bytes]) -> np.ndarray:
        """Keys as rows of 64-bit words (zero-padded)."""
        size = self._words * 8
        if size != self.key_size:
            keys = [k.ljust(size, b"\0") for k in keys]
        return np.frombuffer(b"".join(keys), np.uint64).reshape(-1, self._words)

    def _home(self, karr: np.ndarray) -> np.ndarray:
        h = np.zeros(len(karr), np.uint64)
        with np.errstate(over="ignore"):
            for w in range(self._words):
                h = (h ^ karr[:, w]) * self._mult
                h ^= h >> np.uint64(29)
        shift = np.uint64(64 - (self._slots.bit_length() - 1))  # the top bits: best mixed
        return (h >> shift).astype(np.int64)

    def _equal(self, p: np.ndarray, karr: np.ndarray) -> np.ndarray:
        """Whether slots `p` (one row of a window per key) hold the keys `karr`."""
        eq = self._keys[0][p] == karr[:, None, 0]
        for w in range(1, self._words):
            eq &= self._keys[w][p] == karr[:, None, w]
        return eq

    def _set_keys(self, at: np.ndarray, karr: np.ndarray) -> None:
        for w in range(self._words):
            self._keys[w][at] = karr[:, w]

    def _probe(self, karr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each key's slot and whether the slot holds it; an absent key gets the first free
        slot of its probe path (empty or deleted). Paths are read `_WINDOW` slots at a time."""
        n = len(karr)
        slots = np.full(n, -1, np.int64)
        found = np.zeros(n, bool)
        free = np.full(n, -1, np.int64)
        pos = self._home(karr)
        todo = np.arange(n)
        window = np.arange(_WINDOW)
        mask = self._slots - 1
        while len(todo):
            p = (pos[todo, None] + window) & mask
            state = self._state[p]
            hit = (state == _USED) & self._equal(p, karr[todo])
            unused = state != _USED
            no_free_yet = free[todo] < 0
            has_unused = unused.any(1) & no_free_yet
            rows = np.flatnonzero(has_unused)
            free[todo[rows]] = p[rows, unused[rows].argmax(1)]
            stop = hit | (state == _EMPTY)
            ends = stop.any(1)
            rows = np.flatnonzero(ends)
            at = stop[rows].argmax(1)
            was_hit = hit[rows, at]
            keys_done = todo[rows]
            slots[keys_done[was_hit]] = p[rows[was_hit], at[was_hit]]
            found[keys_done[was_hit]] = True
            missing = keys_done[~was_hit]
            slots[missing] = free[missing]
            todo = todo[~ends]
            pos[todo] = (pos[todo] + _WINDOW) & mask
        return slots, found

    def _first_free(self, karr: np.ndarray) -> np.ndarray:
        """The first slot not in use on each key's probe path."""
        pos = self._home(karr)
        out = np.full(len(karr), -1, np.int64)
        todo = np.arange(len(karr))
        window = np.arange(_WINDOW)
        mask = self._slots - 1
        while len(todo):
            p = (pos[todo, None] + window) & mask
            unused = self._state[p] != _USED
            has = unused.any(1)
            rows = np.flatnonzero(has)
            out[todo[rows]] = p[rows, unused[rows].argmax(1)]
            todo = todo[~has]
            pos[todo] = (pos[todo] + _WINDOW) & mask
        return out

    def _settle_collisions(self, karr: np.ndarray, slots: np.ndarray, found: np.ndarray) -> None:
        """New keys of one batch that chose the same free slot: the first keeps it, the others
        probe on, with the slots chosen so far counting as taken."""
        new = np.flatnonzero(~found)
        while len(new):
            chosen = slots[new]
            ranked = np.argsort(chosen, kind="stable")
            repeat = np.zeros(len(new), bool)
            repeat[ranked[1:]] = chosen[ranked[1:]] == chosen[ranked[:-1]]
            if not repeat.any():
                return
            losers = new[repeat]
            taken = np.unique(slots[np.flatnonzero(~found)])
            saved = self._state[taken].copy()
            self._state[taken] = _USED
            slots[losers] = self._first_free(karr[losers])
            self._state[taken] = saved

    def _reserve(self, more: int) -> None:
        """Make room for `more` keys under the load limit: drop the deleted slots, and double
        while the table would be more than half full."""
        if self._used + self._gone + more <= _MAX_LOAD * self._slots:
            return
        slots = self._slots
        while self._used + more > slots / 2:
            slots *= 2
        live = np.flatnonzero(self._state == _USED)
        keys = np.stack([k[live] for k in self._keys], axis=1)
        values, lens = self._values[live], self._lens[live]
        self._allocate(slots)
        if not len(keys):
            return
        # Linear probing, filled in order of home slot: each key goes to its home or just past
        # the key before it, pos[i] = max(home[i], pos[i - 1] + 1), a running maximum.
        home = self._home(keys)
        order = np.argsort(home, kind="stable")
        step = np.arange(len(keys))
        pos = np.maximum.accumulate(home[order] - step) + step
        fits = pos < slots
        self._place(pos[fits], keys, values, lens, order[fits])
        rest = order[~fits]  # ran past the end: they wrap around to the first free slots
        if len(rest):
            self._place(np.flatnonzero(self._state == _EMPTY)[: len(rest)], keys, values, lens,
                        rest)  # fmt: skip
        self._used = len(keys)

    def _place(self, at, keys, values, lens, chosen) -> None:
        self._set_keys(at, keys[chosen])
        self._values[at], self._lens[at] = values[chosen], lens[chosen]
        self._state[at] = _USED
