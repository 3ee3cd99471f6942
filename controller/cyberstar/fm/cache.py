"""FM's rule cache: the rules SC computed, by flow key, answered again without asking SC.

One connection (the rules SC returned for one first packet: forward and return `flow_table`
entries) is one compact record; both of its rule keys index it. Memory matters — FM caches
every live flow of its PP nodes — so keys and records are packed bytes, not objects:

    key    = tenant(2) src(4) dst(4) proto(1) sport(2) dport(2)           15 bytes
    record = conn_id(8) slot(2) n(1) then per rule:
             key(15) installed-PP bitmask(8) idle_ms(4) action(1) params

`installed` tracks which PP nodes (by index, up to 64) hold the rule, so a flow is released in
SC only when no PP holds any of its rules.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.model import Pipeline

KEY = struct.Struct(">HIIBHH")
_HEAD = struct.Struct(">QHB")
_RULE = struct.Struct(">15sQIB")
FLOW_TABLE = "flow_table"


def flow_key(tenant: int, protocol: int, src: int, dst: int, sport: int, dport: int) -> bytes:
    return KEY.pack(tenant, src, dst, protocol, sport, dport)


def entry_key(entry: TableEntry) -> bytes:
    m = entry.match
    return KEY.pack(m["tenant_id"], m["src_addr"], m["dst_addr"], m["protocol"],
                    m["src_port"], m["dst_port"])  # fmt: skip


@dataclass
class CachedRule:
    key: bytes
    installed: int  # bitmask of PP indices
    entry: TableEntry


@dataclass
class Connection:
    conn_id: int
    slot: int
    rules: list[CachedRule]
    cacheable: bool = True  # False for an exhausted pool's drop rule (never stored)

    def rule_keys(self) -> list[bytes]:
        return [r.key for r in self.rules]


class RuleCodec:
    """Packs a flow_table entry's action into a few bytes, and back."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        table = pipeline.table(FLOW_TABLE)
        self.actions = [pipeline.action(r.action) for r in table.actions]
        self.index = {a.name: i for i, a in enumerate(self.actions)}
        self.params = [
            struct.Struct(">" + "".join(_code(p.width) for p in a.params)) for a in self.actions
        ]

    def pack(self, conn: Connection) -> bytes:
        out = [_HEAD.pack(conn.conn_id, conn.slot, len(conn.rules))]
        for r in conn.rules:
            i = self.index[r.entry.action]
            idle_ms = r.entry.idle_timeout_ns // 1_000_000
            out.append(_RULE.pack(r.key, r.installed, idle_ms, i))
            out.append(
                self.params[i].pack(*(r.entry.params[p.name] for p in self.actions[i].params))
            )
        return b"".join(out)

    def unpack(self, record: bytes) -> Connection:
        conn_id, slot, n = _HEAD.unpack_from(record)
        off, rules = _HEAD.size, []
        for _ in range(n):
            key, installed, idle_ms, i = _RULE.unpack_from(record, off)
            off += _RULE.size
            action = self.actions[i]
            values = self.params[i].unpack_from(record, off)
            off += self.params[i].size
            tenant, src, dst, proto, sport, dport = KEY.unpack(key)
            entry = TableEntry(
                FLOW_TABLE,
                {"tenant_id": tenant, "src_addr": src, "dst_addr": dst, "protocol": proto,
                 "src_port": sport, "dst_port": dport},
                action.name,
                {p.name: v for p, v in zip(action.params, values, strict=True)},
                idle_timeout_ns=idle_ms * 1_000_000,
                metadata=connection_cookie(conn_id, slot),
            )  # fmt: skip
            rules.append(CachedRule(key, installed, entry))
        return Connection(conn_id, slot, rules)


def _code(width: int) -> str:
    for size, code in ((8, "B"), (16, "H"), (32, "I"), (64, "Q")):
        if width <= size:
            return code
    raise ValueError(f"{width}-bit parameter")


COOKIE = struct.Struct(">4sQH")
COOKIE_MAGIC = b"CSfm"


def connection_cookie(conn_id: int, slot: int) -> bytes:
    """The TableEntry metadata FM writes with each rule: which connection it belongs to and its
    SC slot, so that a new FM leader can rebuild the cache from the PP nodes' tables."""
    return COOKIE.pack(COOKIE_MAGIC, conn_id, slot)


def parse_cookie(metadata: bytes) -> tuple[int, int] | None:
    if len(metadata) != COOKIE.size:
        return None
    magic, conn_id, slot = COOKIE.unpack(metadata)
    return (conn_id, slot) if magic == COOKIE_MAGIC else None


class RuleCache:
    def __init__(self, pipeline: Pipeline) -> None:
        self.codec = RuleCodec(pipeline)
        self._records: dict[bytes, bytes] = {}
        self.connections = 0

    def __len__(self) -> int:
        """Number of cached rules (keys)."""
        return len(self._records)

    def get(self, key: bytes) -> Connection | None:
        record = self._records.get(key)
        return self.codec.unpack(record) if record is not None else None

    def put(self, conn: Connection) -> None:
        record = self.codec.pack(conn)
        fresh = all(k not in self._records for k in conn.rule_keys())
        for key in conn.rule_keys():
            self._records[key] = record
        self.connections += fresh

    def remove(self, conn: Connection) -> None:
        present = False
        for key in conn.rule_keys():
            present |= self._records.pop(key, None) is not None
        self.connections -= present

    def items(self) -> Iterator[Connection]:
        seen: set[int] = set()
        for record in self._records.values():
            conn = self.codec.unpack(record)
            if conn.conn_id not in seen:
                seen.add(conn.conn_id)
                yield conn
