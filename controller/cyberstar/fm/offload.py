"""Elephant flows offloaded to a DPU in front of a host PP node (paper §6.1).

The DPU is a PP node of its own (bmv2 running the same pipeline) whose `handoff` table hands the
host everything it does not process itself, so by default the host's PP does all the work and
punts misses to FM. Every `interval` FM reads the host's flow-table counters; a rule whose
packet or byte rate reaches the elephant threshold has its connection's rules (both directions)
written into the DPU, with the DPU's own idle timeout, and the flow's remaining packets never
reach the host. A rule that idles out on the DPU is deleted there by the slow path's idle
handling (a teardown); the host still holds it and takes the flow over if it resumes. While the
DPU holds a rule, the host's idle notifications for it are ignored: the flow is busy elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from finsy.proto import p4r

from cyberstar.fm.cache import Connection, RuleCache, entry_key
from cyberstar.fm.config import OffloadConfig
from cyberstar.fm.sessions import PpSession
from cyberstar.p4rt.codec import update
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE

log = logging.getLogger(__name__)
FLOW_TABLE_ID = PIPELINE.table("flow_table").id


class Offloader:
    def __init__(self, config: OffloadConfig, cache: RuleCache, sessions: dict[str, PpSession],
                 enabled: asyncio.Event) -> None:  # fmt: skip
        self.config = config
        self.cache = cache
        self.pairs = [(sessions[host], sessions[dpu]) for host, dpu in config.pairs]
        self.enabled = enabled  # set while FM leads
        self.decoder = PipelineDecoder(PIPELINE).table(FLOW_TABLE_ID)
        self.stats: dict[str, int] = defaultdict(int)
        # (host, rule key) → (time, packets, bytes) at the previous reading
        self._last: dict[tuple[str, bytes], tuple[float, int, int]] = {}

    @property
    def dpu_of(self) -> dict[int, int]:
        """Host session index → its DPU's session index."""
        return {host.index: dpu.index for host, dpu in self.pairs}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            if not self.enabled.is_set():
                continue
            for host, dpu in self.pairs:
                try:
                    await self.poll(host, dpu)
                except Exception as exc:
                    self.stats["offload_errors"] += 1
                    log.warning("offload %s → %s: %s", host.name, dpu.name, exc)

    async def poll(self, host: PpSession, dpu: PpSession) -> None:
        """Read the host's counters once; offload the connections of its elephant rules."""
        if not (host.primary and host.ready.is_set() and dpu.primary and dpu.ready.is_set()):
            return
        entries = [te async for chunk in host.flow_entries(with_counters=True) for te in chunk]
        now = time.monotonic()
        elephants: list[bytes] = []
        seen: set[tuple[str, bytes]] = set()
        for te in entries:
            try:
                key = entry_key(TableEntry("flow_table", self.decoder.decode_match(te), "", {}))
            except P4RuntimeError:
                continue
            mark = (host.name, key)
            seen.add(mark)
            current = (now, te.counter_data.packet_count, te.counter_data.byte_count)
            previous = self._last.get(mark)
            self._last[mark] = current
            if previous is not None and self._is_elephant(previous, current):
                elephants.append(key)
        for mark in [m for m in self._last if m[0] == host.name and m not in seen]:
            del self._last[mark]
        bit = 1 << dpu.index
        conns: dict[int, Connection] = {}
        for key in elephants:
            conn = self.cache.get(key)
            if conn is not None and not all(r.installed & bit for r in conn.rules):
                conns.setdefault(conn.conn_id, conn)
        if conns:
            await self._offload(dpu, list(conns.values()))

    def _is_elephant(self, before: tuple[float, int, int], now: tuple[float, int, int]) -> bool:
        seconds = now[0] - before[0]
        if seconds <= 0:
            return False
        pps, bps = (now[1] - before[1]) / seconds, (now[2] - before[2]) / seconds
        cfg = self.config
        return bool(
            (cfg.min_packets_per_s and pps >= cfg.min_packets_per_s)
            or (cfg.min_bytes_per_s and bps >= cfg.min_bytes_per_s)
        )

    async def _offload(self, dpu: PpSession, conns: list[Connection]) -> None:
        idle_ns = int(self.config.idle_timeout_s * 1e9)
        rules = [(conn, r) for conn in conns for r in conn.rules]
        updates = [
            update(p4r.Update.INSERT, PIPELINE, TableEntry(
                r.entry.table, r.entry.match, r.entry.action, r.entry.params,
                idle_timeout_ns=idle_ns, metadata=r.entry.metadata))
            for _, r in rules
        ]  # fmt: skip
        refused: set[int] = set()  # updates the DPU did not take (a full table, …)
        try:
            await dpu.write(updates)
        except Exception as exc:
            failed = getattr(exc, "errors", None)
            if not failed:  # not a per-update answer: nothing was written
                self.stats["offload_write_errors"] += 1
                log.warning("%s: offloading %d connections failed: %s", dpu.name, len(conns), exc)
                return
            refused = {i for i, code, _ in failed if code != "ALREADY_EXISTS"}
            if refused:
                self.stats["offload_write_errors"] += 1
                log.warning("%s: the DPU refused %d of %d offloaded rules: %s", dpu.name,
                            len(refused), len(updates), exc)  # fmt: skip
        # Record what the DPU holds, rule by rule: the host's idle notices depend on it.
        held: dict[int, set[bytes]] = {}
        for i, (conn, rule) in enumerate(rules):
            if i not in refused:
                held.setdefault(conn.conn_id, set()).add(rule.key)
        bit = 1 << dpu.index
        for conn in conns:
            fresh = self.cache.get(conn.rules[0].key)  # the slow path may have changed it
            keys = held.get(conn.conn_id, set())
            if fresh is None or fresh.conn_id != conn.conn_id or not keys:
                continue
            for rule in fresh.rules:
                if rule.key in keys:
                    rule.installed |= bit
            self.cache.put(fresh)
            if len(keys) == len(fresh.rules):
                self.stats["offloads"] += 1
        self.stats["offloaded_rules"] += len(updates) - len(refused)
