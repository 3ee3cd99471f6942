"""The XDP PP node as a P4Runtime device: table state, map writes, reads, packet I/O.

The kernel maps are the tables. A table kept in a BPF hash map (the flow table: millions of
entries) is served from its map alone (`pp/hash_table.py`): existence, reads and idle scans
come from the kernel, and the agent keeps only each entry's controller metadata. Small tables
of other kinds (LPM, ternary) keep their entries in the agent as well, for canonical read-back.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from finsy.proto import p4i, p4r
from grpc import StatusCode

from cyberstar.codegen.p4info import build_p4info, canonical_p4info
from cyberstar.codegen.xdp_layout import table_layout
from cyberstar.p4rt import wire
from cyberstar.p4rt.codec import table_entry_to_proto
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.entries import TableEntry, match_identity
from cyberstar.pipeline.frames import Punted
from cyberstar.pipeline.meters import MeterConfig
from cyberstar.pipeline.model import IndexedMeter, Pipeline
from cyberstar.pp.hash_table import HashTable, HashUpdate
from cyberstar.pp.quota import FlowQuota
from cyberstar.pp.ratelimit import RatePolicy
from cyberstar.pp.tenants import TENANT_CREDIT, TENANT_CREDIT_ID, credit_entities
from cyberstar.xdp.maps import encode_key, encode_value
from cyberstar.xdp.program import XdpProgram, coarse_now_ns

log = logging.getLogger(__name__)
READ_CHUNK = 1000  # entities gathered under the lock at a time
ETHERNET_HEADER = 14  # the shortest frame a PacketOut may carry
INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
FLOW_TABLE = "flow_table"  # the table per-tenant quotas apply to (keyed by tenant_id)


@dataclass(slots=True)
class Pending:
    """One update of a small or ternary table, once validated."""

    index: int
    kind: int
    entry: TableEntry
    key: bytes
    counters: tuple[int, int] | None  # counter_data given in the update

    @property
    def table(self) -> str:
        return self.entry.table


@dataclass
class Port:
    number: int
    ifname: str
    ifindex: int
    sock: socket.socket | None = None


class XdpDevice:
    """Implements the device side of `cyberstar.p4rt.server.P4RuntimeServer`."""

    def __init__(self, prog: XdpProgram, ports: list[Port], quota: FlowQuota | None = None) -> None:
        self.prog = prog
        self.quota = quota or FlowQuota()
        self.quota.on_full = prog.set_tenant_over_quota
        self.pipeline: Pipeline = prog.pipeline
        self.decoder = PipelineDecoder(self.pipeline)
        self.p4info: p4i.P4Info = build_p4info(self.pipeline)
        self.ports = {p.number: p for p in ports}
        self._packet_in_fields = [
            (i, f.name) for i, f in enumerate(self.pipeline.packet_in.fields, start=1)
        ]
        self._lock = threading.RLock()
        self._hash: dict[str, HashTable] = {}
        self._hash_by_id: dict[int, HashTable] = {}
        for t in self.pipeline.tables:
            kmap = None if t.needs_priority or t.lpm_field else prog.hash_map(t.name)
            if kmap is not None:
                quota_of = self.quota if t.name == FLOW_TABLE else None
                table = HashTable(self.pipeline, t, kmap, prog, quota_of)
                self._hash[t.name] = self._hash_by_id[t.id] = table
        self._entries: dict[str, dict[bytes, TableEntry]] = {}  # other exact tables (LPM)
        self._ternary: dict[str, dict[tuple, tuple[int, TableEntry]]] = {}
        self._defaults: dict[str, TableEntry] = {}
        self._seq = 0
        self._meters = {m.id: m for m in self.pipeline.meters}
        self.run_in_namespace = contextlib.nullcontext
        self.rate_policy: RatePolicy | None = None  # the agent's, when it runs one
        self.stats = {
            "packet_out": 0,
            "idle_notifications": 0,
            "writes_read_whole": 0,  # Writes read in one pass of C (HashTable.write_request)
        }
        self._reset_state()

    # ---- pipeline -----------------------------------------------------------------------------

    def verify_config(self, config: p4r.ForwardingPipelineConfig) -> None:
        """Only the pipeline this agent runs can be set: the generated P4Info, with an empty
        device config or the generated XDP C."""
        ours = self.p4info
        theirs = config.p4info
        if canonical_p4info(theirs) != canonical_p4info(ours):
            raise P4RuntimeError(StatusCode.INVALID_ARGUMENT, _p4info_difference(ours, theirs))
        blob = config.p4_device_config
        if blob and blob.strip() != _program_source(self.prog).strip():
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT,
                "p4_device_config must be empty or the generated ebpf/pp_xdp.c this agent runs",
            )

    def commit(self, reconcile: bool) -> None:
        """A new pipeline starts empty; RECONCILE_AND_COMMIT of the same one keeps the state."""
        if not reconcile:
            with self._lock:
                self.prog.clear()
                self._reset_state()
                self.quota.clear()

    def _reset_state(self) -> None:
        for table in self._hash.values():
            table.clear()
        self._entries = {
            t.name: {}
            for t in self.pipeline.tables
            if not t.needs_priority and t.name not in self._hash
        }
        self._ternary = {t.name: {} for t in self.pipeline.tables if t.needs_priority}
        self._defaults = {
            t.name: TableEntry(t.name, {}, t.default_action, {}, is_default=True)
            for t in self.pipeline.tables
        }
        self._meter_configs: dict[str, dict[int, MeterConfig]] = {
            m.name: {} for m in self.pipeline.meters
        }

    # ---- writes -------------------------------------------------------------------------------

    def write(self, updates: list[p4r.Update], request: bytes | None = None
              ) -> list[P4RuntimeError | None]:  # fmt: skip
        """One result per update, always. Updates are grouped by table and applied a group at
        a time (one map batch); an update whose entry is already in its table's group (an INSERT
        and a MODIFY of one key, say) first applies the group, so that each update sees the
        ones before it. `request`: the serialized WriteRequest the updates came in, which a
        batch of flow-table INSERTs or DELETEs is read from whole (`HashTable.write_request`)."""
        results: list[P4RuntimeError | None] = [None] * len(updates)
        groups: dict[str, dict[object, Pending | HashUpdate]] = {}
        # one hash table (the flow table): its updates are read from their wire form first
        flows = next(iter(self._hash.values())) if len(self._hash) == 1 else None
        wire = flows.prepare_update if flows is not None else None
        with self._lock:
            if request is not None and flows is not None:
                try:
                    errors = flows.write_request(request, len(updates), coarse_now_ns())
                except Exception as exc:  # a bug: these updates fail
                    errors = _failed(flows.name, range(len(updates)), exc)
                if errors is not None:
                    self.stats["writes_read_whole"] += 1
                    for index, err in errors:
                        results[index] = err
                    return results
            for i, upd in enumerate(updates):
                try:
                    pending = wire(i, upd) if wire is not None else None
                    if pending is None:
                        pending = self._validate(i, upd)
                except P4RuntimeError as err:
                    results[i] = err
                    continue
                except Exception as exc:  # a bug: this update fails, the others go on
                    log.exception("validating update %d", i)
                    results[i] = P4RuntimeError(StatusCode.INTERNAL, f"update {i}: {exc}")
                    continue
                if pending is None:
                    continue
                table = pending.table
                group = groups.setdefault(table, {})
                ident = pending.key if table not in self._ternary else pending.entry.match_key()
                if ident in group:
                    self._apply(table, group, results)
                group[ident] = pending
            for table, group in groups.items():
                self._apply(table, group, results)
        return results

    def write_if_idle(self, updates: list[p4r.Update], request: bytes | None = None
                      ) -> list[P4RuntimeError | None] | None:  # fmt: skip
        """`write`, unless another thread holds the device (a Read, an idle scan): None."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.write(updates, request)
        finally:
            self._lock.release()

    def _apply(
        self,
        table: str,
        group: dict[object, Pending | HashUpdate],
        results: list[P4RuntimeError | None],
    ) -> None:
        batch = list(group.values())
        group.clear()
        try:
            if table in self._hash:
                errors = self._hash[table].apply(batch, coarse_now_ns())
            elif table in self._ternary:
                errors = self._apply_ternary(table, batch)
            else:
                errors = self._apply_small(table, batch)
        except Exception as exc:  # a bug: these updates fail, the others go on
            errors = _failed(table, [p.index for p in batch], exc)
        for index, err in errors:
            results[index] = err

    def _validate(self, index: int, upd: p4r.Update) -> Pending | HashUpdate | None:
        entity = upd.entity
        which = entity.WhichOneof("entity")
        if which == "meter_entry":
            self._write_meter(upd)
            return None
        if which != "table_entry":
            raise P4RuntimeError(
                StatusCode.UNIMPLEMENTED, f"writing {which} is not supported by this target"
            )
        msg = entity.table_entry
        if upd.type not in (INSERT, MODIFY, DELETE):
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, "update type must be INSERT, MODIFY or DELETE"
            )
        hashed = self._hash_by_id.get(msg.table_id)
        if hashed is not None:
            update = hashed.prepare(index, upd.type, msg)  # the common case, straight
            if update is not None:
                return update
        dec = self.decoder.table(msg.table_id)
        t = dec.table
        entry = dec.decode(msg, kind=upd.type)
        counters = None
        if msg.HasField("counter_data"):
            if t.direct_counter is None:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"table {t.name} has no direct counter"
                )
            counters = (msg.counter_data.packet_count, msg.counter_data.byte_count)
        if entry.is_default:
            if upd.type != MODIFY:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, "the default entry can only be modified (MODIFY)"
                )
            if not entry.action:  # an unset action resets the default to the program's
                entry = replace(entry, action=t.default_action, params={})
            self.prog.write_default(entry)
            self._defaults[t.name] = entry
            return None
        if hashed is not None:
            return hashed.from_entry(index, upd.type, entry, counters)
        key = b"" if t.needs_priority else encode_key(self.pipeline, entry)
        return Pending(index, upd.type, entry, key, counters)

    def _apply_small(self, table: str, batch: list[Pending]) -> list[tuple[int, P4RuntimeError]]:
        """An exact table of another kind (an LPM trie): its entries are kept here too, for
        existence checks and canonical reads; each is written to the kernel on its own."""
        store = self._entries[table]
        size = self.pipeline.table(table).size
        errors: list[tuple[int, P4RuntimeError]] = []
        for p in batch:
            old = store.get(p.key)
            if p.kind == INSERT and old is not None:
                errors.append(
                    (p.index, _error(StatusCode.ALREADY_EXISTS, f"{table}: entry exists"))
                )
            elif p.kind == INSERT and len(store) >= size:
                errors.append(
                    (p.index, _error(StatusCode.RESOURCE_EXHAUSTED, f"table {table} is full"))
                )
            elif p.kind != INSERT and old is None:
                errors.append((p.index, _error(StatusCode.NOT_FOUND, f"{table}: no such entry")))
            elif p.kind == DELETE:
                self.prog.delete_raw(table, p.key, 1)
                del store[p.key]
            else:
                entry, packets, nbytes = p.entry, *(p.counters or (0, 0))
                if old is not None:  # MODIFY keeps the counters, and the action when unset
                    if not entry.action:
                        entry = replace(entry, action=old.action, params=old.params)
                    head = table_layout(self.pipeline, table).value_head.unpack(
                        self.prog.lookup_raw(table, p.key) or bytes(64)
                    )
                    packets, nbytes = p.counters or (head.get("packets", 0), head.get("bytes", 0))
                value = encode_value(self.pipeline, entry, packets, nbytes)
                self.prog.write_raw(table, p.key, value, 1)
                store[p.key] = entry
        return errors

    def _apply_ternary(self, table: str, batch: list[Pending]) -> list[tuple[int, P4RuntimeError]]:
        """The batch applied to a copy of the table's entries, published, and only then kept:
        if publishing fails, the agent's view stays what the kernel has."""
        store = dict(self._ternary[table])
        size = self.pipeline.table(table).size
        errors: list[tuple[int, P4RuntimeError]] = []
        for p in batch:
            ident = p.entry.match_key()
            if p.kind == INSERT:
                if ident in store:
                    errors.append(
                        (
                            p.index,
                            P4RuntimeError(StatusCode.ALREADY_EXISTS, f"{table}: entry exists"),
                        )
                    )
                elif len(store) >= size:
                    errors.append(
                        (
                            p.index,
                            P4RuntimeError(
                                StatusCode.RESOURCE_EXHAUSTED, f"table {table} is full ({size})"
                            ),
                        )
                    )
                else:
                    self._seq += 1
                    store[ident] = (self._seq, p.entry)
            elif ident not in store:
                errors.append(
                    (p.index, P4RuntimeError(StatusCode.NOT_FOUND, f"{table}: no such entry"))
                )
            elif p.kind == MODIFY:
                seq, old = store[ident]
                entry = (
                    p.entry
                    if p.entry.action
                    else replace(p.entry, action=old.action, params=old.params)
                )
                store[ident] = (seq, entry)
            else:
                del store[ident]
        counters = self._ternary_counters(table)
        ordered = [e for _, e in sorted(store.values(), key=lambda se: (-se[1].priority, se[0]))]
        self.prog.publish_ternary(table, ordered, counters)
        self._ternary[table] = store
        return errors

    def _ternary_counters(self, table: str) -> dict[tuple, tuple[int, int]]:
        """Direct counters of the published entries, by entry identity (to carry them over)."""
        lay = table_layout(self.pipeline, table)
        out = {}
        for entry, raw in zip(
            self.prog.ternary_entries(table), self.prog.ternary_raw(table), strict=True
        ):
            head = lay.value_head.unpack(raw[self.prog.ternary_value_offset(table) :])
            out[entry.match_key()] = (head.get("packets", 0), head.get("bytes", 0))
        return out

    def _meter(self, meter_id: int) -> IndexedMeter:
        if meter_id not in self._meters:
            raise P4RuntimeError(StatusCode.NOT_FOUND, f"no meter with id {meter_id}")
        return self._meters[meter_id]

    def _write_meter(self, upd: p4r.Update) -> None:
        """MeterEntry: MODIFY one cell's configuration; without a config, reset the cell to
        never configured (green)."""
        me = upd.entity.meter_entry
        if upd.type != MODIFY:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, "meter entries can only be modified (MODIFY)"
            )
        m = self._meter(me.meter_id)
        if not me.HasField("index"):
            raise P4RuntimeError(StatusCode.INVALID_ARGUMENT, f"meter {m.name}: give an index")
        i = me.index.index
        if not 0 <= i < m.size:
            raise P4RuntimeError(
                StatusCode.OUT_OF_RANGE, f"meter {m.name} index {i} not in 0..{m.size - 1}"
            )
        config = None
        if me.HasField("config"):
            c = me.config
            config = MeterConfig(c.cir, c.cburst, c.pir, c.pburst)
            if min(c.cir, c.cburst, c.pir, c.pburst) < 0 or c.cir > c.pir:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT,
                    f"meter {m.name}: rates and bursts must be >= 0 and cir <= pir, found {c}",
                )
        self.set_meter_cell(m.name, i, config)

    def set_meter_cell(self, meter: str, index: int, config: MeterConfig | None) -> None:
        """Configure one meter cell in the program and in what MeterEntry reads answer: for
        the controller's writes and for the agent's rate policy alike."""
        with self._lock:
            self.prog.set_meter(meter, index, config)
            if config is None:
                self._meter_configs[meter].pop(index, None)
            else:
                self._meter_configs[meter][index] = config

    def _read_meters(self, req: p4r.MeterEntry) -> Iterator[p4r.Entity]:
        meters = [self._meter(req.meter_id)] if req.meter_id else list(self._meters.values())
        for m in meters:
            if req.HasField("index"):
                if not 0 <= req.index.index < m.size:
                    raise P4RuntimeError(
                        StatusCode.OUT_OF_RANGE,
                        f"meter {m.name} index {req.index.index} not in 0..{m.size - 1}",
                    )
                indices: Iterable[int] = [req.index.index]
            else:
                indices = range(m.size)
            configs = self._meter_configs[m.name]
            for i in indices:
                out = p4r.MeterEntry(meter_id=m.id, index=p4r.Index(index=i))
                if (c := configs.get(i)) is not None:
                    out.config.CopyFrom(
                        p4r.MeterConfig(cir=c.cir, cburst=c.cburst, pir=c.pir, pburst=c.pburst)
                    )
                yield p4r.Entity(meter_entry=out)

    # ---- reads --------------------------------------------------------------------------------

    def read(self, entity: p4r.Entity) -> Iterator[bytes]:
        """Serialized ReadResponses of at most `READ_CHUNK` entities; the device lock is held
        while a chunk is gathered, never while the caller sends it."""
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            source = self._read_tables(entity.table_entry)
        elif which == "counter_entry":
            source = (e.SerializeToString() for e in self._read_counters(entity.counter_entry))
        elif which == "meter_entry":
            source = (e.SerializeToString() for e in self._read_meters(entity.meter_entry))
        elif which == "direct_counter_entry":
            source = self._read_direct_counters(entity.direct_counter_entry)
        elif which == "extern_entry":
            source = self._read_externs(entity.extern_entry)
        else:
            raise P4RuntimeError(StatusCode.UNIMPLEMENTED, f"reading {which} is not supported")
        while True:
            with self._lock:
                chunk = list(itertools.islice(source, READ_CHUNK))
            if not chunk:
                return
            yield wire.read_response(chunk)

    def _read_externs(self, req: p4r.ExternEntry) -> Iterator[bytes]:
        """The one extern this node serves: its rate policy's tenants (`pp/tenants.py`)."""
        if req.extern_type_id != TENANT_CREDIT:
            raise P4RuntimeError(
                StatusCode.NOT_FOUND,
                f"no extern type {req.extern_type_id:#x}: this node serves only the tenant "
                f"credit extern {TENANT_CREDIT:#x}",
            )
        if req.extern_id not in (0, TENANT_CREDIT_ID):
            raise P4RuntimeError(
                StatusCode.NOT_FOUND, f"no tenant credit extern with id {req.extern_id:#x}"
            )
        if self.rate_policy is not None:
            for e in credit_entities(self.rate_policy):
                yield e.SerializeToString()

    def _read_direct_counters(self, req: p4r.DirectCounterEntry) -> Iterator[bytes]:
        for raw in self._read_tables(req.table_entry, with_counters=True):
            te = p4r.Entity.FromString(raw).table_entry
            data = p4r.CounterData()
            data.CopyFrom(te.counter_data)
            te.ClearField("counter_data")  # the counts go in `data` only, as bmv2 answers
            yield p4r.Entity(
                direct_counter_entry=p4r.DirectCounterEntry(table_entry=te, data=data)
            ).SerializeToString()

    def _read_tables(self, req: p4r.TableEntry, with_counters: bool = False) -> Iterator[bytes]:
        """Serialized `Entity{table_entry}`s of the tables `req` names, as it filters them."""
        if req.table_id == 0:
            tables = self.pipeline.tables
        else:
            tables = (self.decoder.table(req.table_id).table,)
        want_counters = with_counters or req.HasField("counter_data")
        want_idle = req.HasField("time_since_last_hit")
        for t in tables:
            if want_counters and t.direct_counter is None and req.table_id:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"table {t.name} has no direct counter"
                )
            if req.is_default_action:
                entry = table_entry_to_proto(self.pipeline, self._defaults[t.name])
                yield p4r.Entity(table_entry=entry).SerializeToString()
                continue
            counters = want_counters and t.direct_counter is not None
            if t.name in self._hash:
                key = self._request_key(t.name, req) if len(req.match) else None
                yield from self._hash[t.name].read(req, key, counters, want_idle)
                continue
            for entry, head in self._entries_with_state(t.name, req):
                if req.action.action.action_id and (
                    self.pipeline.action(entry.action).id != req.action.action.action_id
                ):
                    continue
                if req.priority and entry.priority != req.priority:
                    continue
                msg = table_entry_to_proto(self.pipeline, entry)
                if counters:
                    msg.counter_data.packet_count = head.get("packets", 0)
                    msg.counter_data.byte_count = head.get("bytes", 0)
                if want_idle and t.idle_timeout:
                    msg.time_since_last_hit.elapsed_ns = max(
                        0, coarse_now_ns() - head.get("last_hit_ns", 0)
                    )
                yield p4r.Entity(table_entry=msg).SerializeToString()

    def _request_key(self, table: str, req: p4r.TableEntry) -> bytes:
        match = self.decoder.table(self.pipeline.table(table).id).decode_match(req)
        return encode_key(self.pipeline, TableEntry(table, match, "", {}))

    def direct_counters(self, table: str) -> list[tuple[TableEntry, int, int]]:
        """Every entry of `table` with its direct counter: (entry, packets, bytes)."""
        with self._lock:
            rows = list(self._entries_with_state(table, p4r.TableEntry()))
        return [(e, head.get("packets", 0), head.get("bytes", 0)) for e, head in rows]

    def _entries_with_state(
        self, table: str, req: p4r.TableEntry
    ) -> Iterator[tuple[TableEntry, dict[str, int]]]:
        """The entries of a table kept here (one, if `req` names a match) with their map
        state: counters and last hit."""
        lay = table_layout(self.pipeline, table)
        dec = self.decoder.table(self.pipeline.table(table).id)
        if table in self._ternary:
            off = self.prog.ternary_value_offset(table)
            heads = {
                e.match_key(): lay.value_head.unpack(raw[off:])
                for e, raw in zip(
                    self.prog.ternary_entries(table), self.prog.ternary_raw(table), strict=True
                )
            }
            entries = [e for _, e in self._ternary[table].values()]
            if len(req.match):
                wanted = match_identity(dec.decode_match(req), req.priority)
                entries = [e for e in entries if e.match_key() == wanted]
            for e in entries:
                yield e, heads.get(e.match_key(), {})
            return
        store = self._entries[table]
        keys = [self._request_key(table, req)] if len(req.match) else list(store)
        for key in keys:
            entry = store.get(key)
            if entry is not None:
                raw = self.prog.lookup_raw(table, key)
                yield entry, lay.value_head.unpack(raw) if raw else {}

    def _read_counters(self, req: p4r.CounterEntry) -> Iterator[p4r.Entity]:
        counters = self.pipeline.counters
        if req.counter_id:
            counters = tuple(c for c in counters if c.id == req.counter_id)
            if not counters:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"no counter with id {req.counter_id}"
                )
        for c in counters:
            if req.HasField("index"):
                i = req.index.index
                if not 0 <= i < c.size:
                    raise P4RuntimeError(
                        StatusCode.OUT_OF_RANGE,
                        f"counter {c.name} index {i} not in 0..{c.size - 1}",
                    )
                cells = {i: self.prog.counter_cell(c.name, i)}  # one cell, not the whole map
            else:
                cells = dict(enumerate(self.prog.counter(c.name)))
            for i, (packets, nbytes) in cells.items():
                yield p4r.Entity(
                    counter_entry=p4r.CounterEntry(
                        counter_id=c.id,
                        index=p4r.Index(index=i),
                        data=p4r.CounterData(packet_count=packets, byte_count=nbytes),
                    )
                )

    # ---- packet I/O ---------------------------------------------------------------------------

    def packet_outs_if_bounded(self, packets: list[p4r.PacketOut]
                               ) -> list[P4RuntimeError | None] | None:  # fmt: skip
        """`packet_outs` when every packet enters the pipeline (a test run: the kernel's own
        work, it does not wait); None, sending nothing, when one is for a port's socket, whose
        send may wait for a congested port."""
        targets = [self._packet_out_target(p) for p in packets]
        if any(not isinstance(t, P4RuntimeError) and not t[2] for t in targets):
            return None
        return self._send_packets(targets)

    def packet_outs(self, packets: list[p4r.PacketOut]) -> list[P4RuntimeError | None]:
        """Send PacketOuts in order (in our network namespace once for all); one result each.
        Consecutive ones to the pipeline's ingress go through the program in one call."""
        return self._send_packets([self._packet_out_target(p) for p in packets])

    def _send_packets(self, targets: list[tuple[bytes, Port, bool] | P4RuntimeError]
                      ) -> list[P4RuntimeError | None]:  # fmt: skip
        results: list[P4RuntimeError | None] = [None] * len(targets)
        ingress: list[tuple[int, bytes, Port]] = []  # (position, frame, port), not yet run
        with self.run_in_namespace():  # the kernel resolves ingress ifindexes in our netns
            for i, target in enumerate(targets):
                if isinstance(target, P4RuntimeError):
                    results[i] = target
                    continue
                payload, port, to_ingress = target
                if to_ingress:
                    ingress.append((i, payload, port))
                    continue
                self._run_ingress(ingress, results)
                ingress = []
                results[i] = self._send(port, payload)
            self._run_ingress(ingress, results)
        return results

    def _packet_out_target(self, packet: p4r.PacketOut
                           ) -> tuple[bytes, Port, bool] | P4RuntimeError:  # fmt: skip
        """A PacketOut's frame, its port, and whether it enters the pipeline there; or why it
        cannot be sent."""
        try:
            return self._target(packet)
        except P4RuntimeError as err:
            return err

    def _target(self, packet: p4r.PacketOut) -> tuple[bytes, Port, bool]:
        size, limit = len(packet.payload), self.pipeline.constants["MAX_FRAME"]
        if not ETHERNET_HEADER <= size <= limit:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT,
                f"PacketOut payload of {size} bytes: a frame is {ETHERNET_HEADER}..{limit} bytes "
                "(the pipeline's MAX_FRAME)",
            )
        meta_fields = self.pipeline.packet_out.fields
        meta = {}
        for m in packet.metadata:
            if not 0 < m.metadata_id <= len(meta_fields):
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"no packet_out metadata id {m.metadata_id}"
                )
            f = meta_fields[m.metadata_id - 1]
            meta[f.name] = int.from_bytes(m.value, "big") if m.value else 0
        to_ingress = bool(meta.get("submit_to_ingress"))
        if to_ingress and size > self.prog.live_frame_limit:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT,
                f"PacketOut into the pipeline (submit_to_ingress) of {size} bytes: this "
                f"kernel's live-frames test runs take at most {self.prog.live_frame_limit} "
                "(MAX_FRAME less the page header the kernel keeps); send it out of a port "
                "(egress_port) instead",
            )
        port_no = meta.get("ingress_port" if to_ingress else "egress_port", 0)
        port = self.ports.get(port_no)
        if port is None:
            raise P4RuntimeError(StatusCode.INVALID_ARGUMENT, f"no port {port_no} on this PP node")
        if not to_ingress and port.sock is None:
            raise P4RuntimeError(StatusCode.UNAVAILABLE, f"port {port_no} has no transmit socket")
        return packet.payload, port, to_ingress

    def _run_ingress(self, pending: list[tuple[int, bytes, Port]],
                     results: list[P4RuntimeError | None]) -> None:  # fmt: skip
        if not pending:
            return
        errnos = self.prog.run_live([f for _, f, _ in pending], [p.ifindex for _, _, p in pending])
        for (i, _, port), err in zip(pending, errnos, strict=True):
            if err:
                results[i] = _unavailable(port.number, f"BPF_PROG_TEST_RUN failed: "
                                                       f"{os.strerror(err)}")  # fmt: skip
            else:
                self.stats["packet_out"] += 1

    def _send(self, port: Port, payload: bytes) -> P4RuntimeError | None:
        try:
            port.sock.send(payload)
        except OSError as exc:
            return _unavailable(port.number, exc.strerror or str(exc))
        self.stats["packet_out"] += 1
        return None

    def packet_in(self, punted: Punted) -> bytes:
        """A serialized PacketIn: built as bytes, since the punt path is hot and protobuf
        objects cost more than the whole kernel→agent hop."""
        meta = punted.metadata
        frame = punted.frame
        encoded = self._metadata_bytes(tuple(meta.get(n, 0) for _, n in self._packet_in_fields))
        return wire.field(1, frame) + encoded  # PacketIn.payload, .metadata

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one device per process, few distinct values
    def _metadata_bytes(self, values: tuple[int, ...]) -> bytes:
        return b"".join(
            wire.field(2, wire.tag(1, 0) + wire.varint(i) + wire.field(2, wire.canonical(v)))
            for (i, _), v in zip(self._packet_in_fields, values, strict=True)
        )

    # ---- idle timeouts ------------------------------------------------------------------------

    def idle_scan(self, budget: int) -> list[bytes]:
        """Serialized IdleTimeoutNotifications (one per table) for entries idle for their
        timeout, found in the next `budget` entries of each table's walk (§16.1)."""
        out = []
        now = coarse_now_ns()
        for table in self._hash.values():
            with self._lock:
                expired = table.scan_idle(budget, now)
            if expired:
                self.stats["idle_notifications"] += len(expired)
                out.append(wire.idle_timeout_notification(expired, time.time_ns()))
        return out

    def idle_pass_s(self) -> float | None:
        """How long a full pass over the tables may take so that notifications come on time:
        a quarter of the shortest idle timeout (0.1 s to 30 s), or None when no entry has one."""
        shortest = min((t.idle.shortest_ns for t in self._hash.values() if t.idle.shortest_ns),
                       default=0)  # fmt: skip
        return min(30.0, max(0.1, shortest / 4e9)) if shortest else None

    def idle_stats(self) -> dict[str, int]:
        """Entries the idle scans walked and full passes they made, since the start."""
        tables = self._hash.values()
        return {
            "idle_scanned_entries": sum(t.idle.scanned for t in tables),
            "idle_passes": sum(t.idle.passes for t in tables),
        }

    def idle_entries(self) -> int:
        """Entries an idle pass walks."""
        return sum(t.count for t in self._hash.values() if t.idle.shortest_ns)


def _error(code: StatusCode, message: str) -> P4RuntimeError:
    return P4RuntimeError(code, message)


def _p4info_difference(ours: p4i.P4Info, theirs: p4i.P4Info) -> str:
    mine = {o.preamble.name: o.preamble.id for g in (ours.tables, ours.actions) for o in g}
    given = {o.preamble.name: o.preamble.id for g in (theirs.tables, theirs.actions) for o in g}
    missing = sorted(set(mine) - set(given))
    extra = sorted(set(given) - set(mine))
    moved = sorted(n for n in set(mine) & set(given) if mine[n] != given[n])
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unknown {', '.join(extra)}")
    if moved:
        parts.append(f"different ids for {', '.join(moved)}")
    detail = "; ".join(parts) or "fields, widths or sizes differ"
    return f"this XDP PP node serves only the cyberstar pipeline (p4src/pp.p4info.txtpb): {detail}"


def _program_source(prog: XdpProgram) -> bytes:
    return prog.source.encode()


def _failed(table: str, indices: Sequence[int], exc: Exception) -> list[tuple[int, P4RuntimeError]]:
    """A bug while writing these updates of `table`: logged once, each answered INTERNAL."""
    log.exception("writing %d updates to %s", len(indices), table)
    return [(i, P4RuntimeError(StatusCode.INTERNAL, f"{table}: {exc}")) for i in indices]


def _unavailable(port_no: int, why: str) -> P4RuntimeError:
    return P4RuntimeError(StatusCode.UNAVAILABLE, f"PacketOut on port {port_no}: {why}")
