"""Encode table entries into the XDP program's map keys and values (and decode them back).

Layouts come from `cyberstar.codegen.xdp_layout`, the same computation the C generator asserts on.
"""

from __future__ import annotations

import struct
from functools import cache

from cyberstar.codegen.xdp_layout import (
    PACK_CODES,
    CStruct,
    LpmKey,
    Member,
    table_layout,
    ternary_entry_offsets,
)
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.model import Pipeline
from cyberstar.pipeline.values import LpmValue, TernaryValue


def encode_key(pipeline: Pipeline, entry: TableEntry) -> bytes:
    """The hash or LPM-trie key of an entry (not for ternary tables)."""
    lay = table_layout(pipeline, entry.table)
    if isinstance(lay.key, LpmKey):
        lpm = lay.table.lpm_field
        assert lpm is not None
        values, plen = {}, 0
        for k in lay.table.key:
            m = entry.match[k.name]
            if isinstance(m, LpmValue):
                values[k.name], plen = m.value, m.prefix_len
            else:
                values[k.name] = m
        return lay.key.pack(values, plen)
    if lay.ternary:
        raise ValueError(f"table {entry.table} is ternary: use encode_ternary_entry")
    return lay.key.pack(entry.match)  # type: ignore[arg-type]


def encode_value(
    pipeline: Pipeline,
    entry: TableEntry,
    packets: int = 0,
    byte_count: int = 0,
    last_hit_ns: int = 0,
) -> bytes:
    """The map value: action id, priority, direct counters, idle state, then the params."""
    packer, action_id, params = value_struct(pipeline, entry.table, entry.action)
    head = {
        "action": action_id,
        "priority": entry.priority,
        "packets": packets,
        "bytes": byte_count,
        "last_hit_ns": last_hit_ns,
        "idle_timeout_ns": entry.idle_timeout_ns,
    }
    values = entry.params
    return packer.pack(*[head[n] for n in head_names(pipeline, entry.table)],
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


def encode_ternary_entry(
    pipeline: Pipeline, entry: TableEntry, packets: int = 0, byte_count: int = 0
) -> bytes:
    lay = table_layout(pipeline, entry.table)
    assert isinstance(lay.key, CStruct) and lay.ternary
    offs = ternary_entry_offsets(lay)
    values, masks = {}, {}
    for name, m in entry.match.items():
        assert isinstance(m, TernaryValue)
        values[name], masks[name] = m.value, m.mask
    out = bytearray(offs["size"])
    out[offs["value"] : offs["value"] + lay.key.size] = lay.key.pack(values)
    out[offs["mask"] : offs["mask"] + lay.key.size] = lay.key.pack(masks)
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


def empty_ternary_slot(pipeline: Pipeline, table: str) -> bytes:
    """An all-zero entry: action 0 marks the end of a ternary table's entries."""
    lay = table_layout(pipeline, table)
    return bytes(ternary_entry_offsets(lay)["size"])
