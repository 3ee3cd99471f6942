"""Protobuf wire format by hand, for the few P4Runtime messages built as bytes on hot paths
(PacketIns, PacketOuts, their batches, FM's flow-table Updates); tests hold each builder to
protobuf's own parser."""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def field(number: int, data: bytes) -> bytes:
    """A length-delimited field (bytes, string or message)."""
    return varint(number << 3 | 2) + varint(len(data)) + data
