"""The slow path (paper §3.2, §5.1): PacketIn → rules → Write → PacketOut, batched.

Punted first packets are collected for up to `max_delay` or `max_batch` packets. Each is answered
from the rule cache when FM knows its flow (a restarted PP, a new PP in the ECMP group, a flow
moved by ECMP); otherwise one request per flow goes to the SC group that owns it (packets of a
flow already asked about wait for that answer instead of asking again). Rules are written to the
PP that punted, in one batch per PP, and the packets are sent back through its pipeline.
Idle-timeout notifications delete the idle rule from that PP; a connection is released in SC
only when no PP holds any of its rules.

Punts wait in a queue shared fairly between tenants (`fairqueue.py`): bounded per tenant and in
total, served round robin, so one tenant's flood of new flows delays another tenant's first
packets by at most one batch. A connection whose rules could not be written is kept as an
orphan (released in SC after its idle timeout unless its flow punts again), and a request SC
did not answer is forgotten, so the flow's next punt asks again: nothing is left pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from finsy.proto import p4r

from cyberstar.fm.cache import CachedRule, Connection, RuleCache, connection_cookie, entry_key
from cyberstar.fm.config import QueueConfig
from cyberstar.fm.fairqueue import FairQueue
from cyberstar.fm.sessions import PpSession
from cyberstar.p4rt import batching
from cyberstar.p4rt.codec import delete_of
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.flow_records import KEY, flow_key
from cyberstar.pipeline.frames import frame_flow
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import sc_pb2
from cyberstar.sc.client import ReleaseKey, Request
from cyberstar.sc.flows import FlowKey, Packet
from cyberstar.sc.routing import ScRouter
from cyberstar.sc.rules import flow_table_entry
from cyberstar.timeline import mark

log = logging.getLogger(__name__)
PACKET_IN_FIELDS = {f.name: i for i, f in enumerate(PIPELINE.packet_in.fields, start=1)}
PACKET_OUT_FIELDS = {f.name: i for i, f in enumerate(PIPELINE.packet_out.fields, start=1)}
FLOW_TABLE_ID = PIPELINE.table("flow_table").id
NO_TENANT = -1  # the queue of PacketIns without tenant metadata (dropped when classified)
LATENCY_SAMPLES = 200_000  # first-packet latencies kept for /status
HOST_REASON = PIPELINE.punt_reasons.index("host")


@dataclass
class Punt:
    session: PpSession
    packet: p4r.PacketIn
    ingress_port: int
    key: bytes
    arrived: float


class SlowPath:
    def __init__(self, cache: RuleCache, router: ScRouter, max_batch: int, max_delay: float,
                 max_in_flight: int = 2, queue: QueueConfig | None = None) -> None:  # fmt: skip
        self.cache = cache
        self.router = router
        self.max_batch = max_batch
        self.max_delay = max_delay
        # Batches outstanding at once. Few: on a busy host, waiting for a slot grows the next
        # batch, and a larger batch costs FM, SC and the PP less per packet than overlap gains.
        self.max_in_flight = max_in_flight
        self.decoder = PipelineDecoder(PIPELINE)
        self.stats: dict[str, int] = defaultdict(int)
        # per tenant: first packets punted, answered from the cache, asked of SC
        self.tenant_stats: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.timings: dict[str, float] = defaultdict(float)  # seconds spent per phase
        # (when sent, seconds from the PacketIn's arrival to its PacketOut's sending), recent
        self.latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_SAMPLES)
        queue = queue or QueueConfig()
        # (session, PacketIn, when it arrived), one FIFO per tenant (fairqueue.py)
        self.queue: FairQueue[tuple[PpSession, p4r.PacketIn, float]] = FairQueue(
            queue.max_packets, queue.per_tenant
        )
        self._pending: dict[bytes, list[Punt]] = {}
        self._ids = itertools.count(1)
        self._conn_ids = itertools.count(int(time.time() * 1000) << 16)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task] = set()
        self._orphans: dict[bytes, float] = {}
        self._warned_tenants: set[int] = set()  # a key of each connection no PP holds → deadline
        self.enabled = asyncio.Event()  # set while FM leads
        self.dpu_of: dict[int, int] = {}  # host PP index → the index of the DPU in front of it
        # Rule key → until when its host's idle notices are ignored: the flow ran on the DPU
        # until the DPU tore it down, so the host's idle time counts from then.
        self._offload_grace: dict[bytes, float] = {}

    def latency_percentiles(self, since: float = 0.0) -> dict[str, float]:
        """PacketIn arrival at FM to its PacketOut written to the stream, in µs, over the
        recent first packets whose PacketOut left after `since` (time.monotonic())."""
        recent = list(self.latencies)  # one copy under the GIL: the loop appends meanwhile
        lat = sorted(dt for t, dt in recent if t >= since)
        if not lat:
            return {"count": 0}
        out = {q: round(lat[min(len(lat) - 1, int(len(lat) * float(q)))] * 1e6, 1)
               for q in ("0.5", "0.9", "0.99")}  # fmt: skip
        out["count"] = len(lat)
        return out

    # ---- inputs (called from the sessions' pumps) --------------------------------------------

    def on_packet_in(self, session: PpSession, pin: p4r.PacketIn) -> None:
        mark("fm.packet_in")
        self.stats["packet_in"] += 1
        session.packet_ins += 1
        if not self.queue.put(_tenant_of(pin), (session, pin, time.monotonic())):
            self.stats["packet_in_shed"] += 1

    def on_idle(self, session: PpSession, note: p4r.IdleTimeoutNotification) -> None:
        self._spawn(self._expire(session, list(note.table_entry)))

    # ---- the batch loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Form batches: wait for a free slot first, so that while SC is busy the queue fills
        and the next batch takes what accumulated (adaptive batching). An idle FM sends a
        first packet at once; a busy one waits up to `max_delay` for company."""
        while True:
            await self._in_flight.acquire()
            await self.queue.wait()
            await self.enabled.wait()
            batch = self.queue.take(self.max_batch)
            busy = self._in_flight._value < self.max_in_flight - 1  # other batches in flight
            if busy and len(batch) < self.max_batch and self.max_delay > 0:
                await asyncio.sleep(self.max_delay)  # company is likely: wait a little
                batch += self.queue.take(self.max_batch - len(batch))
            self._spawn(self._process(batch), release=self._in_flight)

    def _spawn(self, coro, release: asyncio.Semaphore | None = None) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if release is not None:
                release.release()
            if not t.cancelled() and t.exception() is not None:
                self.stats["internal_errors"] += 1
                log.error("slow path task failed", exc_info=t.exception())

        task.add_done_callback(done)

    async def _process(self, batch: list[tuple[PpSession, p4r.PacketIn, float]]) -> None:
        mark("fm.batch_started")
        hits: dict[PpSession, list[tuple[Connection, Punt]]] = defaultdict(list)
        requests: list[Request] = []
        waiting: dict[int, bytes] = {}
        for session, pin, arrived in batch:
            punt, packet = self._classify(session, pin, arrived)
            if punt is None:
                continue
            per_tenant = self.tenant_stats[packet.tenant_id]
            per_tenant["packet_in"] += 1
            conn = self.cache.get(punt.key)
            if conn is not None:
                self.stats["cache_hits"] += 1
                per_tenant["cache_hits"] += 1
                hits[session].append((conn, punt))
            elif punt.key in self._pending:
                self._pending[punt.key].append(punt)
            elif self.router.map.route(packet.tenant_id, packet.key) is None:
                # No SC group holds any state for this tenant: its PP classification names a
                # tenant SC is not configured for.
                self.stats["unknown_tenant"] += 1
                if packet.tenant_id not in self._warned_tenants:
                    self._warned_tenants.add(packet.tenant_id)
                    log.warning(
                        "PacketIn for tenant %d, which no SC group serves; check the PP "
                        "classification and the SC tenants",
                        packet.tenant_id,
                    )
            else:
                self._pending[punt.key] = [punt]
                per_tenant["sc_requests"] += 1
                request_id = next(self._ids)
                waiting[request_id] = punt.key
                requests.append(Request(request_id, packet))
        self.stats["batches"] += 1
        self.stats["batched_packets"] += len(batch)
        for session, items in hits.items():
            await self._install(session, items)
        if requests:
            self.stats["sc_requests"] += len(requests)
            self.stats["sc_batches"] += 1
            try:
                t0 = time.monotonic()
                mark("fm.sc_asked")
                replies = await self.router.compute(requests)
                mark("fm.sc_answered")
                self.timings["sc_seconds"] += time.monotonic() - t0
                t0 = time.monotonic()
                await self._answer(replies, waiting)
                self.timings["install_seconds"] += time.monotonic() - t0
            finally:
                # A request SC did not answer (or an error on the way) must not leave its flow
                # pending for ever: forget it, and the flow's next punt asks again.
                for key in waiting.values():
                    if self._pending.pop(key, None) is not None:
                        self.stats["sc_unanswered"] += 1

    def _classify(self, session: PpSession, pin: p4r.PacketIn, arrived: float
                  ) -> tuple[Punt | None, Packet | None]:  # fmt: skip
        meta = {m.metadata_id: int.from_bytes(m.value, "big") for m in pin.metadata if m.value}
        port_id, tenant_id = PACKET_IN_FIELDS["ingress_port"], PACKET_IN_FIELDS["tenant_id"]
        if port_id not in meta or tenant_id not in meta:
            self.stats["packet_in_without_metadata"] += 1
            return None, None
        if meta.get(PACKET_IN_FIELDS["reason"]) == HOST_REASON:
            # bmv2's stand-in for XDP's `pass` (ARP, IPv4 no tenant claims): its namespace's
            # kernel sees these frames too; they are not flows for SC.
            self.stats["packet_in_host"] += 1
            return None, None
        ingress_port, tenant = meta[port_id], meta[tenant_id]
        flow = frame_flow(pin.payload, ingress_port)
        if flow is None:
            self.stats["packet_in_unparsable"] += 1
            return None, None
        fkey = FlowKey(*flow[1:])
        key = flow_key(tenant, *fkey)
        punt = Punt(session, pin, ingress_port, key, arrived)
        return punt, Packet(tenant, ingress_port, flow[0], fkey)

    async def _answer(self, replies: list[sc_pb2.RuleReply], waiting: dict[int, bytes]) -> None:
        by_session: dict[PpSession, list[tuple[Connection, Punt]]] = defaultdict(list)
        for reply in replies:
            key = waiting.pop(reply.request_id, None)
            punts = self._pending.pop(key, []) if key is not None else []
            code = reply.status.code
            if code not in (sc_pb2.OK, sc_pb2.POOL_EXHAUSTED):
                self.stats[f"sc_{sc_pb2.Code.Name(code).lower()}"] += 1
                log.warning("no rules for a flow: %s %s", sc_pb2.Code.Name(code),
                            reply.status.message)  # fmt: skip
                continue
            conn = self._connection(reply)
            if conn is None:
                continue
            if code == sc_pb2.POOL_EXHAUSTED:
                self.stats["pool_exhausted_alarms"] += 1
                conn.cacheable = False  # a short drop rule: the next first packet asks again
            for punt in punts:
                by_session[punt.session].append((conn, punt))
        for session, items in by_session.items():
            await self._install(session, items)

    def _connection(self, reply: sc_pb2.RuleReply) -> Connection | None:
        conn_id = next(self._conn_ids)
        rules = []
        try:
            if reply.packed_rules:
                return self.cache.codec.from_packed(conn_id, reply.slot, reply.packed_rules)
            cookie = connection_cookie(conn_id, reply.slot)
            for rule in reply.rules:
                entry = flow_table_entry(rule, cookie)
                rules.append(CachedRule(entry_key(entry), 0, entry))
        except Exception as exc:
            self.stats["sc_bad_rules"] += 1
            log.error("SC returned a rule the pipeline refuses: %s", exc)
            return None
        return Connection(conn_id, reply.slot, rules)

    async def _install(self, session: PpSession, items: list[tuple[Connection, Punt]]) -> None:
        """Write the connections' rules to the PP (one batch), cache them, send the packets
        back. A punt means the PP lacks the rules, whatever FM believed it held. A PP that
        takes StreamWrites gets the rules and the packets in one stream message and sends each
        packet once its connection's rules are in."""
        bit = 1 << session.index
        updates: list[bytes] = []
        ranges: dict[int, tuple[int, int]] = {}  # connection → its first update, how many
        conns: dict[int, Connection] = {}
        owner: list[int] = []  # the connection of each update
        for conn, _ in items:
            if conn.conn_id in ranges:
                continue
            conns[conn.conn_id] = conn
            ranges[conn.conn_id] = (len(updates), len(conn.rules))
            updates += [self.cache.codec.insert_update(r) for r in conn.rules]
            owner += [conn.conn_id] * len(conn.rules)
        streamed = bool(updates) and session.stream_writes
        if streamed:
            # The PP sends the packets before FM hears back: a reply punted by another PP
            # meanwhile must find the connection in the cache, not ask SC again.
            for conn in conns.values():
                if conn.cacheable and self.cache.get(conn.rules[0].key) is None:
                    self.cache.put(conn)
        failed: set[int] = set()
        if updates:
            session.rule_writes["stream" if streamed else "rpc"] += 1
            try:
                if streamed:
                    await session.stream_write(updates, [
                        batching.DependentPacket(_packet_out(punt), *ranges[conn.conn_id])
                        for conn, punt in items])  # fmt: skip
                else:
                    await session.write(updates)
            except Exception as exc:
                errors = getattr(exc, "errors", None) or []
                real = [i for i, code, _ in errors if code != "ALREADY_EXISTS"]
                if real or not errors:
                    self.stats["pp_write_errors"] += 1
                    log.warning("%s: writing rules failed: %s", session.name,
                                exc or type(exc).__name__)  # fmt: skip
                failed = {owner[i] for i in real if 0 <= i < len(owner)} if errors else set(owner)
            self.stats["rules_written"] += sum(1 for c in owner if c not in failed)
        now = time.monotonic()
        for conn_id, conn in conns.items():
            self._record_installed(conn, bit, conn_id not in failed, now)
        sent = [punt for conn, punt in items if conn.conn_id not in failed]
        self.stats["packet_out"] += len(sent)
        if streamed:  # the PP has sent them by the time it answered
            self.latencies += [(now, now - punt.arrived) for punt in sent]
            return
        for punt in sent:
            await session.packet_out(punt.packet.payload, _packet_out_metadata(punt),
                                     functools.partial(self._sent, punt.arrived))  # fmt: skip

    def _record_installed(self, conn: Connection, bit: int, installed: bool, now: float) -> None:
        """Set or clear PP `bit` on the connection's rules, in the cache's copy when it holds
        one: a batch for another PP may have set its own bit there meanwhile."""
        if not conn.cacheable:
            return
        held = self.cache.mark(conn, bit, installed)
        if held is None:  # not cached yet (the Write RPC's way) or no longer
            for rule in conn.rules:
                if installed:
                    rule.installed |= bit
                else:
                    rule.installed &= ~bit
            self.cache.put(conn)
            held = any(r.installed for r in conn.rules)
        if not held:
            # No PP holds its rules (the write failed): released in SC after its idle
            # timeout unless the flow punts again, when the cache answers.
            self.stats["connections_not_installed"] += 1
            self._orphan(conn, now)

    def _sent(self, arrived: float) -> None:
        now = time.monotonic()
        self.latencies.append((now, now - arrived))

    # ---- PP resets and idle timeouts → release -----------------------------------------------

    async def forget_pp(self, session: PpSession) -> None:
        """A PP came back empty (restarted): it holds none of the rules FM gave it before.

        Its connections stay cached: live flows punt again and are answered from the cache. A
        connection no PP holds is released only if nobody asks for it within its idle timeout
        (`sweep_orphans`), the time after which the PP would have reported it idle anyway.
        """
        bit = 1 << session.index
        now = time.monotonic()
        for conn in list(self.cache.items()):
            if not any(r.installed & bit for r in conn.rules):
                continue
            for rule in conn.rules:
                rule.installed &= ~bit
            self.cache.put(conn)
            if not any(r.installed for r in conn.rules):
                self._orphan(conn, now)

    def _orphan(self, conn: Connection, now: float) -> None:
        """Release `conn` in SC after its idle timeout, unless a PP takes its rules again."""
        idle_s = max(r.entry.idle_timeout_ns for r in conn.rules) / 1e9
        self._orphans[conn.rule_keys()[0]] = now + idle_s

    async def sweep_orphans(self, interval_s: float = 1.0) -> None:
        """Release connections that no PP re-requested within their idle timeout (and forget
        lapsed offload graces)."""
        while True:
            await asyncio.sleep(interval_s)
            now, releases = time.monotonic(), []
            for key in [k for k, until in self._offload_grace.items() if until <= now]:
                del self._offload_grace[key]
            for key, deadline in list(self._orphans.items()):
                if deadline > now:
                    continue
                del self._orphans[key]
                conn = self.cache.get(key)
                if conn is None or any(r.installed for r in conn.rules):
                    continue
                self.cache.remove(conn)
                releases += _release_keys(conn)
            if releases:
                self.stats["orphans_released"] += len(releases)
                await self._release(releases)

    async def _release(self, keys: list[ReleaseKey]) -> None:
        done = await self.router.release(keys)
        self.stats["sc_releases"] += len(keys) - len(done.failed)
        if done.failed:
            self.stats["sc_releases_failed"] += len(done.failed)
            log.warning("release: %s", done.reply.status.message)

    async def _expire(self, session: PpSession, entries: list[p4r.TableEntry]) -> None:
        bit = 1 << session.index
        dpu = self.dpu_of.get(session.index)
        # Neither a DPU nor behind one: nothing about offloads to check, so a rule of the usual
        # shape is read from its wire form and cleared in its packed record.
        plain = dpu is None and session.index not in self.dpu_of.values()
        wire = self.cache.codec.wire
        deletes, releases = [], []
        for te in entries:
            if te.table_id != FLOW_TABLE_ID:
                continue
            if plain:
                raw = te.SerializeToString()
                parsed = wire.parse(raw)
                if parsed is not None:
                    deletes.append(delete_of(raw))
                    released = self.cache.uninstall(KEY.pack(*parsed[0]), bit)
                    if released is not None:
                        slot, keys = released
                        releases += [_release_key(k, slot) for k in keys]
                    continue
            try:
                match = self.decoder.table(FLOW_TABLE_ID).decode_match(te)
            except P4RuntimeError:
                continue
            key = entry_key(TableEntry("flow_table", match, "", {}))
            conn = self.cache.get(key)
            if dpu is not None and conn is not None and self._offloaded(conn, key, dpu):
                # Idle on the host because the DPU in front of it carries (or carried) the flow.
                self.stats["idle_while_offloaded"] += 1
                continue
            deletes.append(p4r.Update(type=p4r.Update.DELETE,
                                      entity=p4r.Entity(table_entry=te)))  # fmt: skip
            if session.index in self.dpu_of.values() and conn is not None:
                self.stats["offload_teardowns"] += 1
                # The host re-notifies an idle rule once per idle timeout (plus its scan's
                # lag): a notice within two timeouts of the teardown covers offloaded time.
                idle_s = max(r.entry.idle_timeout_ns for r in conn.rules) / 1e9
                self._offload_grace[key] = time.monotonic() + 2 * idle_s
            if conn is None:
                continue
            for rule in conn.rules:
                if rule.key == key:
                    rule.installed &= ~bit
            if any(r.installed for r in conn.rules):
                self.cache.put(conn)
                continue
            self.cache.remove(conn)
            releases += _release_keys(conn)
        if deletes:
            with contextlib.suppress(Exception):
                await session.write(deletes)
            self.stats["rules_expired"] += len(deletes)
        if releases:
            await self._release(releases)

    def _offloaded(self, conn: Connection, key: bytes, dpu: int) -> bool:
        """The DPU holds this rule, or tore it down less than two of the rule's idle timeouts
        ago."""
        if any(r.key == key and r.installed & (1 << dpu) for r in conn.rules):
            return True
        until = self._offload_grace.get(key)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._offload_grace[key]
        return False

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()


_OUT_TO_INGRESS = PACKET_OUT_FIELDS["submit_to_ingress"]
_OUT_PORT = PACKET_OUT_FIELDS["ingress_port"]


def _packet_out_metadata(punt: Punt) -> list[tuple[int, bytes]]:
    """A first packet goes back through the pipeline as if it arrived on its port again."""
    return [(_OUT_TO_INGRESS, b"\x01"), (_OUT_PORT, punt.ingress_port.to_bytes(2, "big"))]


def _packet_out(punt: Punt) -> bytes:
    return batching.packet_out(punt.packet.payload, _packet_out_metadata(punt))


def _tenant_of(pin: p4r.PacketIn) -> int:
    for m in pin.metadata:
        if m.metadata_id == _TENANT_FIELD:
            return int.from_bytes(m.value, "big")
    return NO_TENANT


_TENANT_FIELD = PACKET_IN_FIELDS["tenant_id"]


def _release_keys(conn: Connection) -> list[ReleaseKey]:
    """What SC needs to free a connection: each of its rule keys, with the connection's slot."""
    return [_release_key(rule.key, conn.slot) for rule in conn.rules]


def _release_key(key: bytes, slot: int) -> ReleaseKey:
    tenant, src, dst, protocol, sport, dport = KEY.unpack(key)
    return ReleaseKey(tenant, FlowKey(protocol, src, dst, sport, dport), slot)
