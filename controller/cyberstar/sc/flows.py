"""Flow keys, slots and shard ids: how SC state is partitioned and how FM routes a flow.

Every tenant's flows hash into `SLOTS` slots. A shard is a contiguous slot range of one tenant
(`"<tenant>:<lo>-<hi>"`); an SCG owns shards, and scaling splits or merges them. The slot of a
flow is a hash of the tenant, the protocol and the *unordered* pair of endpoints, so a flow and
its mirror image (the return direction when nothing rewrites it) land on the same shard.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import NamedTuple

SLOTS = 1024
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17

_SLOT_KEY = struct.Struct(">HBIHIH")
_SHARD_RE = re.compile(r"^(\d+):(\d+)-(\d+)$")


class FlowKey(NamedTuple):
    """The 5-tuple of a flow_table key (tenant aside), host-order integers."""

    protocol: int
    src_addr: int
    dst_addr: int
    src_port: int
    dst_port: int

    def reversed(self) -> FlowKey:
        return FlowKey(self.protocol, self.dst_addr, self.src_addr, self.dst_port, self.src_port)


class Packet(NamedTuple):
    """The first packet of a flow as a PP punted it."""

    tenant_id: int
    ingress_port: int
    vni: int
    key: FlowKey


# Field widths of a punted flow (pipeline metadata widths).
FLOW_WIDTHS = {
    "tenant_id": 16,
    "ingress_port": 9,
    "vni": 24,
    "src_addr": 32,
    "dst_addr": 32,
    "protocol": 8,
    "src_port": 16,
    "dst_port": 16,
}


def slot_of(tenant_id: int, key: FlowKey) -> int:
    """The slot of a flow: the same for both directions of an un-rewritten flow."""
    a = (key.src_addr, key.src_port)
    b = (key.dst_addr, key.dst_port)
    lo, hi = (a, b) if a <= b else (b, a)
    data = _SLOT_KEY.pack(tenant_id, key.protocol, lo[0], lo[1], hi[0], hi[1])
    return zlib.crc32(data) % SLOTS


class ShardId(NamedTuple):
    tenant_id: int
    lo: int
    hi: int

    def __str__(self) -> str:
        return f"{self.tenant_id}:{self.lo}-{self.hi}"

    def holds(self, slot: int) -> bool:
        return self.lo <= slot < self.hi

    def halves(self) -> tuple[ShardId, ShardId]:
        if self.hi - self.lo < 2:
            raise ValueError(f"shard {self} holds one slot and cannot be split")
        mid = (self.lo + self.hi) // 2
        return ShardId(self.tenant_id, self.lo, mid), ShardId(self.tenant_id, mid, self.hi)

    @classmethod
    def parse(cls, text: str) -> ShardId:
        m = _SHARD_RE.match(text)
        if not m:
            raise ValueError(f"a shard id looks like '<tenant>:<lo>-<hi>', found {text!r}")
        t, lo, hi = (int(g) for g in m.groups())
        if not (0 <= lo < hi <= SLOTS) or t >> 16:
            raise ValueError(f"shard {text!r} is out of range (slots 0..{SLOTS}, tenant < 65536)")
        return cls(t, lo, hi)

    @classmethod
    def whole(cls, tenant_id: int) -> ShardId:
        return cls(tenant_id, 0, SLOTS)


def adjacent(a: ShardId, b: ShardId) -> bool:
    return a.tenant_id == b.tenant_id and (a.hi == b.lo or b.hi == a.lo)


def union(a: ShardId, b: ShardId) -> ShardId:
    if not adjacent(a, b):
        raise ValueError(f"shards {a} and {b} are not adjacent")
    return ShardId(a.tenant_id, min(a.lo, b.lo), max(a.hi, b.hi))
