"""The serialized form of a plain all-exact table entry, read in one pass of C.

Reading a `TableEntry` field by field through protobuf's Python objects costs a wrapper object
per field access, which made validating a flow entry most of a PP node's Write. Serialized, a
well-formed entry of an all-exact table has one shape: the table id, the match fields in id
order (each `FieldMatch{field_id, exact{value}}` with a value of 1..its byte width), an action
allowed in entries with its params in id order, then optionally `idle_timeout_ns` and
`metadata`, and nothing else. The reader (`_exact_wire.c`, built by `pip install`) checks every
tag and length byte of that shape, so what it accepts it reads exactly as a protobuf parser does.
`ExactWire.parse` returns the values of an entry of that shape, or None for any other form —
another field order, a priority, counter data, an empty or over-long value, a long metadata —
which the caller reads the general way.
"""

from __future__ import annotations

from typing import NamedTuple

from cyberstar.p4rt._exact_wire import Reader
from cyberstar.p4rt.wire import varint

# (match values by field id 1, 2, ...; action id, 0 without one; params by id;
#  idle_timeout_ns as the wire has it, a negative int64 reading as >= 2**63; metadata)
ParsedEntry = tuple[list[int], int, list[int], int, bytes]
# the same with the match as a map key: (key, the tenant field's value, action id, ...)
KeyedEntry = tuple[bytes, int, int, list[int], int, bytes]
# the map value `batch` packs: (size, (action id offset, size), last_hit_ns offset,
# idle_timeout_ns offset (-1: none), {action id: [(offset, size) of each param]})
ValueLayout = tuple[int, tuple[int, int], int, int, dict[int, list[tuple[int, int]]]]


class Batch(NamedTuple):
    """A WriteRequest's Updates, all INSERTs or all DELETEs of well-formed entries of one table
    with distinct keys, as packed map keys and values."""

    kind: int
    count: int
    keys: bytes  # count map keys
    values: bytes | None  # count map values (last hit: the time given), None for DELETEs
    tenants: bytes  # the tenant_id key field of each, a little-endian u64
    meta_positions: list[int]  # the INSERTs with metadata: their positions,
    meta_keys: list[bytes]  # keys
    meta_values: list[bytes]  # and metadata
    shortest_idle_ns: int  # the shortest idle timeout among them, 0: none


def _nbytes(width: int) -> int:
    return (width + 7) // 8


class ExactWire:
    """Reads serialized entries of one all-exact table (`key_widths` by field id 1, 2, ...;
    `actions`: the param widths, by param id, of each action id an entry may name; `key_layout`
    for `parse_key`: the map key's size, each field's (offset, size) in it as a little-endian
    integer, and the index of the field `parse_key` also returns, -1 for none)."""

    def __init__(self, table_id: int, key_widths: list[int], actions: dict[int, list[int]],
                 key_layout: tuple[int, list[tuple[int, int]], int] | None = None,
                 value_layout: ValueLayout | None = None) -> None:  # fmt: skip
        ids_fit = len(key_widths) < 128 and all(len(w) < 128 for w in actions.values())
        widest = max([*key_widths, *(w for ws in actions.values() for w in ws)], default=0)
        # ids and the lengths of a value's group: one byte each
        self.usable = ids_fit and _nbytes(widest) + 6 < 128
        self._reader = None
        if self.usable:
            self._reader = Reader(
                b"\x08" + varint(table_id),
                key_widths,
                [(varint(aid), aid, widths) for aid, widths in actions.items()],
                key_layout,
                value_layout,
            )

    def parse(self, raw: bytes) -> ParsedEntry | None:
        if self._reader is None:
            return None
        return self._reader.parse(raw)

    def parse_key(self, raw: bytes) -> KeyedEntry | None:
        if self._reader is None:
            return None
        return self._reader.parse_key(raw)

    def parse_update(self, raw: bytes) -> tuple[int, *KeyedEntry] | None:
        """`parse_key` of a serialized Update (INSERT, MODIFY or DELETE): (kind, *KeyedEntry)."""
        if self._reader is None:
            return None
        return self._reader.parse_update(raw)

    def batch(self, request: bytes, now_ns: int) -> Batch | None:
        """A serialized WriteRequest read whole (`Batch`), the INSERTs' values with last hit
        `now_ns`; None when any Update is not of that form (the caller reads them one by one).
        Needs a Reader made with a `key_layout` and a `value_layout`. The request's bytes are
        ones protobuf parsed (the server parses each request first): its fields other than the
        Updates are skipped unread."""
        if self._reader is None:
            return None
        got = self._reader.batch(request, now_ns)
        return None if got is None else Batch(*got)
