"""Protobuf wire format by hand, for the P4Runtime messages built as bytes on hot paths where
building message objects would cost more than the work itself: PacketIns, PacketOuts, their
batches, FM's flow-table Updates, and table entries read by the million.

Field numbers are p4runtime.proto's; tests hold each builder to protobuf's own parser. Byte
strings are canonical (no leading zero bytes), as a server must send them.
"""

from __future__ import annotations

from functools import lru_cache

_LEN, _VARINT = 2, 0


_ONE_BYTE = [bytes((i,)) for i in range(128)]  # the varints of 0..127 (lengths, mostly)


def varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


_LEN_TAGS = [tag(n, _LEN) for n in range(16)]


def field(number: int, data: bytes) -> bytes:
    """A length-delimited field: bytes, or an embedded message."""
    n = len(data)
    head = _LEN_TAGS[number] if number < 16 else tag(number, _LEN)
    return head + (_ONE_BYTE[n] if n < 128 else varint(n)) + data


def canonical(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


@lru_cache(maxsize=1 << 16)
def _small_canonical(value: int) -> bytes:
    return canonical(value)


class ExactEntryWriter:
    """`p4.v1.Entity{table_entry}` of one all-exact table, from the numbers of an entry."""

    def __init__(self, table_id: int, field_ids: list[int], params: dict[int, list[int]]) -> None:
        self._head = tag(1, _VARINT) + varint(table_id)  # TableEntry.table_id
        # FieldMatch{field_id, exact{value}} up to the value: per field id
        self._fields = [tag(1, _VARINT) + varint(f) + tag(2, _LEN) for f in field_ids]
        self._params = {a: [tag(2, _VARINT) + varint(p) for p in ids] for a, ids in params.items()}
        self._actions = {a: tag(1, _VARINT) + varint(a) for a in params}

    def entity(
        self,
        match: tuple[int, ...],
        action_id: int,
        params: tuple[int, ...],
        idle_timeout_ns: int = 0,
        metadata: bytes = b"",
        counters: tuple[int, int] | None = None,
        elapsed_ns: int | None = None,
    ) -> bytes:
        value = _small_canonical
        parts = [self._head]
        for prefix, v in zip(self._fields, match, strict=True):
            exact = field(1, value(v) if v < 1 << 16 else canonical(v))
            parts.append(field(2, prefix + varint(len(exact)) + exact))  # TableEntry.match
        action = [self._actions[action_id]]
        for prefix, v in zip(self._params[action_id], params, strict=True):
            action.append(field(4, prefix + field(3, value(v) if v < 1 << 16 else canonical(v))))
        parts.append(field(3, field(1, b"".join(action))))  # TableEntry.action.action
        if counters is not None:  # TableEntry.counter_data{byte_count, packet_count}
            packets, nbytes = counters
            data = (tag(1, _VARINT) + varint(nbytes) if nbytes else b"") + (
                tag(2, _VARINT) + varint(packets) if packets else b""
            )
            parts.append(field(7, data))
        if idle_timeout_ns:
            parts.append(tag(9, _VARINT) + varint(idle_timeout_ns))
        if elapsed_ns is not None:  # TableEntry.time_since_last_hit{elapsed_ns}
            parts.append(field(10, tag(1, _VARINT) + varint(elapsed_ns) if elapsed_ns else b""))
        if metadata:
            parts.append(field(11, metadata))
        return field(2, b"".join(parts))  # Entity.table_entry


def read_response(entities: list[bytes]) -> bytes:
    """A serialized ReadResponse of serialized entities."""
    return b"".join(field(1, e) for e in entities)


def idle_timeout_notification(entries: list[bytes], timestamp_ns: int) -> bytes:
    """A serialized StreamMessageResponse{idle_timeout_notification}: `entries` are serialized
    Entity{table_entry} (their TableEntry is taken out)."""
    body = b"".join(field(1, _entity_payload(e)) for e in entries)
    body += tag(2, _VARINT) + varint(timestamp_ns)
    return field(4, body)


def _entity_payload(entity: bytes) -> bytes:
    """The TableEntry inside a serialized Entity{table_entry} (tag, length, payload)."""
    i = 1
    while entity[i] & 0x80:
        i += 1
    return entity[i + 1 :]
