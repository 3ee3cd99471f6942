"""A commutative set of address:port elements: the shared state of SNAT (paper §4.1).

An element is `addr << 16 | port`. The set is kept as sorted disjoint half-open ranges of
never-used elements plus a set of released ones, so a pool of a few public addresses costs a
handful of integers until it is used. Iteration yields never-used elements first, so the head,
which takes the first free one, reuses a released port last (out of TIME_WAIT trouble);
`split` hands half of the elements to another shard; `merge` is a union. Removing distinct
present elements commutes, which is what lets two SCGs allocate from the two halves
independently.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


def element(addr: int, port: int) -> int:
    return addr << 16 | port


def split_element(elem: int) -> tuple[int, int]:
    return elem >> 16, elem & 0xFFFF


class PoolError(ValueError):
    """An element given twice, or taken while not free: a bug the caller must not hide."""


class AddressPool:
    __slots__ = ("_loose", "_los", "_ranges", "_size")

    def __init__(self, ranges: Iterable[tuple[int, int]] = (), loose: Iterable[int] = ()) -> None:
        self._ranges: list[list[int]] = []
        self._los: list[int] = []
        self._loose: set[int] = set()
        self._size = 0
        # Loose elements are checked against the ranges by `give`; ranges go in first.
        for lo, hi in sorted(ranges):
            self._add_range(lo, hi)
        for e in loose:
            self.give(e)

    # -- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def __contains__(self, elem: int) -> bool:
        return elem in self._loose or self._in_ranges(elem)

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self._ranges:
            yield from range(lo, hi)
        yield from self._loose

    def encode(self) -> list:
        """`[[[lo, hi], ...], [loose...]]`: JSON-ready, `decode` inverts it."""
        return [[[lo, hi] for lo, hi in self._ranges], sorted(self._loose)]

    @classmethod
    def decode(cls, data: list) -> AddressPool:
        ranges, loose = data
        return cls(((lo, hi) for lo, hi in ranges), loose)

    # -- changes ------------------------------------------------------------------------------
    def take(self, elem: int) -> None:
        """Remove a free element (the head chose it by iterating; replicas replay the choice)."""
        if elem in self._loose:
            self._loose.remove(elem)
            self._size -= 1
            return
        i = bisect.bisect_right(self._los, elem) - 1
        if i < 0 or elem >= self._ranges[i][1]:
            raise PoolError(f"element {_fmt(elem)} is not free")
        r = self._ranges[i]
        if r[0] == elem:
            r[0] += 1
            self._los[i] += 1
            if r[0] == r[1]:
                del self._ranges[i]
                del self._los[i]
        elif r[1] == elem + 1:
            r[1] -= 1
        else:
            self._ranges.insert(i + 1, [elem + 1, r[1]])
            self._los.insert(i + 1, elem + 1)
            r[1] = elem
        self._size -= 1

    def give(self, elem: int) -> None:
        """Return an element; giving one that is already free is a bug (`PoolError`)."""
        if elem in self:
            raise PoolError(f"element {_fmt(elem)} is already free")
        self._loose.add(elem)
        self._size += 1

    def split(self) -> AddressPool:
        """Move half of the elements (the upper half by value) into a new pool and return it."""
        target = self._size // 2
        out = AddressPool()
        moved = 0
        # Loose elements first (upper half of them), then whole ranges from the top.
        loose = sorted(self._loose)
        take_loose = loose[len(loose) - min(len(loose), target) :] if target else []
        for e in take_loose:
            self._loose.remove(e)
        out._loose = set(take_loose)
        moved = len(take_loose)
        while moved < target and self._ranges:
            lo, hi = self._ranges[-1]
            need = target - moved
            if hi - lo <= need:
                self._ranges.pop()
                self._los.pop()
                out._ranges.insert(0, [lo, hi])
                out._los.insert(0, lo)
                moved += hi - lo
            else:
                cut = hi - need
                self._ranges[-1][1] = cut
                out._ranges.insert(0, [cut, hi])
                out._los.insert(0, cut)
                moved += need
        self._size -= moved
        out._size = moved
        return out

    def merge(self, other: AddressPool) -> None:
        """Union with a disjoint pool (`PoolError` if an element is in both)."""
        clash = next((e for e in self._loose if other._in_ranges(e)), None)
        if clash is not None:
            raise PoolError(f"element {_fmt(clash)} is already free")
        for lo, hi in other._ranges:
            self._add_range(lo, hi)
        for e in other._loose:
            self.give(e)

    def _in_ranges(self, elem: int) -> bool:
        i = bisect.bisect_right(self._los, elem) - 1
        return i >= 0 and elem < self._ranges[i][1]

    def _add_range(self, lo: int, hi: int) -> None:
        if lo >= hi:
            return
        i = bisect.bisect_right(self._los, lo)
        if (i > 0 and self._ranges[i - 1][1] > lo) or (i < len(self._ranges) and self._los[i] < hi):
            raise PoolError(f"range {_fmt(lo)}..{_fmt(hi - 1)} overlaps free elements")
        self._ranges.insert(i, [lo, hi])
        self._los.insert(i, lo)
        self._size += hi - lo


def _fmt(elem: int) -> str:
    addr, port = split_element(elem)
    return f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}:{port}"
