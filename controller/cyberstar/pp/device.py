"""The XDP PP node as a P4Runtime device: table state, map writes, reads, packet I/O.

The agent keeps the authoritative list of entries (for existence checks, reads and canonical
read-back); the BPF maps hold what the data plane uses plus the direct counters and the
last-hit times, which reads fetch from the kernel.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from finsy.proto import p4i, p4r
from grpc import StatusCode

from cyberstar.codegen.p4info import build_p4info, canonical_p4info
from cyberstar.codegen.xdp_layout import table_layout
from cyberstar.p4rt.codec import table_entry_to_proto
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.wire import field, varint
from cyberstar.pipeline.entries import TableEntry, match_identity
from cyberstar.pipeline.frames import Punted
from cyberstar.pipeline.meters import MeterConfig
from cyberstar.pipeline.model import IndexedMeter, Pipeline
from cyberstar.pp.quota import FlowQuota
from cyberstar.xdp.maps import encode_key, encode_value
from cyberstar.xdp.program import XdpProgram

log = logging.getLogger(__name__)
CLOCK_MONOTONIC_COARSE = 6  # the clock bpf_ktime_get_coarse_ns reads
READ_CHUNK = 1000  # entities gathered under the lock at a time
ETHERNET_HEADER = 14  # the shortest frame a PacketOut may carry
INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
FLOW_TABLE = "flow_table"  # the table per-tenant quotas apply to (keyed by tenant_id first)


def coarse_now_ns() -> int:
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


@dataclass
class Port:
    number: int
    ifname: str
    ifindex: int
    sock: socket.socket | None = None


@dataclass(slots=True)
class _Pending:
    """One update of a batch, once validated: what to write and where its result goes."""

    index: int
    kind: int
    entry: TableEntry
    key: bytes
    counters: tuple[int, int] | None  # counter_data given in the update


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
        self._exact: dict[str, dict[bytes, TableEntry]] = {}
        self._ternary: dict[str, dict[tuple, tuple[int, TableEntry]]] = {}
        self._defaults: dict[str, TableEntry] = {}
        self._seq = 0
        self._meters = {m.id: m for m in self.pipeline.meters}
        self.run_in_namespace = contextlib.nullcontext
        self.stats = {
            "packet_out": 0,
            "idle_notifications": 0,
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
        self._exact = {t.name: {} for t in self.pipeline.tables if not t.needs_priority}
        self._ternary = {t.name: {} for t in self.pipeline.tables if t.needs_priority}
        self._defaults = {
            t.name: TableEntry(t.name, {}, t.default_action, {}, is_default=True)
            for t in self.pipeline.tables
        }
        self._idle_timeouts: Counter[int] = Counter()
        self._meter_configs: dict[str, dict[int, MeterConfig]] = {
            m.name: {} for m in self.pipeline.meters
        }

    # ---- writes -------------------------------------------------------------------------------

    def write(self, updates: list[p4r.Update]) -> list[P4RuntimeError | None]:
        """One result per update, always. Updates are grouped by table and applied a group at
        a time (one map batch); an update whose entry is already in its table's group (an INSERT
        and a MODIFY of one key, say) first applies the group, so that each update sees the
        ones before it."""
        results: list[P4RuntimeError | None] = [None] * len(updates)
        groups: dict[str, dict[object, _Pending]] = {}
        with self._lock:
            for i, upd in enumerate(updates):
                try:
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
                table = pending.entry.table
                group = groups.setdefault(table, {})
                ident = pending.key if table in self._exact else pending.entry.match_key()
                if ident in group:
                    self._apply(table, group, results)
                group[ident] = pending
            for table, group in groups.items():
                self._apply(table, group, results)
        return results

    def _apply(
        self, table: str, group: dict[object, _Pending], results: list[P4RuntimeError | None]
    ) -> None:
        batch = list(group.values())
        group.clear()
        apply = self._apply_ternary if table in self._ternary else self._apply_exact
        try:
            for index, err in apply(table, batch):
                results[index] = err
        except Exception as exc:  # a bug: these updates fail, the others go on
            log.exception("writing %d updates to %s", len(batch), table)
            for p in batch:
                results[p.index] = P4RuntimeError(StatusCode.INTERNAL, f"{table}: {exc}")

    def _validate(self, index: int, upd: p4r.Update) -> _Pending | None:
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
        key = b"" if t.needs_priority else encode_key(self.pipeline, entry)
        return _Pending(index, upd.type, entry, key, counters)

    def _apply_exact(self, table: str, batch: list[_Pending]) -> list[tuple[int, P4RuntimeError]]:
        store = self._exact[table]
        size = self.pipeline.table(table).size
        errors: list[tuple[int, P4RuntimeError]] = []
        upserts: list[tuple[_Pending, bytes]] = []
        deletes: list[_Pending] = []
        now = coarse_now_ns()
        added: set[bytes] = set()
        new_by_tenant: Counter[int] = Counter()
        for p in batch:
            exists = p.key in store or p.key in added
            if p.kind == INSERT:
                if exists:
                    errors.append(
                        (
                            p.index,
                            P4RuntimeError(StatusCode.ALREADY_EXISTS, f"{table}: entry exists"),
                        )
                    )
                    continue
                if len(store) + len(added) >= size:
                    errors.append(
                        (
                            p.index,
                            P4RuntimeError(
                                StatusCode.RESOURCE_EXHAUSTED, f"table {table} is full ({size})"
                            ),
                        )
                    )
                    continue
                if table == FLOW_TABLE:
                    tenant = p.entry.match["tenant_id"]
                    if not self.quota.room(tenant, new_by_tenant[tenant]):
                        errors.append((p.index, self._over_quota(tenant)))
                        continue
                    new_by_tenant[tenant] += 1
                packets, nbytes = p.counters or (0, 0)
                value = encode_value(self.pipeline, p.entry, packets, nbytes, now)
                added.add(p.key)
                upserts.append((p, value))
            elif not exists:
                errors.append(
                    (p.index, P4RuntimeError(StatusCode.NOT_FOUND, f"{table}: no such entry"))
                )
            elif p.kind == MODIFY:
                upserts.append((p, self._modified_value(table, p, store, now)))
            else:
                deletes.append(p)
        if upserts:
            errors += self._write_upserts(table, upserts)
        if deletes:
            errors += self._write_deletes(table, deletes)
        return errors

    def _over_quota(self, tenant: int) -> P4RuntimeError:
        return P4RuntimeError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"{FLOW_TABLE}: tenant {tenant} holds its quota of {self.quota.limit(tenant)} "
            "entries on this PP node (pp serve --flow-quota)",
        )

    def _modified_value(
        self, table: str, p: _Pending, store: dict[bytes, TableEntry], now: int
    ) -> bytes:
        """MODIFY keeps the counters and idle state unless the update sets them; an unset
        action keeps the action."""
        old = store[p.key]
        entry = p.entry
        if not entry.action:
            entry = replace(entry, action=old.action, params=old.params)
        p.entry = entry
        lay = table_layout(self.pipeline, table)
        raw = self.prog.lookup_raw(table, p.key)
        head = lay.value_head.unpack(raw) if raw else {}
        packets, nbytes = p.counters or (head.get("packets", 0), head.get("bytes", 0))
        return encode_value(self.pipeline, entry, packets, nbytes, head.get("last_hit_ns", now))

    def _write_upserts(
        self, table: str, upserts: list[tuple[_Pending, bytes]]
    ) -> list[tuple[int, P4RuntimeError]]:
        try:
            self.prog.write_raw(
                table, b"".join(p.key for p, _ in upserts), b"".join(v for _, v in upserts),
                len(upserts),
            )  # fmt: skip
        except Exception:
            return self._one_by_one(table, upserts)
        store, idle = self._exact[table], self._idle_timeouts
        for p, _ in upserts:
            if p.kind == INSERT:  # known absent: no old entry to forget
                store[p.key] = p.entry
                if p.entry.idle_timeout_ns:
                    idle[p.entry.idle_timeout_ns] += 1
                if table == FLOW_TABLE:
                    self.quota.add(p.entry.match["tenant_id"])
            else:
                self._store_put(table, p.key, p.entry)
        return []

    def _one_by_one(
        self, table: str, upserts: list[tuple[_Pending, bytes]]
    ) -> list[tuple[int, P4RuntimeError]]:
        """A batch the kernel refused: retry each entry alone, so each gets its own result and
        none is left half-applied."""
        errors = []
        for p, value in upserts:
            try:
                self.prog.write_raw(table, p.key, value, 1)
            except Exception as exc:
                errors.append(
                    (p.index, P4RuntimeError(StatusCode.RESOURCE_EXHAUSTED, f"{table}: {exc}"))
                )
                continue
            self._store_put(table, p.key, p.entry)
        return errors

    def _write_deletes(
        self, table: str, deletes: list[_Pending]
    ) -> list[tuple[int, P4RuntimeError]]:
        try:
            self.prog.delete_raw(table, b"".join(p.key for p in deletes), len(deletes))
        except Exception:
            errors = []
            for p in deletes:
                try:
                    self.prog.delete_raw(table, p.key, 1)
                except Exception as exc:
                    errors.append((p.index, P4RuntimeError(StatusCode.INTERNAL, f"{table}: {exc}")))
                    continue
                self._store_pop(table, p.key)
            return errors
        for p in deletes:
            self._store_pop(table, p.key)
        return []

    def _apply_ternary(self, table: str, batch: list[_Pending]) -> list[tuple[int, P4RuntimeError]]:
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
        self.prog.set_meter(m.name, i, config)
        if config is None:
            self._meter_configs[m.name].pop(i, None)
        else:
            self._meter_configs[m.name][i] = config

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

    def read(self, entity: p4r.Entity) -> Iterator[list[p4r.Entity]]:
        """The entities `entity` asks for, in chunks of at most `READ_CHUNK`; the device lock is
        held while a chunk is gathered, never while the caller sends it."""
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            source = self._read_tables(entity.table_entry)
        elif which == "counter_entry":
            source = self._read_counters(entity.counter_entry)
        elif which == "meter_entry":
            source = self._read_meters(entity.meter_entry)
        elif which == "direct_counter_entry":
            source = self._read_direct_counters(entity.direct_counter_entry)
        else:
            raise P4RuntimeError(StatusCode.UNIMPLEMENTED, f"reading {which} is not supported")
        while True:
            with self._lock:
                chunk = list(itertools.islice(source, READ_CHUNK))
            if not chunk:
                return
            yield chunk

    def _read_direct_counters(self, req: p4r.DirectCounterEntry) -> Iterator[p4r.Entity]:
        for e in self._read_tables(req.table_entry, with_counters=True):
            yield p4r.Entity(
                direct_counter_entry=p4r.DirectCounterEntry(
                    table_entry=e.table_entry, data=e.table_entry.counter_data
                )
            )

    def _read_tables(
        self, req: p4r.TableEntry, with_counters: bool = False
    ) -> Iterator[p4r.Entity]:
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
                yield p4r.Entity(
                    table_entry=table_entry_to_proto(self.pipeline, self._defaults[t.name])
                )
                continue
            for entry, head in self._entries_with_state(t.name, req):
                if req.action.action.action_id and (
                    self.pipeline.action(entry.action).id != req.action.action.action_id
                ):
                    continue
                if req.priority and entry.priority != req.priority:
                    continue
                msg = table_entry_to_proto(self.pipeline, entry)
                if want_counters and t.direct_counter is not None:
                    msg.counter_data.packet_count = head.get("packets", 0)
                    msg.counter_data.byte_count = head.get("bytes", 0)
                if want_idle and t.idle_timeout:
                    msg.time_since_last_hit.elapsed_ns = max(
                        0, coarse_now_ns() - head.get("last_hit_ns", 0)
                    )
                yield p4r.Entity(table_entry=msg)

    def _entries_with_state(
        self, table: str, req: p4r.TableEntry
    ) -> Iterator[tuple[TableEntry, dict[str, int]]]:
        """The table's entries (one, if `req` names a match) with their map state: counters
        and last hit. Exact tables are walked in the kernel map, chunk by chunk, so writes
        between chunks are seen or not but never break the walk."""
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
        store = self._exact[table]
        if len(req.match):
            match = dec.decode_match(req)
            key = encode_key(self.pipeline, TableEntry(table, match, "", {}))
            entry = store.get(key)
            if entry is None:
                return
            raw = self.prog.lookup_raw(table, key)
            yield entry, lay.value_head.unpack(raw) if raw else {}
            return
        for chunk in self.prog.iter_raw(table, READ_CHUNK):
            for key, raw in chunk:
                entry = store.get(key)
                if entry is not None:
                    yield entry, lay.value_head.unpack(raw)

    def _read_counters(self, req: p4r.CounterEntry) -> Iterator[p4r.Entity]:
        counters = self.pipeline.counters
        if req.counter_id:
            counters = tuple(c for c in counters if c.id == req.counter_id)
            if not counters:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"no counter with id {req.counter_id}"
                )
        for c in counters:
            cells = self.prog.counter(c.name)
            if req.HasField("index"):
                if not 0 <= req.index.index < c.size:
                    raise P4RuntimeError(
                        StatusCode.OUT_OF_RANGE,
                        f"counter {c.name} index {req.index.index} not in 0..{c.size - 1}",
                    )
                indices = [req.index.index]
            else:
                indices = range(c.size)
            for i in indices:
                packets, nbytes = cells[i]
                yield p4r.Entity(
                    counter_entry=p4r.CounterEntry(
                        counter_id=c.id,
                        index=p4r.Index(index=i),
                        data=p4r.CounterData(packet_count=packets, byte_count=nbytes),
                    )
                )

    # ---- packet I/O ---------------------------------------------------------------------------

    def packet_outs(self, packets: list[p4r.PacketOut]) -> list[P4RuntimeError | None]:
        """Send PacketOuts in order (in our network namespace once for all); one result each."""
        results: list[P4RuntimeError | None] = []
        with self.run_in_namespace():  # the kernel resolves ingress ifindexes in our netns
            for packet in packets:
                try:
                    self._packet_out(packet)
                except P4RuntimeError as err:
                    results.append(err)
                    continue
                results.append(None)
        return results

    def _packet_out(self, packet: p4r.PacketOut) -> None:
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
        port_no = meta.get("ingress_port" if meta.get("submit_to_ingress") else "egress_port", 0)
        port = self.ports.get(port_no)
        if port is None:
            raise P4RuntimeError(StatusCode.INVALID_ARGUMENT, f"no port {port_no} on this PP node")
        try:
            if meta.get("submit_to_ingress"):
                self.prog.run(packet.payload, ingress_ifindex=port.ifindex)
            else:
                if port.sock is None:
                    raise P4RuntimeError(
                        StatusCode.UNAVAILABLE, f"port {port_no} has no transmit socket"
                    )
                port.sock.send(packet.payload)
        except OSError as exc:
            raise P4RuntimeError(
                StatusCode.UNAVAILABLE, f"PacketOut on port {port_no}: {exc.strerror or exc}"
            ) from None
        self.stats["packet_out"] += 1

    def packet_in(self, punted: Punted) -> bytes:
        """A serialized PacketIn: built as bytes, since the punt path is hot and protobuf
        objects cost more than the whole kernel→agent hop."""
        meta = punted.metadata
        frame = punted.frame
        encoded = self._metadata_bytes(tuple(meta.get(n, 0) for _, n in self._packet_in_fields))
        return b"\x0a" + varint(len(frame)) + frame + encoded  # PacketIn.payload, .metadata

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one device per process, few distinct values
    def _metadata_bytes(self, values: tuple[int, ...]) -> bytes:
        return b"".join(
            field(2, b"\x08" + varint(i) + field(2, _canonical_int(v)))
            for (i, _), v in zip(self._packet_in_fields, values, strict=True)
        )

    # ---- idle timeouts ------------------------------------------------------------------------

    def idle_scan(self) -> list[p4r.StreamMessageResponse]:
        """Entries idle for at least their timeout: one notification per table, and their timers
        reset (P4Runtime §16.1)."""
        out = []
        now = coarse_now_ns()
        with self._lock:
            for t in self.pipeline.tables:
                if not t.idle_timeout or t.name not in self._exact:
                    continue
                store = self._exact[t.name]
                if not any(e.idle_timeout_ns for e in store.values()):
                    continue
                lay = table_layout(self.pipeline, t.name)
                expired = []
                for key, raw in self.prog.dump_raw(t.name, len(store)):
                    entry = store.get(key)
                    if entry is None or not entry.idle_timeout_ns:
                        continue
                    head = lay.value_head.unpack(raw)
                    if now - head["last_hit_ns"] >= entry.idle_timeout_ns:
                        expired.append((key, entry, raw))
                if not expired:
                    continue
                note = p4r.IdleTimeoutNotification(timestamp=time.time_ns())
                for key, entry, raw in expired:
                    note.table_entry.append(table_entry_to_proto(self.pipeline, entry))
                    self.prog.write_raw(t.name, key, _with_last_hit(lay, raw, now), 1)
                self.stats["idle_notifications"] += len(expired)
                out.append(p4r.StreamMessageResponse(idle_timeout_notification=note))
        return out

    def _store_put(self, table: str, key: bytes, entry: TableEntry) -> None:
        self._store_pop(table, key)
        self._exact[table][key] = entry
        if entry.idle_timeout_ns:
            self._idle_timeouts[entry.idle_timeout_ns] += 1
        if table == FLOW_TABLE:
            self.quota.add(entry.match["tenant_id"])

    def _store_pop(self, table: str, key: bytes) -> None:
        old = self._exact[table].pop(key, None)
        if old is None:
            return
        if old.idle_timeout_ns:
            self._idle_timeouts[old.idle_timeout_ns] -= 1
            if not self._idle_timeouts[old.idle_timeout_ns]:
                del self._idle_timeouts[old.idle_timeout_ns]
        if table == FLOW_TABLE:
            self.quota.remove(old.match["tenant_id"])

    def idle_scan_interval(self) -> float | None:
        """How often to scan for idle entries: a quarter of the shortest timeout (0.1 s to 2 s),
        or None when no entry has one."""
        if not self._idle_timeouts:
            return None
        return min(2.0, max(0.1, min(self._idle_timeouts) / 4e9))


def _with_last_hit(lay, raw: bytes, now: int) -> bytes:
    head = lay.value_head.unpack(raw)
    head["last_hit_ns"] = now
    return lay.value_head.pack(head) + raw[lay.value_head.size :]


def _canonical_int(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


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
