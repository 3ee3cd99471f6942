"""Encode table entries into the XDP program's map keys and values (and decode them back).

Layouts come from `cyberstar.codegen.xdp_layout`, the same computation the C generator asserts
on. Entry values (`encode_value`) are what the P4Runtime device reads and writes; `to_map_value`
and `from_map_value` convert them to and from what the data plane holds, which differ only for
tables with per-CPU direct counters (see `xdp_layout`).
"""

from __future__ import annotations

import struct
from functools import cache

from cyberstar.codegen.xdp_layout import (
    DIRECT_INDEX,
    HOST_MASK,
    PACK_CODES,
    CStruct,
    Member,
    TableKind,
    TableLayout,
    map_entry_offsets,
    table_layout,
    ternary_entry_offsets,
)
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.model import Pipeline
from cyberstar.pipeline.values import LpmValue, TernaryValue


def encode_key(pipeline: Pipeline, entry: TableEntry) -> bytes:
    """The map key of an entry (not for ternary tables)."""
    lay = table_layout(pipeline, entry.table)
    if lay.kind is TableKind.LPM:
        values: dict[str, int] = {}
        for name, m in entry.match.items():
            if isinstance(m, LpmValue):
                values[name] = m.value
                values[HOST_MASK] = (1 << (lay.lpm_width - m.prefix_len)) - 1
            else:
                values[name] = m
        return lay.key.pack(values)
    if lay.kind is TableKind.DIRECT:
        return lay.key.pack({DIRECT_INDEX: entry.match[lay.table.key[0].name]})
    if lay.ternary:
        raise ValueError(f"table {entry.table} is ternary: use encode_ternary_entry")
    return lay.key.pack(entry.match)  # type: ignore[arg-type]


def prefix_len_of(lay: TableLayout, key: bytes) -> int:
    """The prefix length an LPM-kind map key says."""
    return lay.lpm_width - lay.key.unpack(key)[HOST_MASK].bit_length()


def encode_value(
    pipeline: Pipeline,
    entry: TableEntry,
    packets: int = 0,
    byte_count: int = 0,
    last_hit_ns: int = 0,
) -> bytes:
    """The entry value: action id, priority, direct counters, idle state, then the params
    (what a flow entry caches of the ACL starts empty)."""
    packer, action_id, params = value_struct(pipeline, entry.table, entry.action)
    head = {
        "action": action_id,
        "priority": entry.priority,
        "packets": packets,
        "bytes": byte_count,
        "last_hit_ns": last_hit_ns,
    }
    values = entry.params
    return packer.pack(*[head.get(n, 0) for n in head_names(pipeline, entry.table)],
                       *[values[n] for n in params])  # fmt: skip


@cache
def head_names(pipeline: Pipeline, table: str) -> tuple[str, ...]:
    return tuple(m.name for m in table_layout(pipeline, table).value_head.members)


@cache
def value_struct(pipeline: Pipeline, table: str, action: str) -> tuple[struct.Struct, int, tuple]:
    """One struct for a whole value of `action` in `table` (head, padding, params, padding),
    the action's id and its params' names in struct order."""
    lay = table_layout(pipeline, table)
    fmt, offset = "<", 0
    members = [*lay.value_head.members]
    params = lay.params[action]
    members += [Member(m.name, lay.params_offset + m.offset, m.size) for m in params.members]
    for m in members:
        fmt += "x" * (m.offset - offset) + PACK_CODES[m.size]
        offset = m.offset + m.size
    fmt += "x" * (lay.value_size - offset)
    names = tuple(m.name for m in params.members)
    return struct.Struct(fmt), pipeline.action(action).id, names


def to_map_value(lay: TableLayout, value: bytes, slot: int = 0) -> tuple[bytes, int, int]:
    """The data plane's value for entry value `value`, with its counters moved to counter slot
    `slot` when the table keeps them per CPU: (map value, packets, bytes)."""
    head = lay.value_head.unpack(value)
    params = value[lay.params_offset : lay.value_size]
    head["counter"] = slot
    out = lay.map_head.pack(head).ljust(lay.map_params_offset, b"\0") + params
    return (
        out[: lay.map_value_size].ljust(lay.map_value_size, b"\0"),
        head.get("packets", 0),
        head.get("bytes", 0),
    )


def from_map_value(
    lay: TableLayout, value: bytes, packets: int = 0, byte_count: int = 0, priority: int = 0
) -> bytes:
    """The entry value for a data-plane value, with the counters read from its slot."""
    head = lay.map_head.unpack(value)
    head.setdefault("packets", packets)
    head.setdefault("bytes", byte_count)
    head["priority"] = priority
    params = value[lay.map_params_offset : lay.map_value_size]
    out = lay.value_head.pack(head).ljust(lay.params_offset, b"\0") + params
    return out[: lay.value_size].ljust(lay.value_size, b"\0")


def _match_bytes(lay: TableLayout, entry: TableEntry) -> tuple[bytes, bytes]:
    values, masks = {}, {}
    for name, m in entry.match.items():
        assert isinstance(m, TernaryValue)
        values[name], masks[name] = m.value, m.mask
    return lay.key.pack(values), lay.key.pack(masks)


def encode_ternary_entry(
    pipeline: Pipeline, entry: TableEntry, packets: int = 0, byte_count: int = 0
) -> bytes:
    """A ternary entry as the loader reads it back: match value, mask, entry value."""
    lay = table_layout(pipeline, entry.table)
    offs = ternary_entry_offsets(lay)
    value, mask = _match_bytes(lay, entry)
    out = bytearray(offs["size"])
    out[offs["value"] : offs["value"] + lay.key.size] = value
    out[offs["mask"] : offs["mask"] + lay.key.size] = mask
    out[offs["v"] : offs["v"] + lay.value_size] = encode_value(pipeline, entry, packets, byte_count)
    return bytes(out)


@cache
def key_struct(pipeline: Pipeline, table: str) -> tuple[struct.Struct, tuple[str, ...]]:
    """The struct of an exact table's map key and its members' names, in struct order."""
    key = table_layout(pipeline, table).key
    assert isinstance(key, CStruct)
    fmt, offset = "<", 0
    for m in key.members:
        fmt += "x" * (m.offset - offset) + PACK_CODES[m.size]
        offset = m.offset + m.size
    fmt += "x" * (key.size - offset)
    return struct.Struct(fmt), tuple(m.name for m in key.members)


def map_ternary_entry(pipeline: Pipeline, entry: TableEntry, slot: int) -> bytes:
    """A ternary entry as the data plane scans it: match value, mask, map value."""
    lay = table_layout(pipeline, entry.table)
    offs = map_entry_offsets(lay)
    value, mask = _match_bytes(lay, entry)
    out = bytearray(offs["size"])
    out[offs["value"] : offs["value"] + lay.key.size] = value
    out[offs["mask"] : offs["mask"] + lay.key.size] = mask
    map_value, _, _ = to_map_value(lay, encode_value(pipeline, entry), slot)
    out[offs["v"] : offs["v"] + lay.map_value_size] = map_value
    return bytes(out)
