"""Byte layouts of the XDP program's BPF map keys and values, derived from the pipeline spec.

One computation serves both sides: the C generator declares the structs from it (with explicit
padding, so the compiler adds none) and the Python encoders pack and unpack map entries with it.
Fields are host-endian integers, except LPM trie keys, whose data is big-endian so that prefix
bits come first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache, cached_property

from cyberstar.pipeline.model import Action, Pipeline, Table

_C_TYPES = {1: "__u8", 2: "__u16", 4: "__u32", 8: "__u64"}
PACK_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def c_size(width: int) -> int:
    """Bytes of the host integer that holds a `width`-bit value."""
    for size in (1, 2, 4, 8):
        if width <= size * 8:
            return size
    raise ValueError(f"{width}-bit fields are not supported in map layouts")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class CStruct:
    """A C struct with natural alignment and explicit padding members."""

    name: str
    members: tuple[Member, ...]
    size: int

    @classmethod
    def build(cls, name: str, fields: list[tuple[str, int]]) -> CStruct:
        """`fields` are (name, byte size) in declaration order; sizes are 1, 2, 4 or 8."""
        offset, members, align = 0, [], 1
        for fname, size in fields:
            offset = (offset + size - 1) // size * size
            members.append(Member(fname, offset, size))
            offset += size
            align = max(align, size)
        total = (offset + align - 1) // align * align
        return cls(name, tuple(members), max(total, 1) if members else 0)

    @property
    def align(self) -> int:
        return max((m.size for m in self.members), default=1)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"struct {self.name} has no member {name!r}")

    def c_decl(self) -> str:
        lines, offset, pad = [f"struct {self.name} {{"], 0, 0
        for m in self.members:
            if m.offset > offset:
                lines.append(f"    __u8 _pad{pad}[{m.offset - offset}];")
                pad += 1
            lines.append(f"    {_C_TYPES[m.size]} {m.name};")
            offset = m.offset + m.size
        if self.size > offset:
            lines.append(f"    __u8 _pad{pad}[{self.size - offset}];")
        lines.append("};")
        return "\n".join(lines)

    @cached_property
    def _struct(self) -> struct.Struct:
        fmt, offset = "<", 0
        for m in self.members:
            fmt += "x" * (m.offset - offset) + PACK_CODES[m.size]
            offset = m.offset + m.size
        return struct.Struct(fmt + "x" * (self.size - offset))

    @cached_property
    def _names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def pack(self, values: dict[str, int]) -> bytes:
        """Pack named values; missing names are zero."""
        get = values.get
        return self._struct.pack(*[get(n, 0) for n in self._names])

    def unpack(self, data: bytes) -> dict[str, int]:
        values = self._struct.unpack_from(data)
        return {m.name: v for m, v in zip(self.members, values, strict=True)}


@dataclass(frozen=True)
class LpmKey:
    """LPM trie key: `__u32 prefixlen` then big-endian bytes, exact fields first."""

    name: str
    parts: tuple[tuple[str, int], ...]  # (key field name, bytes)

    @property
    def data_len(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def size(self) -> int:
        # The kernel stores an LPM trie's value right after the key data: data padded to 8 bytes
        # keeps the value's 64-bit counters aligned (a misaligned atomic add is a split lock,
        # which costs tens of microseconds in a VM).
        return 4 + _round_up(self.data_len, 8)

    @property
    def exact_bits(self) -> int:
        return 8 * sum(n for _, n in self.parts[:-1])

    def c_decl(self) -> str:
        return f"struct {self.name} {{\n    __u32 prefixlen;\n    __u8 data[{self.size - 4}];\n}};"

    def pack(self, values: dict[str, int], prefix_len: int) -> bytes:
        data = b"".join(values[name].to_bytes(n, "big") for name, n in self.parts)
        return struct.pack("<I", self.exact_bits + prefix_len) + data.ljust(self.size - 4, b"\0")

    def unpack(self, data: bytes) -> tuple[dict[str, int], int]:
        (plen,) = struct.unpack_from("<I", data)
        values, off = {}, 4
        for name, n in self.parts:
            values[name] = int.from_bytes(data[off : off + n], "big")
            off += n
        return values, plen - self.exact_bits


@dataclass(frozen=True)
class TableLayout:
    table: Table
    key: CStruct | LpmKey
    value_head: CStruct  # action id, counters, last hit
    params: dict[str, CStruct]  # per action
    params_offset: int  # of the params union inside the value
    value_size: int
    value_align: int

    @property
    def ternary(self) -> bool:
        """Ternary tables are an array of (value, mask, value struct) entries, scanned in order."""
        return self.table.needs_priority


def _key_field_bytes(table: Table) -> list[tuple[str, int]]:
    return [(k.name, c_size(k.width)) for k in table.key]


def _params_struct(action: Action) -> CStruct:
    return CStruct.build(
        f"{action.name}_params", [(p.name, c_size(p.width)) for p in action.params]
    )


@cache
def table_layout(pipeline: Pipeline, table_name: str) -> TableLayout:
    t = pipeline.table(table_name)
    if t.lpm_field is not None:
        parts = tuple((k.name, (k.width + 7) // 8) for k in t.key)
        key: CStruct | LpmKey = LpmKey(f"{t.name}_key", parts)
    elif t.needs_priority:
        key = CStruct.build(f"{t.name}_match", _key_field_bytes(t))
    else:
        key = CStruct.build(f"{t.name}_key", _key_field_bytes(t))
    head_fields = [("action", 4), ("priority", 4)] if t.needs_priority else [("action", 4)]
    if t.direct_counter:
        head_fields += [("packets", 8), ("bytes", 8)]
    if t.idle_timeout:
        head_fields += [("last_hit_ns", 8), ("idle_timeout_ns", 8)]
    head = CStruct.build(f"{t.name}_value_head", head_fields)
    params = {r.action: _params_struct(pipeline.action(r.action)) for r in t.actions}
    union = max((p.size for p in params.values()), default=0)
    union_align = max((p.align for p in params.values() if p.members), default=1)
    params_offset = _round_up(head.size, union_align)
    align = max(head.align, union_align)
    value_size = _round_up(params_offset + union, align)
    return TableLayout(t, key, head, params, params_offset, value_size, align)


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def ternary_entry_offsets(lay: TableLayout) -> dict[str, int]:
    """Offsets in `struct <table>_entry { match value; match mask; <table>_value v; }`."""
    assert isinstance(lay.key, CStruct) and lay.ternary
    v = _round_up(2 * lay.key.size, lay.value_align)
    align = max(lay.key.align, lay.value_align)
    return {"value": 0, "mask": lay.key.size, "v": v, "size": _round_up(v + lay.value_size, align)}


def punt_meta_layout(pipeline: Pipeline) -> CStruct:
    """The record in front of each punted frame: packet_in fields and the frame length."""
    fields = [(f.name, c_size(f.width)) for f in pipeline.packet_in.fields]
    return CStruct.build("punt_meta", [*fields, ("len", 4)])
