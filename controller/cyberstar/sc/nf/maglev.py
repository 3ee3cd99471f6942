"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.

Each backend walks its own permutation of the table (offset and skip from two hashes of its
name) and claims the next free entry on its turn; a backend of weight w takes w turns per
round. Adding or removing a backend moves about 1/N of the entries. Hashes are CRC32 of
explicit bytes, never Python's salted `hash`, so every SC node builds the same table.
"""

from __future__ import annotations

import math
import zlib

DEFAULT_TABLE_SIZE = 65537  # a prime well above 100 x the number of backends


def _h(name: str, seed: int) -> int:
    return zlib.crc32(name.encode(), seed)


def build_table(backends: list[tuple[str, int]], size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """Table of `size` entries, each an index into `backends` ((name, weight) pairs)."""
    live = [(i, name, w) for i, (name, w) in enumerate(backends) if w > 0]
    if not live:
        return []
    g = 0
    for _, _, w in live:
        g = math.gcd(g, w)
    offsets = [_h(name, 0x9E3779B9) % size for _, name, _ in live]
    skips = [_h(name, 0x85EBCA6B) % (size - 1) + 1 for _, name, _ in live]
    turns = [w // g for _, _, w in live]
    nexts = [0] * len(live)
    table = [-1] * size
    filled = 0
    while True:
        for j, (idx, _, _) in enumerate(live):
            for _ in range(turns[j]):
                c = (offsets[j] + nexts[j] * skips[j]) % size
                while table[c] >= 0:
                    nexts[j] += 1
                    c = (offsets[j] + nexts[j] * skips[j]) % size
                table[c] = idx
                nexts[j] += 1
                filled += 1
                if filled == size:
                    return table
