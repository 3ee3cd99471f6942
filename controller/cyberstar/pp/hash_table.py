"""An exact table kept in the slots of a BPF array (xdp/slots.py), served over P4Runtime
without a copy of it.

The kernel's memory is the table: it says whether an entry exists (an INSERT is written as new
only, a MODIFY as existing only, and each refused entry is named), it holds the action, params,
counters and idle state that reads give back, and it is walked a chunk of entries at a time
for reads and idle scans. The agent keeps only what the map cannot give back: the
controller's metadata of each entry (`MetadataStore`), how many entries there are, and per
tenant for quotas. A table of millions of entries costs the agent tens of bytes an entry.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np
from finsy.proto import p4r
from grpc import StatusCode

from cyberstar.codegen.xdp_layout import table_layout
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.exact_wire import ExactWire, KeyedEntry
from cyberstar.p4rt.wire import ExactEntryWriter
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.model import ActionScope, Pipeline, Table
from cyberstar.pp.metadata import MetadataStore
from cyberstar.pp.quota import FlowQuota
from cyberstar.xdp.maps import head_names, key_struct, value_struct
from cyberstar.xdp.program import coarse_now_ns
from cyberstar.xdp.slots import EXIST, NOEXIST, SlotTable, SlotWalk

INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
_HEAD_ARGS = ("action", "packets", "bytes", "last_hit_ns", "idle_timeout_ns")
_INSERT_CODES = {
    errno.EEXIST: (StatusCode.ALREADY_EXISTS, "entry exists"),
    errno.E2BIG: (StatusCode.RESOURCE_EXHAUSTED, "no free slot within reach of the key's hash"),
}
READ_CHUNK = 1000  # entries a read gathers per step
SCAN_CHUNK = 8192  # entries an idle scan reads per step


@dataclass(slots=True)
class HashUpdate:
    """One validated update of a hash table: the key, and what the value is made of."""

    table: str
    index: int  # in the Write batch
    kind: int
    key: bytes
    tenant: int  # the tenant_id key field (quotas), 0 without one
    action: int  # action id; 0: unset (a MODIFY that keeps the action, or a DELETE)
    params: tuple[int, ...]
    idle_timeout_ns: int = 0
    metadata: bytes = b""
    counters: tuple[int, int] | None = None  # counter_data given in the update


@dataclass(frozen=True)
class _Action:
    name: str
    param_widths: tuple[int, ...]
    packer: object  # struct.Struct of the whole value
    head_size: int  # fields of the value head in front of the params
    entry_allowed: bool  # not a default-only action


@dataclass
class IdleScan:
    """Where the walk for idle entries is, and what the last full pass found."""

    walk: SlotWalk | None = None
    shortest_ns: int = 0  # the shortest idle timeout seen (0: no entry has one)
    pass_shortest_ns: int = 0
    inserted_ns: list[int] = field(default_factory=list)  # timeouts written since the pass began
    passes: int = 0
    scanned: int = 0


class HashTable:
    def __init__(
        self, pipeline: Pipeline, table: Table, kmap: SlotTable, prog, quota: FlowQuota | None
    ) -> None:
        self.pipeline = pipeline
        self.table = table
        self.name = table.name
        self.kmap = kmap
        self.prog = prog
        self.quota = quota  # tenants' entries of this table, by its tenant_id key field
        self.count = 0
        self.metadata = MetadataStore(kmap.key_size)
        self.idle = IdleScan()
        self.lay = table_layout(pipeline, table.name)
        self._key, names = key_struct(pipeline, table.name)
        self._key_names = names
        self._to_p4_order = [names.index(k.name) for k in table.key]
        self._tenant = names.index("tenant_id") if quota is not None else -1
        heads = head_names(pipeline, table.name)
        self._head = {name: i for i, name in enumerate(heads)}
        # the value head's fields in struct order, from (action, packets, bytes, last_hit_ns,
        # idle_timeout_ns, 0): a cache of other tables' results (the ACL's) starts empty
        picks = [_HEAD_ARGS.index(n) if n in _HEAD_ARGS else len(_HEAD_ARGS) for n in heads]
        self._head_of = itemgetter(*picks) if len(picks) > 1 else lambda a: (a[picks[0]],)
        self._action_offset = self.lay.value_head.member("action").offset
        self._actions: dict[int, _Action] = {}
        for ref in table.actions:
            packer, aid, params = value_struct(pipeline, table.name, ref.action)
            action = pipeline.action(ref.action)
            widths = {p.name: p.width for p in action.params}
            self._actions[aid] = _Action(
                ref.action, tuple(widths[n] for n in params), packer, len(heads),
                ref.scope is not ActionScope.DEFAULT_ONLY,
            )  # fmt: skip
            assert list(params) == [p.name for p in action.params], "params in spec order"
        # field id → (position in the key struct, width)
        self._fields = {i: (names.index(k.name), k.width) for i, k in enumerate(table.key, start=1)}
        members = {m.name: m for m in self.lay.key.members}
        self._wire = ExactWire(
            table.id,
            [k.width for k in table.key],
            {aid: [*a.param_widths] for aid, a in self._actions.items() if a.entry_allowed},
            (
                self._key.size,
                [(members[k.name].offset, members[k.name].size) for k in table.key],
                [k.name for k in table.key].index("tenant_id") if quota is not None else -1,
            ),
            self._value_layout(),
        )
        self.writer = ExactEntryWriter(
            table.id,
            list(range(1, len(table.key) + 1)),
            {aid: list(range(1, len(a.param_widths) + 1)) for aid, a in self._actions.items()},
        )
        self._now_cols = _head_dtype(self.lay, kmap.value_size)

    def _value_layout(self) -> tuple:
        """The map value as `ExactWire.batch` packs it (see `_value`)."""
        head, lay = self.lay.value_head, self.lay
        action = head.member("action")
        names = {m.name: m.offset for m in head.members}
        params = {}
        for aid, a in self._actions.items():
            members = lay.params[a.name].members
            params[aid] = [(lay.params_offset + m.offset, m.size) for m in members]
        return (lay.value_size, (action.offset, action.size), names.get("last_hit_ns", -1),
                names.get("idle_timeout_ns", -1), params)  # fmt: skip

    def clear(self) -> None:
        self.count = 0
        self.metadata.clear()
        self.idle = IdleScan()

    # ---- writes -------------------------------------------------------------------------------

    def prepare(self, index: int, kind: int, te: p4r.TableEntry) -> HashUpdate | None:
        """The update of a well-formed entry, read straight from the message; None for
        anything else (the caller then decodes it in full, which names what is wrong). The
        common shape is read from the entry's wire form (`ExactWire`), the rest field by
        field; both give the same update (tests/pp/test_exact_wire.py)."""
        parsed = self._wire.parse_key(te.SerializeToString())
        if parsed is not None:
            update = self._from_wire(index, kind, parsed)
            if update is not None:
                return update
        return self.prepare_fields(index, kind, te)

    def prepare_update(self, index: int, upd: p4r.Update) -> HashUpdate | None:
        """`prepare` of a whole Update read from its wire form: None for any Update that is not
        an INSERT, MODIFY or DELETE of a well-formed entry of this table."""
        parsed = self._wire.parse_update(upd.SerializeToString())
        if parsed is None:
            return None
        return self._from_wire(index, parsed[0], parsed[1:])

    def _from_wire(self, index: int, kind: int, parsed: KeyedEntry) -> HashUpdate | None:
        key, tenant, aid, params, idle, metadata = parsed
        if kind == DELETE:
            aid, params = 0, ()
        elif not aid:
            return None
        if idle and (idle >> 63 or not self.table.idle_timeout):
            return None
        return HashUpdate(self.name, index, kind, key, tenant, aid, tuple(params), idle,
                          metadata)  # fmt: skip

    def prepare_fields(self, index: int, kind: int, te: p4r.TableEntry) -> HashUpdate | None:
        """`prepare` through the message's fields, for any field order."""
        fields = self._fields
        values: list = [None] * len(fields)
        for fm in te.match:
            slot = fields.get(fm.field_id)
            data = fm.exact.value
            if slot is None or not data:
                return None
            pos, width = slot
            v = int.from_bytes(data, "big")
            if v >> width or values[pos] is not None:
                return None
            values[pos] = v
        if None in values or te.priority or te.is_default_action or te.is_const:
            return None
        aid, params = 0, ()
        if kind != DELETE:
            a = te.action.action
            aid = a.action_id
            spec = self._actions.get(aid)
            if spec is None or not spec.entry_allowed:
                return (
                    None if aid or kind == INSERT else self._unset_action(index, kind, te, values)
                )
            widths = spec.param_widths
            got: list = [None] * len(widths)
            for param in a.params:
                pid, data = param.param_id - 1, param.value
                if not 0 <= pid < len(widths) or not data or got[pid] is not None:
                    return None
                v = int.from_bytes(data, "big")
                if v >> widths[pid]:
                    return None
                got[pid] = v
            if None in got:
                return None
            params = tuple(got)
        return self._update(index, kind, te, values, aid, params)

    def _unset_action(self, index: int, kind: int, te: p4r.TableEntry, values: list):
        """A MODIFY without an action keeps the entry's action."""
        if te.HasField("action"):
            return None
        return self._update(index, kind, te, values, 0, ())

    def _update(self, index: int, kind: int, te: p4r.TableEntry, values: list, aid: int,
                params: tuple) -> HashUpdate | None:  # fmt: skip
        idle = te.idle_timeout_ns
        if idle and (idle < 0 or not self.table.idle_timeout):
            return None
        if te.HasField("time_since_last_hit"):
            return None
        counters = None
        if te.HasField("counter_data"):
            if self.table.direct_counter is None:
                return None
            counters = (te.counter_data.packet_count, te.counter_data.byte_count)
        tenant = values[self._tenant] if self._tenant >= 0 else 0
        key = self._key.pack(*values)
        return HashUpdate(self.name, index, kind, key, tenant, aid, params, idle, te.metadata,
                          counters)  # fmt: skip

    def from_entry(self, index: int, kind: int, entry: TableEntry,
                   counters: tuple[int, int] | None) -> HashUpdate:  # fmt: skip
        """The update of an entry the full decoder accepted."""
        values = [entry.match[n] for n in self._key_names]
        aid, params = 0, ()
        if entry.action:
            aid = self.pipeline.action(entry.action).id
            params = tuple(entry.params[p.name] for p in self.pipeline.action(entry.action).params)
        tenant = values[self._tenant] if self._tenant >= 0 else 0
        return HashUpdate(self.name, index, kind, self._key.pack(*values), tenant, aid, params,
                          entry.idle_timeout_ns, entry.metadata, counters)  # fmt: skip

    def _value(self, u: HashUpdate, packets: int, nbytes: int, last_hit_ns: int) -> bytes:
        head = self._head_of((u.action, packets, nbytes, last_hit_ns, u.idle_timeout_ns, 0))
        return self._actions[u.action].packer.pack(*head, *u.params)

    def apply(self, group: list[HashUpdate], now: int) -> list[tuple[int, P4RuntimeError]]:
        """Apply updates of distinct keys; deletes first (they make room), then the rest."""
        errors: list[tuple[int, P4RuntimeError]] = []
        deletes = [u for u in group if u.kind == DELETE]
        modifies = [u for u in group if u.kind == MODIFY]
        inserts = [u for u in group if u.kind == INSERT]
        if deletes:
            self._delete(deletes, errors)
        if modifies:
            self._modify(modifies, now, errors)
        if inserts:
            self._insert(inserts, now, errors)
        return errors

    def write_request(self, request: bytes, count: int, now: int
                      ) -> list[tuple[int, P4RuntimeError]] | None:  # fmt: skip
        """`apply` of a whole serialized WriteRequest of `count` Updates, read in one pass of C
        (`ExactWire.batch`) when they are all INSERTs or all DELETEs of well-formed entries of
        this table with distinct keys: the same results as `apply` of each, without a Python
        object per entry. None for any other request (the caller reads it update by update)."""
        b = self._wire.batch(request, now)
        if b is None or b.count != count:
            return None
        errors: list[tuple[int, P4RuntimeError]] = []
        tenants = memoryview(b.tenants).cast("Q")
        if b.kind == DELETE:
            self._delete_packed(b.keys, count, tenants, errors)
            return errors
        admitted = self._admitted(tenants, errors)
        keys, values = b.keys, b.values
        assert values is not None
        if len(admitted) < count:
            ks, vs = self.kmap.key_size, self.kmap.value_size
            keys = b"".join(keys[i * ks : (i + 1) * ks] for i in admitted)
            values = b"".join(values[i * vs : (i + 1) * vs] for i in admitted)
        refused = self._write_packed(keys, values, len(admitted), NOEXIST, _INSERT_CODES)
        failed = {admitted[i] for i, _ in refused}
        errors += [(admitted[i], err) for i, err in refused]
        written = [i for i in admitted if i not in failed] if failed else admitted
        self.count += len(written)
        if self.quota is not None:
            held = tenants if len(written) == count else [tenants[i] for i in written]
            for tenant, n in Counter(held).items():
                self.quota.add(tenant, n)
        if b.meta_positions and len(written) == count:
            self.metadata.put(b.meta_keys, b.meta_values)
        elif b.meta_positions:
            ok = set(written)
            kept = [j for j, i in enumerate(b.meta_positions) if i in ok]
            self.metadata.put([b.meta_keys[j] for j in kept], [b.meta_values[j] for j in kept])
        if b.shortest_idle_ns and written:  # of the whole request: a refused entry's shorter
            self._timeouts_written(b.shortest_idle_ns)  # timeout only paces the scan faster
        return errors

    def _admitted(self, tenants, errors: list) -> list[int]:
        """The positions of the INSERTs of these tenants that the table's room and the tenants'
        quotas admit, in order; each other gets its error in `errors`."""
        room = self.kmap.capacity - self.count
        quota = self.quota
        if room >= len(tenants) and (quota is None or not quota.limited):
            return list(range(len(tenants)))
        by_tenant: Counter[int] = Counter()
        admitted = []
        for i, tenant in enumerate(tenants):
            if room <= 0:
                errors.append((i, self._full()))
                continue
            if quota is not None:
                if not quota.room(tenant, by_tenant[tenant]):
                    errors.append((i, self._over_quota(tenant)))
                    continue
                by_tenant[tenant] += 1
            room -= 1
            admitted.append(i)
        return admitted

    def _insert(self, items: list[HashUpdate], now: int, errors: list) -> None:
        refusals: list[tuple[int, P4RuntimeError]] = []
        accepted = [items[i] for i in self._admitted([u.tenant for u in items], refusals)]
        errors += [(items[i].index, err) for i, err in refusals]
        value = self._value
        values = b"".join(value(u, *(u.counters or (0, 0)), now) for u in accepted)
        written = self._write(accepted, values, NOEXIST, errors, _INSERT_CODES)
        self.count += len(written)
        if self.quota is not None:
            for tenant, n in Counter(u.tenant for u in written).items():
                self.quota.add(tenant, n)
        self._kept(written)

    def _modify(self, items: list[HashUpdate], now: int, errors: list) -> None:
        """MODIFY keeps the counters and idle state unless the update sets them; an unset
        action keeps the action."""
        present, values = [], []
        for u in items:
            raw = self.prog.lookup_raw(self.name, u.key)
            if raw is None:
                errors.append((u.index, P4RuntimeError(StatusCode.NOT_FOUND, self._no_entry)))
                continue
            _, aid, params, head = self._decode(u.key, raw)
            if not u.action:
                u.action, u.params = aid, params
            packets, nbytes = u.counters or (head.get("packets", 0), head.get("bytes", 0))
            values.append(self._value(u, packets, nbytes, head.get("last_hit_ns", now)))
            present.append(u)
        written = self._write(present, b"".join(values), EXIST, errors, {
            errno.ENOENT: (StatusCode.NOT_FOUND, "no such entry"),
        })  # fmt: skip
        self._kept(written, replace_metadata=True)

    def _delete(self, items: list[HashUpdate], errors: list) -> None:
        refusals: list[tuple[int, P4RuntimeError]] = []
        keys = b"".join(u.key for u in items)
        self._delete_packed(keys, len(items), [u.tenant for u in items], refusals)
        errors += [(items[i].index, err) for i, err in refusals]

    def _delete_packed(self, keys: bytes, count: int, tenants, errors: list) -> None:
        """Delete `count` packed keys (of these tenants); each missing one gets its error."""
        ksize, start, deleted = self.kmap.key_size, 0, []
        while start < count:
            n, err = self.kmap.delete(keys, start, count - start)
            deleted += range(start, start + n)
            start += n
            if err:
                code = StatusCode.NOT_FOUND if err == errno.ENOENT else StatusCode.INTERNAL
                message = self._no_entry if err == errno.ENOENT else os.strerror(err)
                errors.append((start, P4RuntimeError(code, message)))
                start += 1
        self.count -= len(deleted)
        if self.quota is not None:
            for tenant, n in Counter(tenants[i] for i in deleted).items():
                self.quota.remove(tenant, n)
        if len(self.metadata):
            self.metadata.remove([keys[i * ksize : (i + 1) * ksize] for i in deleted])

    def _write(self, items: list[HashUpdate], values: bytes, flags: int, errors: list,
               codes: dict[int, tuple[StatusCode, str]]) -> list[HashUpdate]:  # fmt: skip
        """Write `items`; each the kernel refuses gets its error, the others are returned."""
        keys = b"".join(u.key for u in items)
        refused = self._write_packed(keys, values, len(items), flags, codes)
        if not refused:
            return items
        errors += [(items[i].index, err) for i, err in refused]
        failed = {i for i, _ in refused}
        return [u for i, u in enumerate(items) if i not in failed]

    def _write_packed(self, keys: bytes, values: bytes, count: int, flags: int,
                      codes: dict[int, tuple[StatusCode, str]]
                      ) -> list[tuple[int, P4RuntimeError]]:  # fmt: skip
        """Write `count` packed entries; (position, error) of each the kernel refuses."""
        refused = self.kmap.update(keys, values, count, flags)
        out = []
        for i, err in refused:
            code, message = codes.get(err, (StatusCode.INTERNAL, os.strerror(err)))
            out.append((i, P4RuntimeError(code, f"{self.name}: {message}")))
        return out

    def _kept(self, written: list[HashUpdate], replace_metadata: bool = False) -> None:
        """Bookkeeping of entries now in the map: their metadata and idle timeouts."""
        if replace_metadata:
            self.metadata.put([u.key for u in written], [u.metadata for u in written])
        else:
            with_meta = [u for u in written if u.metadata]
            if with_meta:
                self.metadata.put([u.key for u in with_meta], [u.metadata for u in with_meta])
        timeouts = [u.idle_timeout_ns for u in written if u.idle_timeout_ns]
        if timeouts:
            self._timeouts_written(min(timeouts))

    def _timeouts_written(self, shortest: int) -> None:
        """Entries with idle timeouts were written, the shortest `shortest` ns."""
        self.idle.inserted_ns.append(shortest)
        if not self.idle.shortest_ns or shortest < self.idle.shortest_ns:
            self.idle.shortest_ns = shortest

    @property
    def _no_entry(self) -> str:
        return f"{self.name}: no such entry"

    def _full(self) -> P4RuntimeError:
        return P4RuntimeError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"table {self.name} is full ({self.kmap.capacity} entries; pp serve "
            "--flow-table-size sizes it)",
        )

    def _over_quota(self, tenant: int) -> P4RuntimeError:
        assert self.quota is not None
        return P4RuntimeError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"{self.name}: tenant {tenant} holds its quota of {self.quota.limit(tenant)} "
            "entries on this PP node (pp serve --flow-quota)",
        )

    # ---- reads --------------------------------------------------------------------------------

    def _decode(self, key: bytes, value: bytes) -> tuple[tuple, int, tuple, dict[str, int]]:
        """(match in P4 order, action id, params, head fields) of one map entry."""
        raw = self._key.unpack(key)
        match = tuple(raw[i] for i in self._to_p4_order)
        aid = int.from_bytes(value[self._action_offset : self._action_offset + 4], "little")
        spec = self._actions[aid]
        fields = spec.packer.unpack(value)
        head = {name: fields[i] for name, i in self._head.items()}
        return match, aid, fields[spec.head_size :], head

    def read(self, req: p4r.TableEntry, key: bytes | None, counters: bool, idle: bool
             ) -> Iterator[bytes]:  # fmt: skip
        """Serialized `Entity{table_entry}`s: the one under `key`, or every entry (walked in
        chunks). The caller holds the device lock around each step of the iterator."""
        if req.priority or req.is_default_action:
            return
        action = req.action.action.action_id
        if key is not None:
            raw = self.prog.lookup_raw(self.name, key)
            if raw is not None:
                yield from self._entities([key], [raw], action, counters, idle)
            return
        walk = self.kmap.walk(READ_CHUNK)
        ksize, vsize = self.kmap.key_size, self.kmap.value_size
        while not walk.done:
            kraw, vraw, n = walk.next()
            keys = [kraw[i * ksize : (i + 1) * ksize] for i in range(n)]
            values = [vraw[i * vsize : (i + 1) * vsize] for i in range(n)]
            yield from self._entities(keys, values, action, counters, idle)

    def _entities(self, keys: list[bytes], values: list[bytes], action: int, counters: bool,
                  idle: bool) -> Iterator[bytes]:  # fmt: skip
        metas = self.metadata.get(keys) if len(self.metadata) else [b""] * len(keys)
        now = coarse_now_ns() if idle else 0
        has_idle = self.table.idle_timeout
        entity = self.writer.entity
        for key, value, meta in zip(keys, values, metas, strict=True):
            match, aid, params, head = self._decode(key, value)
            if action and aid != action:
                continue
            yield entity(
                match, aid, params,
                head.get("idle_timeout_ns", 0), meta,
                (head["packets"], head["bytes"]) if counters and "packets" in head else None,
                max(0, now - head["last_hit_ns"]) if idle and has_idle else None,
            )  # fmt: skip

    # ---- idle timeouts ------------------------------------------------------------------------

    def scan_idle(self, budget: int, now: int) -> list[bytes]:
        """Go on walking the table for up to `budget` entries: the serialized entries that have
        been idle for their timeout, whose timers are reset (§16.1). A pass that reaches the end
        learns the shortest timeout in the table, and the next pass starts over."""
        scan = self.idle
        if not scan.shortest_ns:
            return []
        if scan.walk is None:
            scan.walk = self.kmap.walk(SCAN_CHUNK)
            scan.pass_shortest_ns = 0
            scan.inserted_ns = []
        expired: list[bytes] = []
        done = 0
        while done < budget and scan.walk is not None:
            kraw, vraw, n = scan.walk.next()
            done += n
            scan.scanned += n
            if n:
                expired += self._expired(kraw, vraw, n, now)
            if scan.walk.done:
                scan.passes += 1
                seen = [t for t in (scan.pass_shortest_ns, *scan.inserted_ns) if t]
                scan.shortest_ns = min(seen, default=0)
                scan.walk = None
        return expired

    def _expired(self, kraw: bytes, vraw: bytes, n: int, now: int) -> list[bytes]:
        cols = np.frombuffer(vraw, dtype=self._now_cols, count=n)
        timeout = cols["idle_timeout_ns"].astype(np.int64)
        with_timeout = timeout > 0
        if not with_timeout.any():
            return []
        shortest = int(timeout[with_timeout].min())
        scan = self.idle
        if not scan.pass_shortest_ns or shortest < scan.pass_shortest_ns:
            scan.pass_shortest_ns = shortest
        idle_for = np.int64(now) - cols["last_hit_ns"].astype(np.int64)
        hits = np.flatnonzero(with_timeout & (idle_for >= timeout))
        if not len(hits):
            return []
        ksize, vsize = self.kmap.key_size, self.kmap.value_size
        keys = [kraw[i * ksize : (i + 1) * ksize] for i in hits.tolist()]
        values = [vraw[i * vsize : (i + 1) * vsize] for i in hits.tolist()]
        entities = list(self._entities(keys, values, 0, False, False))
        self._reset_timers(b"".join(keys), len(keys), now)
        return entities

    def _reset_timers(self, keys: bytes, n: int, now: int) -> None:
        """Last hit = now, for entries still in the table."""
        self.kmap.touch(keys, n, self.lay.value_head.member("last_hit_ns").offset, now)


def _head_dtype(lay, value_size: int) -> np.dtype:
    """A numpy view of the map values: the idle-state fields at their layout offsets."""
    present = {m.name for m in lay.value_head.members}
    names = [n for n in ("last_hit_ns", "idle_timeout_ns") if n in present]
    if len(names) < 2:
        return np.dtype({"names": [], "formats": [], "itemsize": value_size})
    return np.dtype({
        "names": names,
        "formats": ["<u8"] * len(names),
        "offsets": [lay.value_head.member(n).offset for n in names],
        "itemsize": value_size,
    })  # fmt: skip
