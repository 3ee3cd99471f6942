"""Internet checksum arithmetic, shared by the reference model and mirrored by the generators.

Rewrites use the incremental update of RFC 1624 (eq. 3), HC' = ~(~HC + ~m + m'), folded twice,
applied one field at a time in a fixed order. Every target does exactly this, so their bytes agree
even on a packet that arrived with a wrong checksum (the error is carried over, not repaired).
"""

from __future__ import annotations


def fold(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def replace16(check: int, old: int, new: int) -> int:
    return ~fold((~check & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def replace32(check: int, old: int, new: int) -> int:
    total = (
        (~check & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
    )
    return ~fold(total) & 0xFFFF


def internet_checksum(data: bytes) -> int:
    """The full one's-complement checksum of `data` (padded to an even length)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
