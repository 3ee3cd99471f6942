"""Byte layouts of the XDP program's BPF maps, derived from the pipeline spec.

One computation serves both sides: the C generator declares the structs from it (with explicit
padding, so the compiler adds none) and the Python encoders pack and unpack map entries with it.
Fields are host-endian integers; struct members are ordered by size (largest first) so that
keys carry no padding between fields.

Each table is one of four kinds, chosen from its key (`TableKind`), and has two value layouts:

* the *entry* value, what the loader and the P4Runtime device read and write: action id,
  priority (ternary), direct counters (packets, bytes), last hit time (idle timeout), params;
* the *map* value, what the data plane reads: the same, except that a table whose entries many
  flows share (every kind but `HASH`) keeps its direct counters in a per-CPU array
  `<table>_counters`, indexed by the entry's counter slot, so that no two cores write one cache
  line; a `HASH` (flow) entry keeps its counters in the entry, updated without atomics (a flow
  is processed by one core at a time), and ternary entries keep no priority (their order is it).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from functools import cache, cached_property

from cyberstar.pipeline.model import Action, MatchKind, Pipeline, Table

_C_TYPES = {1: "__u8", 2: "__u16", 4: "__u32", 8: "__u64"}
PACK_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
DIRECT_MAX_BITS = 16  # an exact table keyed by one field this narrow is an array
TERNARY_LIST_FACTOR = 8  # room for a ternary table's per-partition lists, in table sizes
SLOT_PROBES = 64  # the HASH kind (an open-addressed array): slots a key may be from its home
SLOT_TOMB = 0xFFFFFFFF  # the HASH kind: a deleted slot's action
LPM_CACHE_SLOTS = 1024  # per CPU: recent packet keys of an LPM-kind table and their results


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
    def build(cls, name: str, fields: list[tuple[str, int]], by_size: bool = False) -> CStruct:
        """`fields` are (name, byte size) in declaration order; sizes are 1, 2, 4 or 8.
        `by_size` lays them out largest first (stable), which leaves no inner padding."""
        if by_size:
            fields = sorted(fields, key=lambda f: -f[1])
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


class TableKind(enum.Enum):
    HASH = "hash"  # exact key → BPF hash map
    LPM = "lpm"  # exact fields + an lpm field → one hash map probed per prefix length
    TERNARY = "ternary"  # entries scanned in priority order, in lists per partition value
    DIRECT = "direct"  # one exact field of at most DIRECT_MAX_BITS → BPF array indexed by it


# The LPM kind's key member that says the prefix length: the host bits of the lpm field, as a
# mask ((1 << (width - prefix length)) - 1), which the data plane computes without branches.
HOST_MASK = "host_mask"
DIRECT_INDEX = "index"  # the DIRECT kind's key: the field's value as a u32 array index


@dataclass(frozen=True)
class TableLayout:
    table: Table
    kind: TableKind
    key: CStruct  # the map key (ternary: the match struct of value and mask)
    value_head: CStruct  # entry value: action, priority, packets, bytes, last_hit_ns
    params: dict[str, CStruct]  # per action
    params_offset: int  # of the params union inside the entry value
    value_size: int
    value_align: int
    map_head: CStruct  # map value: action, counter slot or packets and bytes, last_hit_ns
    map_params_offset: int
    map_value_size: int
    map_value_align: int
    caches: str | None = None  # the ternary table whose result this table's entries carry

    @property
    def ternary(self) -> bool:
        return self.kind is TableKind.TERNARY

    @property
    def percpu_counters(self) -> bool:
        """Direct counters in `<table>_counters` (per CPU, by slot) rather than in the entry."""
        return self.table.direct_counter is not None and self.kind is not TableKind.HASH

    @property
    def counter_slots(self) -> int:
        """Size of `<table>_counters`: one slot per entry, or per index of a DIRECT table."""
        if self.kind is TableKind.DIRECT:
            return 1 << self.table.key[0].width
        return self.table.size

    @property
    def lpm_width(self) -> int:
        lpm = self.table.lpm_field
        assert lpm is not None
        return lpm.width

    @property
    def partition(self) -> str | None:
        """A ternary table whose first key field is at most 16 bits wide keeps one entry list
        per value of that field (plus one for values with no entries of their own)."""
        first = self.table.key[0]
        if self.kind is TableKind.TERNARY and first.width <= 16:
            return first.name
        return None

    @property
    def partitions(self) -> int:
        return 1 << self.table.key_field(self.partition).width if self.partition else 0

    @property
    def list_capacity(self) -> int:
        """Entry slots per half of a ternary table (entries appear in several lists)."""
        return TERNARY_LIST_FACTOR * self.table.size if self.partition else self.table.size


def table_kind(table: Table) -> TableKind:
    kinds = {k.match for k in table.key}
    if MatchKind.TERNARY in kinds:
        return TableKind.TERNARY
    if MatchKind.LPM in kinds:
        return TableKind.LPM
    if len(table.key) == 1 and table.key[0].width <= DIRECT_MAX_BITS:
        return TableKind.DIRECT
    return TableKind.HASH


def _params_struct(action: Action) -> CStruct:
    return CStruct.build(
        f"{action.name}_params", [(p.name, c_size(p.width)) for p in action.params]
    )


def _key(t: Table, kind: TableKind) -> CStruct:
    fields = [(k.name, c_size(k.width)) for k in t.key]
    if kind is TableKind.LPM:
        if t.lpm_field is None or t.lpm_field.width > 63:
            raise ValueError(f"table {t.name}: the lpm field must be at most 63 bits wide")
        host_mask = (HOST_MASK, c_size(t.lpm_field.width))
        return CStruct.build(f"{t.name}_key", [*fields, host_mask], by_size=True)
    if kind is TableKind.DIRECT:
        return CStruct.build(f"{t.name}_key", [(DIRECT_INDEX, 4)])
    if kind is TableKind.TERNARY:
        return CStruct.build(f"{t.name}_match", fields, by_size=True)
    return CStruct.build(f"{t.name}_key", fields, by_size=True)


@cache
def table_layout(pipeline: Pipeline, table_name: str) -> TableLayout:
    t = pipeline.table(table_name)
    kind = table_kind(t)
    key = _key(t, kind)
    head_fields = [("action", 4), ("priority", 4)] if kind is TableKind.TERNARY else [("action", 4)]
    map_fields = [("action", 4)]
    if t.direct_counter:
        head_fields += [("packets", 8), ("bytes", 8)]
        map_fields += [("packets", 8), ("bytes", 8)] if kind is TableKind.HASH else [("counter", 4)]
    if t.idle_timeout:  # the timeout is the agent's, kept here so that it keeps no copy
        head_fields += [("last_hit_ns", 8), ("idle_timeout_ns", 8)]
        map_fields += [("last_hit_ns", 8), ("idle_timeout_ns", 8)]
    caches = cached_table(pipeline, t) if kind is TableKind.HASH else None
    if caches:  # the same in both: entry values of flow tables are written as they are
        head_fields.append((f"{caches}_cache", 8))
        map_fields.append((f"{caches}_cache", 8))
    head = CStruct.build(f"{t.name}_entry_head", head_fields)
    map_head = CStruct.build(f"{t.name}_value_head", map_fields)
    params = {r.action: _params_struct(pipeline.action(r.action)) for r in t.actions}
    union = max((p.size for p in params.values()), default=0)
    union_align = max((p.align for p in params.values() if p.members), default=1)
    params_offset = _round_up(head.size, union_align)
    align = max(head.align, union_align)
    value_size = _round_up(params_offset + union, align)
    map_params_offset = _round_up(map_head.size, union_align)
    map_align = max(map_head.align, union_align)
    map_value_size = _round_up(map_params_offset + union, map_align)
    lay = TableLayout(t, kind, key, head, params, params_offset, value_size, align, map_head,
                      map_params_offset, map_value_size, map_align, caches)  # fmt: skip
    if lay.partition and 2 * lay.list_capacity > 0xFFFF:
        raise ValueError(f"table {t.name}: {lay.list_capacity} list slots do not fit in 16 bits")
    return lay


def cached_table(pipeline: Pipeline, t: Table) -> str | None:
    """The ternary table applied just before exact table `t` whose result `t`'s entries can
    carry: its key reads only fields `t`'s key reads (so one `t` entry sees one result), its
    actions take no parameters (an action index says all), and it has at most 65536 entries
    (a counter slot fits 16 bits)."""
    i = pipeline.tables.index(t)
    if i == 0:
        return None
    prev = pipeline.tables[i - 1]
    if table_kind(prev) is not TableKind.TERNARY or prev.size > 1 << 16:
        return None
    if not {k.source for k in prev.key} <= {k.source for k in t.key}:
        return None
    if any(pipeline.action(r.action).params for r in prev.actions):
        return None
    return prev.name


def cached_tables(pipeline: Pipeline) -> set[str]:
    """Tables whose results are cached (each has a `<table>_epoch`): those other tables'
    entries carry, and LPM-kind tables, whose results per packet key a per-CPU cache of
    LPM_CACHE_SLOTS keeps."""
    out = {c for t in pipeline.tables if (c := table_layout(pipeline, t.name).caches)}
    return out | {t.name for t in pipeline.tables if table_kind(t) is TableKind.LPM}


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _entry_offsets(key: CStruct, value_size: int, value_align: int) -> dict[str, int]:
    v = _round_up(2 * key.size, value_align)
    align = max(key.align, value_align)
    return {"value": 0, "mask": key.size, "v": v, "size": _round_up(v + value_size, align)}


def ternary_entry_offsets(lay: TableLayout) -> dict[str, int]:
    """Offsets in a ternary entry `{ match value; match mask; entry value v; }`, the form the
    loader reads back (`XdpProgram.ternary_raw`)."""
    assert lay.ternary
    return _entry_offsets(lay.key, lay.value_size, lay.value_align)


def map_entry_offsets(lay: TableLayout) -> dict[str, int]:
    """Offsets in the data plane's `struct <table>_entry { value; mask; map value v; }`."""
    assert lay.ternary
    return _entry_offsets(lay.key, lay.map_value_size, lay.map_value_align)


def punt_meta_layout(pipeline: Pipeline) -> CStruct:
    """The record in front of each punted frame: packet_in fields and the frame length."""
    fields = [(f.name, c_size(f.width)) for f in pipeline.packet_in.fields]
    return CStruct.build("punt_meta", [*fields, ("len", 4)])


PORT_SLOTS = 256  # direct-mapped ifindex → port cache; collisions go to the `ports_spill` hash
# PacketOuts into the pipeline run REPLAY_FRAMES at a time (`replay_take` in the generated
# program); each slot of `replay_frames` is a 16-byte header and a frame of up to MAX_FRAME.
REPLAY_FRAMES = 256
REPLAY_HEADER = 16
PORT_SLOT = CStruct.build("port_slot", [("ifindex", 4), ("port", 4)])
HIT_CLOCK = CStruct.build("hit_clock", [("tick_ns", 8), ("offset_ns", 8)])
CLOCK_SAMPLE = CStruct.build("clock_sample", [("jiffies", 8), ("coarse_ns", 8)])
# A meter cell (`cyberstar.pipeline.meters`): its configuration as two GCRA tests (increment
# 0: never configured), and its state, the two theoretical arrival times (CLOCK_MONOTONIC ns).
METER_CONFIG = CStruct.build(
    "meter_config",
    [("peak_increment", 8), ("peak_depth", 8), ("committed_increment", 8), ("committed_depth", 8)],
)
METER_STATE = CStruct.build("meter_state", [("peak_tat", 8), ("committed_tat", 8)])
