"""The serialized form of a plain all-exact table entry, read with three regular expressions.

Reading a `TableEntry` field by field through protobuf's Python objects costs a wrapper object
per field access, which made validating a flow entry most of a PP node's Write. Serialized, a
well-formed entry of an all-exact table has one shape: the table id, the match fields in id
order (each `FieldMatch{field_id, exact{value}}` with a value of 1..its byte width), an action
allowed in entries with its params in id order, then optionally `idle_timeout_ns` and
`metadata`, and nothing else. Every length byte of the shape is spelled out in the patterns, so
a match reads the bytes exactly as a protobuf parser does. `ExactWire.parse` returns the values
of an entry of that shape, or None for any other form — another field order, a priority, counter
data, an empty or over-long value, a long metadata — which the caller reads the general way.
"""

from __future__ import annotations

import re

from cyberstar.p4rt.wire import varint

# TableEntry field tags (P4Runtime p4runtime.proto)
_TABLE_ID, _MATCH, _ACTION, _IDLE, _METADATA = 0x08, 0x12, 0x1A, 0x48, 0x5A
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\x7f]"


# (match values by field id 1, 2, ...; action id, 0 without one; params by id;
#  idle_timeout_ns as the wire has it, a negative int64 reading as >= 2**63; metadata)
ParsedEntry = tuple[list[int], int, list[int], int, bytes]


def _nbytes(width: int) -> int:
    return (width + 7) // 8


def _field(header: bytes, length_at: tuple[int, ...], base: tuple[int, ...], width: int) -> bytes:
    """One group matching a length-delimited field whose value is 1..`width` bits' bytes long:
    one alternative per value length, with every length byte of the header spelled out."""
    alts = []
    for n in range(1, _nbytes(width) + 1):
        h = bytearray(header)
        for at, b in zip(length_at, base, strict=True):
            h[at] = b + n
        alts.append(re.escape(bytes(h)) + b".{%d}" % n)
    return b"(" + b"|".join(alts) + b")"


def _match_field(field_id: int, width: int) -> bytes:
    # 12 <len> 08 <id> 12 <len> 0a <n> value: FieldMatch{field_id, exact{value}}
    return _field(bytes([_MATCH, 0, 0x08, field_id, 0x12, 0, 0x0A, 0]), (1, 5, 7), (6, 2, 0), width)


def _param(param_id: int, width: int) -> bytes:
    # 22 <len> 10 <id> 1a <n> value: Action.Param{param_id, value}
    return _field(bytes([0x22, 0, 0x10, param_id, 0x1A, 0]), (1, 5), (4, 0), width)


IDLE_VALUES_KEPT = 1024
MATCH_HEADER = 8  # bytes in front of a match value in its group
PARAM_HEADER = 6


class ExactWire:
    """Reads serialized entries of one all-exact table (`key_widths` by field id 1, 2, ...;
    `actions`: the param widths, by param id, of each action id an entry may name)."""

    def __init__(self, table_id: int, key_widths: list[int],
                 actions: dict[int, list[int]]) -> None:  # fmt: skip
        ids_fit = len(key_widths) < 128 and all(len(w) < 128 for w in actions.values())
        widest = max([*key_widths, *(w for ws in actions.values() for w in ws)], default=0)
        self.usable = ids_fit and _nbytes(widest) + 6 < 128  # ids and lengths: one byte each
        head = re.escape(bytes([_TABLE_ID]) + varint(table_id))
        fields = b"".join(_match_field(i, w) for i, w in enumerate(key_widths, start=1))
        self._match = re.compile(head + fields, re.DOTALL)
        self._odd_keys = [(i, w) for i, w in enumerate(key_widths) if w % 8]
        # the action: 1a <len> 0a <len> then Action{08 <id> params...}, dispatched on its id
        self._actions: dict[bytes, tuple[int, re.Pattern, list[tuple[int, int]]]] = {}
        for aid, widths in actions.items():
            body = re.escape(b"\x08" + varint(aid)) + b"".join(
                _param(i, w) for i, w in enumerate(widths, start=1)
            )
            odd = [(i, w) for i, w in enumerate(widths) if w % 8]
            self._actions[varint(aid)] = (aid, re.compile(body, re.DOTALL), odd)
        self._aid_lengths = sorted({len(k) for k in self._actions})
        self._idle_values: dict[bytes, int] = {}  # a controller uses few idle timeouts
        idle, meta = re.escape(bytes([_IDLE])), re.escape(bytes([_METADATA]))
        self._tail = re.compile(
            b"(?:" + idle + b"(" + _VARINT + b"))?(?:" + meta + rb"([\x00-\x7f])(.*))?", re.DOTALL
        )

    def parse(self, raw: bytes) -> ParsedEntry | None:
        if not self.usable:
            return None
        m = self._match.match(raw)
        if m is None:
            return None
        values = [int.from_bytes(g[MATCH_HEADER:], "big") for g in m.groups()]
        for i, w in self._odd_keys:
            if values[i] >> w:
                return None
        pos, end = m.end(), len(raw)
        aid, params = 0, []
        if pos < end and raw[pos] == _ACTION:
            found = None
            for n in self._aid_lengths:
                found = self._actions.get(raw[pos + 5 : pos + 5 + n])
                if found is not None:
                    break
            if found is None or raw[pos + 1] > 127 or raw[pos + 2] != 0x0A:
                return None
            aid, pattern, odd = found
            a = pattern.match(raw, pos + 4)
            # the lengths in front of the action must be those of what the pattern read
            if a is None or raw[pos + 3] != a.end() - pos - 4 or raw[pos + 1] != raw[pos + 3] + 2:
                return None
            params = [int.from_bytes(g[PARAM_HEADER:], "big") for g in a.groups()]
            for i, w in odd:
                if params[i] >> w:
                    return None
            pos = a.end()
        if pos == end:
            return values, aid, params, 0, b""
        t = self._tail.fullmatch(raw, pos)
        if t is None:
            return None
        idle_raw, meta_len, metadata = t.groups()
        if metadata is None:
            metadata = b""
        elif meta_len[0] != len(metadata):
            return None
        idle = 0
        if idle_raw:
            idle = self._idle_values.get(idle_raw)
            if idle is None:
                idle = _read_varint(idle_raw)
                if len(self._idle_values) < IDLE_VALUES_KEPT:
                    self._idle_values[idle_raw] = idle
        return values, aid, params, idle, metadata


def _read_varint(data: bytes) -> int:
    value = 0
    for shift, b in enumerate(data):
        value |= (b & 0x7F) << (7 * shift)
    return value
