"""`cyberstar fm serve`: the Fabric Master process.

FMs elect a leader through etcd (`fm/leader`, create-if-absent on a lease). Every FM keeps a
P4Runtime session to every PP node: the leader as primary, the others as hot standbys (backups
with lower election ids). A new leader takes an election id above every earlier leader's
((1 << 32) + the etcd revision of its leader key), becomes primary on each PP, rebuilds the rule
cache from the PP nodes' flow tables (each rule carries its connection and SC slot in the entry
metadata) and starts answering PacketIns, so no rule is lost across a failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import zlib
from collections import defaultdict

import aetcd

from cyberstar.fm.cache import CacheBuilder, RuleCache
from cyberstar.fm.config import FabricConfig, FmConfig
from cyberstar.fm.sessions import PpSession
from cyberstar.fm.slowpath import SlowPath
from cyberstar.metrics import Sample, metrics_route, serve_http
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.sc import coord
from cyberstar.sc.routing import ScRouter, ShardMap

log = logging.getLogger(__name__)
REBUILD_LOG_EVERY = 1_000_000  # rules read between two progress lines of a cache rebuild


def fabric_entries(fabric: FabricConfig, node_id: str) -> list[TableEntry]:
    """Next hops from PP `node_id` to every other fabric node: a VXLAN tunnel each (§5.2)."""
    me = next((n for n in fabric.nodes if n.id == node_id), None)
    if me is None:
        return []
    return [
        build_entry(
            PIPELINE,
            "next_hop",
            {"nexthop_id": fabric.nexthop_base + i},
            "set_next_hop_vxlan",
            {
                "port": me.port,
                "smac": me.mac,
                "dmac": me.gateway_mac,
                "src_addr": me.address,
                "dst_addr": peer.address,
                "vni": fabric.vni,
            },
        )
        for i, peer in enumerate(fabric.nodes)
        if peer.id != node_id
    ]


class FabricMaster:
    def __init__(self, config: FmConfig) -> None:
        self.config = config
        self.keys = coord.Keys(config.etcd_prefix)
        self.cache = RuleCache(PIPELINE)
        self.shard_map = ShardMap(config.etcd, config.etcd_prefix)
        self.router = ScRouter(self.shard_map)
        self.slowpath = SlowPath(
            self.cache, self.router, config.max_batch, config.max_delay_s, config.max_in_flight
        )
        # A standby's id: below any leader's, distinct per FM.
        self.standby_id = (zlib.crc32(config.fm_id.encode()) & 0x7FFFFFFF) + 1
        self.sessions = [
            PpSession(
                pp,
                i,
                fabric_entries(config.fabric, pp.id) if config.fabric else [],
                self.slowpath.on_packet_in,
                self.slowpath.on_idle,
                self.slowpath.forget_pp,
            )
            for i, pp in enumerate(config.pp_nodes)
        ]
        self.leader = False
        self.election_id = self.standby_id
        self.stats: dict[str, int] = defaultdict(int)
        self.rebuild_stats: dict[str, float] = {}  # rules read per PP node, and seconds
        self.etcd: aetcd.Client | None = None
        self._lease = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        self.etcd = coord.connect(self.config.etcd)
        await self.etcd.connect()
        await self.shard_map.start()
        self._lease = await self.etcd.lease(self.config.lease_ttl_s)
        await self.etcd.put(self.keys.member(self.config.fm_id, "fm"),
                            json.dumps({"fm_id": self.config.fm_id}).encode(),
                            lease=self._lease)  # fmt: skip
        for s in self.sessions:
            s.start(self.standby_id)
        self._tasks = [
            asyncio.create_task(self.slowpath.run(), name="slow-path"),
            asyncio.create_task(self.slowpath.sweep_orphans(), name="orphans"),
            asyncio.create_task(self._keepalive(), name="lease"),
            asyncio.create_task(self._campaign(), name="leader-election"),
            asyncio.create_task(self._publish_pp_members(), name="pp-membership"),
        ]
        if self.config.http:
            loop = asyncio.get_running_loop()
            serve_http(self.config.http, {
                "/metrics": metrics_route(self.metrics),
                "/status": lambda q: (200, "application/json",
                                      json.dumps(self.status(float(q.get("since", 0))))),
                "/scale": lambda q: self._scale_route(q, loop),
            })  # fmt: skip
        await self._stop.wait()

    def status(self, since: float = 0.0) -> dict:
        """`since` (time.monotonic() of this host): first-packet latencies after it only."""
        return {
            "fm_id": self.config.fm_id,
            "leader": self.leader,
            "election_id": self.election_id,
            "cached_rules": len(self.cache),
            "cached_connections": self.cache.connections,
            "shards": {str(k): v for k, v in sorted(self.shard_map.shards.items(), key=str)},
            "pp_nodes": {s.name: {"primary": s.primary, "connections": s.connections,
                                  "packet_in": s.packet_ins, "lost_primary": s.lost_primary,
                                  "election_id": s.election_id} for s in self.sessions},
            "slow_path": dict(self.slowpath.stats),
            "first_packet_us": self.slowpath.latency_percentiles(since),
            "timings_s": {k: round(v, 3) for k, v in self.slowpath.timings.items()},
            "cache_rebuild": self.rebuild_stats,
        }  # fmt: skip

    def _scale_route(self, query: dict[str, str], loop: asyncio.AbstractEventLoop
                     ) -> tuple[int, str, str]:  # fmt: skip
        """GET /scale?kind=out|in&shard=T:LO-HI&to=SCG[&wait_s=S]: FM sends `start` to the SCG
        owning the shard and waits for `fin` (paper §4.1)."""
        kind, shard, target = query.get("kind"), query.get("shard"), query.get("to")
        if kind not in ("out", "in") or not shard or not target:
            return 400, "text/plain", "expected kind=out|in, shard=T:LO-HI and to=SCG\n"
        wait_s = float(query.get("wait_s", "30"))
        future = asyncio.run_coroutine_threadsafe(self.scale(kind, shard, target, wait_s), loop)
        try:
            result = future.result(wait_s + 5)
        except Exception as exc:
            return 409, "application/json", json.dumps({"error": str(exc)})
        return 200, "application/json", json.dumps(result)

    async def scale(self, kind: str, shard: str, target: str, wait_s: float) -> dict:
        owner = next((scg for sid, scg in self.shard_map.shards.items() if str(sid) == shard),
                     None)  # fmt: skip
        if owner is None:
            raise ValueError(f"no shard {shard}; shards: {sorted(map(str, self.shard_map.shards))}")
        head = self.shard_map.head(owner)
        if head is None:
            raise ValueError(f"SCG {owner} has no live head")
        client = self.router.client(head)
        op = await (client.scale_out if kind == "out" else client.scale_in)(shard, target)
        reply = await client.scale_status(op, wait_s=wait_s)
        if reply.phase != "fin":
            raise RuntimeError(f"scale {op}: phase {reply.phase}: {reply.status.message}")
        produced = set(reply.shards)
        await self.shard_map.wait_until(  # FM routes by the new map from here on
            lambda m: any(str(sid) in produced and scg == target for sid, scg in m.shards.items()),
            10,
        )
        return {"op_id": op, "phase": reply.phase, "shards": list(reply.shards),
                "moved_connections": reply.moved_connections, "seconds": reply.seconds}  # fmt: skip

    def stop(self) -> None:
        self._stop.set()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl_s / 3)
            try:
                reply = await self._lease.refresh()
            except Exception as exc:
                log.warning("lease refresh failed: %s", exc)
                continue
            if reply.TTL <= 0 and self.election_id != self.standby_id:  # leading or taking over
                log.error("leadership lease expired: stepping down")
                self.leader = False
                self.slowpath.enabled.clear()
                self._stop.set()  # another FM may already lead; restart clean

    async def _publish_pp_members(self) -> None:
        """The leader records which PP nodes it reaches (`members/pp/<id>` on its lease), so
        membership shows PP nodes appearing and disappearing as FM sees them."""
        listed: set[str] = set()
        while True:
            await asyncio.sleep(self.config.lease_ttl_s / 3)
            if not self.leader:
                continue
            for s in self.sessions:
                key = self.keys.member(s.name, "pp")
                up = s.primary and s.ready.is_set()
                try:
                    if up and s.name not in listed:
                        value = {
                            "address": s.config.address,
                            "device_id": s.config.device_id,
                            "fm": self.config.fm_id,
                        }
                        await self.etcd.put(key, json.dumps(value).encode(), lease=self._lease)
                        listed.add(s.name)
                    elif not up and s.name in listed:
                        await self.etcd.delete(key)
                        listed.discard(s.name)
                except Exception as exc:
                    log.warning("membership of %s: %s", s.name, exc)

    async def _campaign(self) -> None:
        """Become the leader when the key is free; keep trying while another FM holds it."""
        etcd = self.etcd
        key = self.keys.fm_leader()
        while not self.leader:
            ok, _ = await etcd.transaction(
                compare=[etcd.transactions.create(key) == 0],
                success=[etcd.transactions.put(key, self.config.fm_id.encode(), lease=self._lease)],
                failure=[],
            )
            if ok:
                kv = await etcd.get(key)
                await self._lead((1 << 32) + kv.create_revision)
                return
            await asyncio.sleep(self.config.lease_ttl_s / 3)

    async def _lead(self, election_id: int) -> None:
        log.warning("%s leads (election id %d)", self.config.fm_id, election_id)
        self.election_id = election_id
        await asyncio.gather(*(s.become_primary(election_id) for s in self.sessions))
        await self._rebuild_cache()
        # Report leadership only once the cache is rebuilt and the slow path serves.
        self.leader = True
        self.slowpath.enabled.set()

    async def _rebuild_cache(self) -> None:
        """Rebuild the rule cache from what the PP nodes hold (a previous leader's rules), as
        their flow tables stream in, logging progress every `REBUILD_LOG_EVERY` rules."""
        decoder = PipelineDecoder(PIPELINE).table(PIPELINE.table("flow_table").id)
        builder = CacheBuilder(self.cache, decoder)
        started = time.monotonic()
        for s in self.sessions:
            read = 0
            try:
                await asyncio.wait_for(s.ready.wait(), 10)
                async for chunk in s.flow_entries():
                    for te in chunk:
                        builder.add(te, s.index)
                    read += len(chunk)
                    if read % REBUILD_LOG_EVERY < len(chunk):
                        log.info("%s: %d rules read into the cache (%.0f s)", s.name, read,
                                 time.monotonic() - started)  # fmt: skip
            except Exception as exc:
                log.warning("%s: cannot read its rules to rebuild the cache (%d read): %s",
                            s.name, read, exc or type(exc).__name__)  # fmt: skip
                continue
            self.rebuild_stats[s.name] = read
        connections = builder.finish()
        self.rebuild_stats["seconds"] = round(time.monotonic() - started, 3)
        log.warning("rule cache rebuilt from the PP nodes: %d connections, %d rules in %.1f s",
                    connections, builder.rules, time.monotonic() - started)  # fmt: skip

    def metrics(self) -> list[Sample]:
        out: list[Sample] = [
            ("cyberstar_fm_leader", {"fm": self.config.fm_id}, int(self.leader)),
            ("cyberstar_fm_cached_rules", {}, len(self.cache)),
            ("cyberstar_fm_cached_connections", {}, self.cache.connections),
        ]
        out += [(f"cyberstar_fm_{k}_total", {}, v) for k, v in self.slowpath.stats.items()]
        for s in self.sessions:
            out.append(("cyberstar_fm_pp_primary", {"pp": s.name}, int(s.primary)))
            out.append(("cyberstar_fm_pp_connections_total", {"pp": s.name}, s.connections))
            out.append(("cyberstar_fm_pp_lost_primary_total", {"pp": s.name}, s.lost_primary))
        for q, us in self.slowpath.latency_percentiles().items():
            if q != "count":
                out.append(("cyberstar_fm_first_packet_seconds", {"quantile": q}, us / 1e6))
        return out

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.slowpath.close()
        for s in self.sessions:
            await s.close()
        await self.router.close()
        with contextlib.suppress(Exception):
            await self.shard_map.close()
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.revoke()
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                await self.etcd.close()


async def serve_fm(config: FmConfig) -> int:
    fm = FabricMaster(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fm.stop)
    try:
        await fm.run()
    finally:
        await fm.close()
    return 0
