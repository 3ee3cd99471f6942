"""The vocabulary of a pipeline spec: headers, metadata, tables, actions, counters.

A spec built from these classes is the single source of truth. The code generators (P4_16,
XDP C, P4Info), the reference model and the rule encoders all read it; nothing here knows
about any one target.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Field:
    """A fixed-width field of a header or of a metadata struct, in bits."""

    name: str
    width: int


@dataclass(frozen=True)
class HeaderType:
    """A packet header layout. Fields are in wire order, most significant bit first.

    `varbit` names a trailing variable-length field (IPv4 options) with its maximum width;
    such a header has no fixed fields.
    """

    name: str
    fields: tuple[Field, ...] = ()
    varbit: Field | None = None

    @cached_property  # read per header per parsed frame (FM parses every PacketIn)
    def bit_width(self) -> int:
        return sum(f.width for f in self.fields)

    @cached_property
    def byte_len(self) -> int:
        if self.bit_width % 8:
            raise ValueError(f"header {self.name} is {self.bit_width} bits, not whole bytes")
        return self.bit_width // 8

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"header {self.name} has no field {name!r}")

    def bit_offset(self, name: str) -> int:
        offset = 0
        for f in self.fields:
            if f.name == name:
                return offset
            offset += f.width
        raise KeyError(f"header {self.name} has no field {name!r}")


@dataclass(frozen=True)
class HeaderInstance:
    """A header in the packet's header stack, in deparse (emit) order."""

    name: str
    type: HeaderType


@dataclass(frozen=True)
class ControllerHeader:
    """A P4Runtime controller header (`packet_in` / `packet_out`) and its P4Info id."""

    name: str
    id: int
    fields: tuple[Field, ...]

    @property
    def byte_len(self) -> int:
        return sum(f.width for f in self.fields) // 8


class MatchKind(enum.Enum):
    EXACT = "exact"
    LPM = "lpm"
    TERNARY = "ternary"


@dataclass(frozen=True)
class KeyField:
    """A table key field: the P4Runtime name, width, match kind, and the metadata it reads."""

    name: str
    width: int
    match: MatchKind
    source: str  # a field of the pipeline's lookup metadata


@dataclass(frozen=True)
class Param:
    name: str
    width: int


# ---- action primitives ---------------------------------------------------------------------
# An action body is a sequence of primitives. Arguments are parameter names of the action, or
# constants given as ints. Every target translates each primitive the same way.


@dataclass(frozen=True)
class SetMeta:
    """meta.<field> = <param or constant>."""

    field: str
    value: str | int


# What a Rewrite may target, in the order every target applies rewrites (the order fixes the
# checksum arithmetic, so it is part of the pipeline's contract).
REWRITE_TARGETS = ("l3_src", "l3_dst", "l4_src", "l4_dst")
# A verdict no primitive has set yet (the verdicts themselves are the spec's, numbered 0..).
VERDICT_UNDECIDED = 255


@dataclass(frozen=True)
class Rewrite:
    """Rewrite a field of the packet's effective (inner when VXLAN) IPv4/L4 headers.

    `target` is one of `l3_src`, `l3_dst`, `l4_src`, `l4_dst`; checksums are updated
    incrementally (RFC 1624) so that a packet keeps whatever checksum error it came with.
    """

    target: str
    param: str


@dataclass(frozen=True)
class SetNextHop:
    """Continue to the next-hop table with meta.nexthop_id = param."""

    param: str


@dataclass(frozen=True)
class Forward:
    """Send out of `port`, rewriting the effective Ethernet MACs; decapsulate VXLAN if present."""

    port: str
    smac: str
    dmac: str


@dataclass(frozen=True)
class ForwardVxlan:
    """Send out of `port` inside a new VXLAN/UDP/IPv4/Ethernet envelope (replacing any old one)."""

    port: str
    smac: str
    dmac: str
    src_addr: str
    dst_addr: str
    vni: str


@dataclass(frozen=True)
class Drop:
    reason: str


@dataclass(frozen=True)
class Punt:
    """Send the packet, unmodified, to the controller with a punt reason."""

    reason: str


@dataclass(frozen=True)
class Pass:
    """Hand the packet, unmodified, to the host's own network stack."""


Primitive = SetMeta | Rewrite | SetNextHop | Forward | ForwardVxlan | Drop | Punt | Pass


@dataclass(frozen=True)
class Action:
    name: str
    id: int
    params: tuple[Param, ...] = ()
    body: tuple[Primitive, ...] = ()
    doc: str = ""

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"action {self.name} has no parameter {name!r}")


class ActionScope(enum.Enum):
    TABLE_AND_DEFAULT = "TABLE_AND_DEFAULT"
    TABLE_ONLY = "TABLE_ONLY"
    DEFAULT_ONLY = "DEFAULT_ONLY"


@dataclass(frozen=True)
class ActionRef:
    action: str
    scope: ActionScope = ActionScope.TABLE_AND_DEFAULT


@dataclass(frozen=True)
class DirectCounter:
    name: str
    id: int


@dataclass(frozen=True)
class Table:
    name: str
    id: int
    key: tuple[KeyField, ...]
    actions: tuple[ActionRef, ...]
    default_action: str
    size: int
    direct_counter: DirectCounter | None = None
    idle_timeout: bool = False
    doc: str = ""

    @cached_property
    def needs_priority(self) -> bool:
        return any(k.match is MatchKind.TERNARY for k in self.key)

    @cached_property
    def lpm_field(self) -> KeyField | None:
        lpm = [k for k in self.key if k.match is MatchKind.LPM]
        return lpm[0] if lpm else None

    def key_field(self, name: str) -> KeyField:
        for k in self.key:
            if k.name == name:
                return k
        raise KeyError(f"table {self.name} has no key field {name!r}")


class CounterUnit(enum.Enum):
    PACKETS = "PACKETS"
    BYTES = "BYTES"
    BOTH = "BOTH"


@dataclass(frozen=True)
class IndexedCounter:
    """A counter array; `labels` names the indices when they have meaning (drop reasons)."""

    name: str
    id: int
    size: int
    unit: CounterUnit = CounterUnit.BOTH
    labels: tuple[str, ...] = ()
    doc: str = ""


class MeterUnit(enum.Enum):
    PACKETS = "PACKETS"
    BYTES = "BYTES"


@dataclass(frozen=True)
class IndexedMeter:
    """A meter array, executed once per classified packet at index `meta.<index>` (after
    tenant classification): a two-rate three-color marker (RFC 2698) whose cells the controller
    configures over P4Runtime (MeterEntry: CIR, CBS, PIR, PBS). A cell never configured marks
    green. Red packets are dropped with `drop_reason`, and counted at the same index in
    `drops`; every packet the meter sees is counted in `arrivals`."""

    name: str
    id: int
    size: int
    unit: MeterUnit
    index: str  # a field of the lookup metadata
    drop_reason: str
    arrivals: str  # an indexed counter of the same size
    drops: str  # an indexed counter of the same size
    doc: str = ""


@dataclass(frozen=True, eq=False)  # identity hash: layouts are cached per pipeline object
class Pipeline:
    name: str
    headers: tuple[HeaderInstance, ...]
    metadata: tuple[Field, ...]
    packet_in: ControllerHeader
    packet_out: ControllerHeader
    actions: tuple[Action, ...]
    tables: tuple[Table, ...]
    counters: tuple[IndexedCounter, ...]
    drop_reasons: tuple[str, ...]
    parser_drop_reasons: tuple[str, ...]
    punt_reasons: tuple[str, ...]
    verdicts: tuple[str, ...]
    constants: dict[str, int] = field(default_factory=dict, hash=False)
    meters: tuple[IndexedMeter, ...] = ()

    def __post_init__(self) -> None:
        _check_pipeline(self)

    @cached_property
    def _tables_by_name(self) -> dict[str, Table]:
        return {t.name: t for t in self.tables}

    @cached_property
    def _actions_by_name(self) -> dict[str, Action]:
        return {a.name: a for a in self.actions}

    def table(self, name: str) -> Table:
        try:
            return self._tables_by_name[name]
        except KeyError:
            raise KeyError(f"no table {name!r}") from None

    def action(self, name: str) -> Action:
        try:
            return self._actions_by_name[name]
        except KeyError:
            raise KeyError(f"no action {name!r}") from None

    def counter(self, name: str) -> IndexedCounter:
        for c in self.counters:
            if c.name == name:
                return c
        raise KeyError(f"no counter {name!r}")

    def header(self, name: str) -> HeaderInstance:
        for h in self.headers:
            if h.name == name:
                return h
        raise KeyError(f"no header {name!r}")

    def meta_field(self, name: str) -> Field:
        for f in self.metadata:
            if f.name == name:
                return f
        raise KeyError(f"no metadata field {name!r}")

    @property
    def header_types(self) -> tuple[HeaderType, ...]:
        seen: dict[str, HeaderType] = {}
        for h in self.headers:
            seen.setdefault(h.type.name, h.type)
        return tuple(seen.values())

    def drop_reason(self, name: str) -> int:
        return self.drop_reasons.index(name)

    def punt_reason(self, name: str) -> int:
        return self.punt_reasons.index(name)

    def verdict(self, name: str) -> int:
        return self.verdicts.index(name)


# P4Runtime id prefixes (P4Runtime specification, "ID allocation for P4Info objects").
ID_PREFIX = {
    "action": 0x01,
    "table": 0x02,
    "controller_header": 0x04,
    "counter": 0x12,
    "direct_counter": 0x13,
    "meter": 0x14,
}


def _check_pipeline(p: Pipeline) -> None:
    """Reject a spec that no target could implement; messages name the offending object."""
    ids: dict[int, str] = {}

    def claim(obj_id: int, kind: str, name: str) -> None:
        if obj_id >> 24 != ID_PREFIX[kind]:
            raise ValueError(f"{kind} {name}: id {obj_id:#x} lacks prefix {ID_PREFIX[kind]:#04x}")
        if obj_id in ids:
            raise ValueError(f"{kind} {name}: id {obj_id:#x} already used by {ids[obj_id]}")
        ids[obj_id] = name

    for a in p.actions:
        claim(a.id, "action", a.name)
        for prim in a.body:
            for arg in _primitive_params(prim):
                a.param(arg)
            if isinstance(prim, Rewrite) and prim.target not in REWRITE_TARGETS:
                raise ValueError(f"action {a.name}: cannot rewrite {prim.target!r}")
    for t in p.tables:
        claim(t.id, "table", t.name)
        for k in t.key:
            src = p.meta_field(k.source)
            if src.width != k.width:
                raise ValueError(f"table {t.name} key {k.name}: {k.width} bits, source {src.width}")
        lpm = [k for k in t.key if k.match is MatchKind.LPM]
        if len(lpm) > 1 or (lpm and t.key[-1] is not lpm[0]):
            raise ValueError(f"table {t.name}: at most one lpm key field, and it must be last")
        names = [r.action for r in t.actions]
        for n in names:
            p.action(n)
        if t.default_action not in names:
            raise ValueError(f"table {t.name}: default action {t.default_action} not in actions")
        if t.direct_counter:
            claim(t.direct_counter.id, "direct_counter", t.direct_counter.name)
    for c in p.counters:
        claim(c.id, "counter", c.name)
        if c.labels and len(c.labels) > c.size:
            raise ValueError(f"counter {c.name}: {len(c.labels)} labels for size {c.size}")
    for m in p.meters:
        claim(m.id, "meter", m.name)
        p.meta_field(m.index)
        if m.drop_reason not in p.drop_reasons:
            raise ValueError(f"meter {m.name}: unknown drop reason {m.drop_reason!r}")
        for name in (m.arrivals, m.drops):
            if p.counter(name).size != m.size:
                raise ValueError(f"meter {m.name}: counter {name} must have {m.size} cells")
    if not set(p.parser_drop_reasons) <= set(p.drop_reasons):
        raise ValueError("parser drop reasons must also be drop reasons")
    for h in (p.packet_in, p.packet_out):
        claim(h.id, "controller_header", h.name)
        if sum(f.width for f in h.fields) % 8:
            raise ValueError(f"controller header {h.name} is not a whole number of bytes")


def _primitive_params(prim: Primitive) -> list[str]:
    """The action parameters a primitive reads (constants are ints and are not listed)."""
    match prim:
        case SetMeta(value=str() as v):
            return [v]
        case Rewrite(param=v) | SetNextHop(param=v):
            return [v]
        case Forward(port=a, smac=b, dmac=c):
            return [a, b, c]
        case ForwardVxlan(port=a, smac=b, dmac=c, src_addr=d, dst_addr=e, vni=f):
            return [a, b, c, d, e, f]
        case _:
            return []
