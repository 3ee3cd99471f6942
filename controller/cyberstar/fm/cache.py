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

from finsy.proto import p4r

from cyberstar.p4rt.codec import ExactTableEncoder
from cyberstar.p4rt.exact_wire import ExactWire, ParsedEntry
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.flow_records import FLOW_TABLE, KEY, KEY_FIELDS, RULE, FlowLayout
from cyberstar.pipeline.model import Pipeline

_HEAD = struct.Struct(">QHB")
_INSTALLED = struct.Struct(">Q")  # a rule's installed bits, at offset KEY.size of its RULE


def entry_key(entry: TableEntry) -> bytes:
    m = entry.match
    return KEY.pack(m["tenant_id"], m["src_addr"], m["dst_addr"], m["protocol"],
                    m["src_port"], m["dst_port"])  # fmt: skip


class CachedRule:
    """One rule of a connection: its key, the PP nodes holding it (a bitmask of PP indices)
    and its flow_table entry. A rule read from a packed record (`RuleCodec.unpack`) keeps its
    packed form and builds the entry only when something asks for it: the slow path writes
    and caches a new connection from the packed form alone."""

    __slots__ = ("_codec", "_entry", "cookie", "installed", "key", "packed")

    def __init__(self, key: bytes, installed: int, entry: TableEntry | None = None) -> None:
        self.key = key
        self.installed = installed
        self._entry = entry
        self.packed = b""  # RULE + the action's params, as a packed record holds them
        self.cookie = b""  # the connection's cookie, for the entry built from `packed`
        self._codec: RuleCodec | None = None

    @classmethod
    def from_record(cls, codec: RuleCodec, key: bytes, installed: int, packed: bytes,
                    cookie: bytes) -> CachedRule:  # fmt: skip
        rule = cls(key, installed)
        rule.packed, rule.cookie, rule._codec = packed, cookie, codec
        return rule

    @property
    def entry(self) -> TableEntry:
        if self._entry is None:
            assert self._codec is not None, "a CachedRule needs an entry or a packed form"
            self._entry = self._codec.entry_of(self.packed, self.cookie)
        return self._entry

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CachedRule):
            return NotImplemented
        return (self.key, self.installed, self.entry) == (other.key, other.installed, other.entry)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return f"CachedRule(key={self.key!r}, installed={self.installed:#x}, entry={self.entry!r})"


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
        self.layout = FlowLayout(pipeline)
        self.actions = self.layout.actions
        self.index = self.layout.index
        self.by_id = {a.id: i for i, a in enumerate(self.actions)}
        self.params = self.layout.params
        self.wire = ExactWire(
            table.id,
            [k.width for k in table.key],
            {a.id: [p.width for p in a.params] for a in self.actions},
        )
        self.encoder = ExactTableEncoder(pipeline, FLOW_TABLE)
        # the table's key fields, in its key's order, as positions in a packed KEY
        self._key_order = [KEY_FIELDS.index(k.name) for k in table.key]

    def pack(self, conn: Connection) -> bytes:
        out = [_HEAD.pack(conn.conn_id, conn.slot, len(conn.rules))]
        for r in conn.rules:
            if r.packed:  # as read from a record: only the installed bits may have changed
                out += (r.packed[: KEY.size], _INSTALLED.pack(r.installed),
                        r.packed[KEY.size + _INSTALLED.size :])  # fmt: skip
                continue
            i = self.index[r.entry.action]
            idle_ms = r.entry.idle_timeout_ns // 1_000_000
            out.append(RULE.pack(r.key, r.installed, idle_ms, i))
            out.append(
                self.params[i].pack(*(r.entry.params[p.name] for p in self.actions[i].params))
            )
        return b"".join(out)

    def rule_bytes(self, te: p4r.TableEntry, installed: int, decoder) -> tuple[bytes, bytes]:
        """A flow_table entry read from a PP node, as (key, packed rule), read straight from
        the message when it has the usual shape, else through `decoder`."""
        values = [0] * 6
        seen = 0
        for fm in te.match:
            fid = fm.field_id - 1
            data = fm.exact.value
            if not 0 <= fid < 6 or not data or seen >> fid & 1:
                return self._rule_bytes_checked(te, installed, decoder)
            seen |= 1 << fid
            values[fid] = int.from_bytes(data, "big")
        action = te.action.action
        i = self.by_id.get(action.action_id)
        if seen != 0x3F or i is None:
            return self._rule_bytes_checked(te, installed, decoder)
        params = [int.from_bytes(p.value, "big") for p in action.params]
        if len(params) != len(self.actions[i].params):
            return self._rule_bytes_checked(te, installed, decoder)
        return self._packed(values, installed, te.idle_timeout_ns, i, params)

    def rule_bytes_wire(self, parsed: ParsedEntry, installed: int) -> tuple[bytes, bytes] | None:
        """`rule_bytes` of an entry read from its wire form (`ExactWire`); None when the entry
        is not one `rule_bytes` reads straight."""
        values, aid, params, idle_ns, _ = parsed
        i = self.by_id.get(aid)
        if i is None or idle_ns >> 63 or len(params) != len(self.actions[i].params):
            return None
        return self._packed(values, installed, idle_ns, i, params)

    def _packed(self, values: list[int], installed: int, idle_ns: int, i: int,
                params: list[int]) -> tuple[bytes, bytes]:  # fmt: skip
        """(key, packed rule) of match values in field-id order and action `i`'s params."""
        key = KEY.pack(*values)
        return key, RULE.pack(key, installed, idle_ns // 1_000_000, i) + self.params[i].pack(
            *params
        )

    def _rule_bytes_checked(self, te: p4r.TableEntry, installed: int, decoder
                            ) -> tuple[bytes, bytes]:  # fmt: skip
        entry = decoder.decode(te, kind=p4r.Update.INSERT)
        i = self.index[entry.action]
        key = entry_key(entry)
        params = self.params[i].pack(*(entry.params[p.name] for p in self.actions[i].params))
        return key, RULE.pack(key, installed, entry.idle_timeout_ns // 1_000_000, i) + params

    def record_keys(self, record: bytes) -> list[bytes]:
        _, _, n = _HEAD.unpack_from(record)
        off, keys = _HEAD.size, []
        for _ in range(n):
            key, _, _, i = RULE.unpack_from(record, off)
            keys.append(key)
            off += RULE.size + self.params[i].size
        return keys

    def with_rule(self, record: bytes, key: bytes, rule: bytes) -> bytes:
        """`record` with `rule` added, or, if it has a rule of that key already (the same rule
        on another PP node), with that rule's installed bits added."""
        conn_id, slot, n = _HEAD.unpack_from(record)
        off = _HEAD.size
        for _ in range(n):
            k, installed, idle_ms, i = RULE.unpack_from(record, off)
            if k == key:
                more = RULE.unpack_from(rule)[1]
                merged = RULE.pack(k, installed | more, idle_ms, i)
                return record[:off] + merged + record[off + RULE.size :]
            off += RULE.size + self.params[i].size
        return _HEAD.pack(conn_id, slot, n + 1) + record[_HEAD.size :] + rule

    def without_bit(self, record: bytes, key: bytes, bit: int) -> tuple[bytes, int, list[bytes]]:
        """`record` with PP `bit` cleared on the rule of `key` only, the rules' bits ORed
        afterwards (0: no PP holds any rule of the connection), and the rules' keys."""
        buf = bytearray(record)
        off, held, keys = _HEAD.size, 0, []
        for _ in range(_HEAD.unpack_from(buf)[2]):
            k, bits, _, i = RULE.unpack_from(buf, off)
            if k == key:
                bits &= ~bit
                _INSTALLED.pack_into(buf, off + KEY.size, bits)
            held |= bits
            keys.append(k)
            off += RULE.size + self.params[i].size
        return bytes(buf), held, keys

    def with_bit(self, record: bytes, bit: int, installed: bool) -> tuple[bytes, int]:
        """`record` with PP `bit` set (or cleared) on every rule, and the rules' bits ORed."""
        buf = bytearray(record)
        off, held = _HEAD.size, 0
        for _ in range(_HEAD.unpack_from(buf)[2]):
            _, bits, _, i = RULE.unpack_from(buf, off)
            bits = bits | bit if installed else bits & ~bit
            _INSTALLED.pack_into(buf, off + KEY.size, bits)
            held |= bits
            off += RULE.size + self.params[i].size
        return bytes(buf), held

    def from_packed(self, conn_id: int, slot: int, packed: bytes) -> Connection:
        """Connection `conn_id` of rules packed as SC sends them (`flow_records`), each checked
        against the layout. ValueError says what is wrong."""
        n = self.layout.count_checked(packed)
        return self.unpack(_HEAD.pack(conn_id, slot, n) + packed)

    def unpack(self, record: bytes) -> Connection:
        """The connection of a packed record; its rules build their entries when asked."""
        conn_id, slot, n = _HEAD.unpack_from(record)
        cookie = connection_cookie(conn_id, slot)
        off, rules = _HEAD.size, []
        for _ in range(n):
            key, installed, _, i = RULE.unpack_from(record, off)
            end = off + RULE.size + self.params[i].size
            rules.append(CachedRule.from_record(self, key, installed, record[off:end], cookie))
            off = end
        return Connection(conn_id, slot, rules)

    def _fields(self, packed: bytes) -> tuple[tuple[int, ...], int, int, tuple[int, ...]]:
        """One packed rule (RULE + params) read: its KEY's fields, idle timeout in ms, action
        index and the action's params."""
        key, _, idle_ms, i = RULE.unpack_from(packed)
        return KEY.unpack(key), idle_ms, i, self.params[i].unpack_from(packed, RULE.size)

    def entry_of(self, packed: bytes, cookie: bytes) -> TableEntry:
        """The flow_table entry of one packed rule (RULE + params)."""
        (tenant, src, dst, proto, sport, dport), idle_ms, i, values = self._fields(packed)
        action = self.actions[i]
        return TableEntry(
            FLOW_TABLE,
            {"tenant_id": tenant, "src_addr": src, "dst_addr": dst, "protocol": proto,
             "src_port": sport, "dst_port": dport},
            action.name,
            {p.name: v for p, v in zip(action.params, values, strict=True)},
            idle_timeout_ns=idle_ms * 1_000_000,
            metadata=cookie,
        )  # fmt: skip

    def insert_update(self, rule: CachedRule) -> bytes:
        """A serialized INSERT Update of `rule`, from its packed form when it has one."""
        if not rule.packed:
            return self.encoder.update(p4r.Update.INSERT, rule.entry)
        match, idle_ms, i, params = self._fields(rule.packed)
        return self.encoder.update_of(
            p4r.Update.INSERT, self.actions[i].name, [match[j] for j in self._key_order],
            params, idle_ms * 1_000_000, rule.cookie,
        )  # fmt: skip


class CacheBuilder:
    """Fills a cache from the rules PP nodes hold (a new leader's rebuild), one rule at a time
    as reads stream in, without building objects per rule: each rule's packed bytes go into
    its connection's record, found by connection id while the rebuild lasts."""

    def __init__(self, cache: RuleCache, decoder) -> None:
        self.cache = cache
        self.codec = cache.codec
        self.decoder = decoder  # the flow table's TableDecoder, for rules off the short path
        self._first_key: dict[int, bytes] = {}  # connection id → a key of its record
        self.rules = 0
        self.skipped = 0  # entries FM did not write (no cookie of ours)

    def add(self, te: p4r.TableEntry, pp_index: int) -> None:
        """Add one rule; the usual shape is read from the entry's wire form (a third of the
        time of protobuf's field accessors), anything else field by field."""
        parsed = self.codec.wire.parse(te.SerializeToString())
        packed = None
        if parsed is not None:
            metadata = parsed[4]
            packed = self.codec.rule_bytes_wire(parsed, 1 << pp_index)
        if packed is None:
            metadata = te.metadata
        cookie = parse_cookie(metadata)
        if cookie is None:
            self.skipped += 1
            return
        conn_id, slot = cookie
        key, rule = packed or self.codec.rule_bytes(te, 1 << pp_index, self.decoder)
        first = self._first_key.get(conn_id)
        self.rules += 1
        if first is None:
            self.cache.store([key], _HEAD.pack(conn_id, slot, 1) + rule)
            self._first_key[conn_id] = key
            self.cache.connections += 1
            return
        record = self.codec.with_rule(self.cache.record(first), key, rule)
        self.cache.store(self.codec.record_keys(record), record)

    def finish(self) -> int:
        """The connections rebuilt; the builder's index is dropped."""
        self._first_key.clear()
        return self.cache.connections


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

    def mark(self, conn: Connection, bit: int, installed: bool) -> int | None:
        """Set (or clear) PP `bit` on every rule of the cached copy of `conn`, in its packed
        record, without unpacking it. Returns the rules' bits ORed together, or None when the
        cache holds no connection `conn.conn_id` under its rules' keys."""
        record = self._records.get(conn.rules[0].key)
        if record is None or _HEAD.unpack_from(record)[0] != conn.conn_id:
            return None
        record, held = self.codec.with_bit(record, bit, installed)
        for key in conn.rule_keys():  # a connection's rules are fixed when FM makes it
            self._records[key] = record
        return held

    def uninstall(self, key: bytes, bit: int) -> tuple[int, list[bytes]] | None:
        """PP `bit` no longer holds the rule of `key`: clear it in the cached connection's record,
        without unpacking it. When no PP holds any of the connection's rules any more, the
        connection leaves the cache and its SC slot and rule keys are returned (to release it
        in SC); otherwise, or when no connection has that key, None."""
        record = self._records.get(key)
        if record is None:
            return None
        record, held, keys = self.codec.without_bit(record, key, bit)
        if held:
            for k in keys:
                self._records[k] = record
            return None
        for k in keys:
            self._records.pop(k, None)
        self.connections -= 1
        return _HEAD.unpack_from(record)[1], keys

    def record(self, key: bytes) -> bytes:
        return self._records[key]

    def store(self, keys: list[bytes], record: bytes) -> None:
        """A packed connection record under each of its rule keys (the rebuild's way in)."""
        for key in keys:
            self._records[key] = record

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
