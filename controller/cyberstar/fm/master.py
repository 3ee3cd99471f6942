"""`cyberstar fm serve`: the Fabric Master process.

FMs elect a leader through etcd (`fm/leader`, create-if-absent on a lease). Every FM keeps a
P4Runtime session to every PP node: the leader as primary, the others as hot standbys (backups
with lower election ids). A new leader takes an election id above every earlier leader's
((1 << 32) + the etcd revision of its leader key), becomes primary on each PP, rebuilds the rule
cache from the PP nodes' flow tables (each rule carries its connection and SC slot in the entry
metadata) and starts answering PacketIns, so no rule is lost across a failover.

Admin and metrics (`http` in FM.yaml): GET /metrics, GET /status, POST /scale, over HTTPS with
FM's certificate (HTTP when FM is plaintext, loopback only), every request with the bearer token
of the configuration (`cyberstar.metrics`). The routes run on FM's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
import zlib
from collections import defaultdict

import aetcd

from cyberstar.errors import RuntimeFailure
from cyberstar.fm.cache import CacheBuilder, RuleCache
from cyberstar.fm.config import FabricConfig, FmConfig
from cyberstar.fm.offload import Offloader
from cyberstar.fm.sessions import PpSession
from cyberstar.fm.slowpath import SlowPath
from cyberstar.metrics import HttpError, HttpServer, Request, Route, Sample, metrics_route
from cyberstar.p4rt.decode import PipelineDecoder
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.sc import coord
from cyberstar.sc.flows import ShardId
from cyberstar.sc.routing import ScRouter, ShardMap
from cyberstar.tls import server_ssl, warn_plaintext

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


MAX_SCALE_WAIT_S = 600.0


class FabricMaster:
    def __init__(self, config: FmConfig) -> None:
        self.config = config
        self.keys = coord.Keys(config.etcd_prefix)
        self.cache = RuleCache(PIPELINE)
        self.shard_map = ShardMap(config.etcd, config.etcd_prefix)
        layout = self.cache.codec.layout.digest  # SC answers with FM's packed records
        self.router = ScRouter(self.shard_map, config.tls, packed_layout=layout)
        self.slowpath = SlowPath(
            self.cache,
            self.router,
            config.max_batch,
            config.max_delay_s,
            config.max_in_flight,
            config.queue,
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
                config.tls,
            )
            for i, pp in enumerate(config.pp_nodes)
        ]
        self.offloader: Offloader | None = None
        if config.offload is not None:
            by_name = {s.name: s for s in self.sessions}
            self.offloader = Offloader(config.offload, self.cache, by_name,
                                       self.slowpath.enabled)  # fmt: skip
            self.slowpath.dpu_of = self.offloader.dpu_of
        self.leader = False
        self.election_id = self.standby_id
        self.stats: dict[str, int] = defaultdict(int)
        self.rebuild_stats: dict[str, float] = {}  # rules read per PP node, and seconds
        self.etcd: aetcd.Client | None = None
        self._lease = None
        self._keeper: coord.LeaseKeeper | None = None
        self.lost_lease = False
        self._http: HttpServer | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        me = f"FM {self.config.fm_id}"
        if self.config.http:
            await self._serve_http()
        self.etcd = await coord.connect(self.config.etcd, me)
        await self.shard_map.start(f"{me} shard map")
        await self._register()
        for s in self.sessions:
            s.start(self.standby_id)
        self._tasks = [
            asyncio.create_task(self.slowpath.run(), name="slow-path"),
            asyncio.create_task(self.slowpath.sweep_orphans(), name="orphans"),
            asyncio.create_task(self._keepalive(), name="lease"),
            asyncio.create_task(self._campaign(), name="leader-election"),
            asyncio.create_task(self._publish_pp_members(), name="pp-membership"),
        ]
        if self.offloader is not None:
            self._tasks.append(asyncio.create_task(self.offloader.run(), name="offload"))
        log.info(
            "%s started (%s): %d PP nodes, etcd %s%s", me,
            "mutual TLS" if self.config.tls else "PLAINTEXT", len(self.sessions),
            self.config.etcd.address,
            f", HTTP on {self.config.http.listen}" if self.config.http else "",
        )  # fmt: skip
        await self._stop.wait()

    async def _register(self) -> None:
        """A lease, kept alive from its own thread, and `members/fm/<id>` on it."""
        assert self.etcd is not None
        self._lease = await self.etcd.lease(self.config.lease_ttl_s)
        value = json.dumps({"fm_id": self.config.fm_id}).encode()
        await self.etcd.put(self.keys.member(self.config.fm_id, "fm"), value, lease=self._lease)
        self._keeper = coord.LeaseKeeper(
            self.config.etcd,
            self._lease.id,
            self.config.lease_ttl_s,
            stall_limit_s=max(self.config.lease_ttl_s, coord.STALL_LIMIT_S),
            what=f"FM {self.config.fm_id}",
        )
        self._keeper.start()

    async def _serve_http(self) -> None:
        http = self.config.http
        assert http is not None
        self._http = HttpServer(
            {
                "/metrics": metrics_route(self.metrics),
                "/status": Route("GET", self._status_route),
                "/scale": Route("POST", self._scale_route),
            },
            token=http.token,
            max_connections=http.max_connections,
            timeout_s=http.timeout_s,
        )  # fmt: skip
        tls = self.config.tls
        await self._http.start(http.listen, server_ssl(tls, client_auth=False) if tls else None)
        if tls is None:
            warn_plaintext(f"FM {self.config.fm_id} HTTP", http.listen)

    def status(self, since: float = 0.0) -> dict:
        """`since` (time.monotonic() of this host): first-packet latencies after it only."""
        return {
            "fm_id": self.config.fm_id,
            "leader": self.leader,
            "election_id": self.election_id,
            "cached_rules": len(self.cache),
            "cached_connections": self.cache.connections,
            "shards": {str(k): v for k, v in sorted(self.shard_map.shards.items(), key=str)},
            "pp_nodes": {s.name: {"primary": s.primary, "ready": s.primary and s.ready.is_set(),
                                  "connections": s.connections, "packet_in": s.packet_ins,
                                  "rule_writes": dict(s.rule_writes),
                                  "lost_primary": s.lost_primary, "election_id": s.election_id}
                         for s in self.sessions},
            "slow_path": dict(self.slowpath.stats),
            "offload": dict(self.offloader.stats) if self.offloader else {},
            "first_packet_us": self.slowpath.latency_percentiles(since),
            "timings_s": {k: round(v, 3) for k, v in self.slowpath.timings.items()},
            "cache_rebuild": self.rebuild_stats,
        }  # fmt: skip

    def _status_route(self, request: Request) -> tuple[int, str, str]:
        """GET /status[?since=T]: `since` is a time.monotonic() of this host (benchmarks)."""
        text = request.query.get("since", "0")
        try:
            since = float(text)
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            raise HttpError(400, f"since: expected a time.monotonic() value, found {text!r}")
        return 200, "application/json", json.dumps(self.status(since))

    async def _scale_route(self, request: Request) -> tuple[int, str, str]:
        """POST /scale?kind=out|in&shard=T:LO-HI&to=SCG[&wait_s=S]: FM sends `start` to the SCG
        owning the shard and waits for `fin` (paper §4.1). Parameters are checked before
        anything starts: 400 names the bad one; 409 says why the move did not finish."""
        q = request.query
        kind, shard, target = q.get("kind"), q.get("shard", ""), q.get("to", "")
        if kind not in ("out", "in"):
            raise HttpError(400, f"kind: expected out or in, found {kind!r}")
        try:
            ShardId.parse(shard)
        except ValueError:
            raise HttpError(400, f"shard: expected TENANT:LO-HI, found {shard!r}") from None
        if not target:
            raise HttpError(400, "to: expected the target SCG's name")
        text = q.get("wait_s", "30")
        try:
            wait_s = float(text)
        except ValueError:
            wait_s = math.nan
        if not math.isfinite(wait_s) or not 0 < wait_s <= MAX_SCALE_WAIT_S:
            raise HttpError(400, f"wait_s: expected seconds in (0, {MAX_SCALE_WAIT_S:g}], "
                                 f"found {text!r}")  # fmt: skip
        try:
            result = await self.scale(kind, shard, target, wait_s)
        except Exception as exc:
            raise HttpError(409, str(exc) or type(exc).__name__) from None
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
        """Beat for the lease keeper (a thread). A lapsed lease ends a leader (another FM may
        lead already: it exits 1, to be restarted clean); a standby takes a new lease."""
        while True:
            assert self._keeper is not None
            self._keeper.beat()
            if self._keeper.expired.is_set():
                if self.election_id != self.standby_id:
                    log.error("FM %s: leadership lease lapsed: stepping down", self.config.fm_id)
                    self.leader = False
                    self.slowpath.enabled.clear()
                    self.lost_lease = True
                    self._stop.set()
                    return
                log.warning("FM %s: standby lease lapsed; taking a new one", self.config.fm_id)
                await asyncio.to_thread(self._keeper.stop)
                with contextlib.suppress(Exception):
                    await self._register()
            await asyncio.sleep(0.5)

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
        said = False
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
            if not said:
                holder = await etcd.get(key)
                who = holder.value.decode(errors="replace") if holder else "?"
                log.info("FM %s is a standby (%s leads)", self.config.fm_id, who)
                said = True
            await asyncio.sleep(self.config.lease_ttl_s / 3)

    async def _lead(self, election_id: int) -> None:
        log.info("FM %s leads (election id %d)", self.config.fm_id, election_id)
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

        async def read(s: PpSession) -> None:
            # A node that is down (a spare not booted yet, a crashed one) holds no rules; one
            # whose session is still connecting is waited for.
            if s.down:
                return
            try:
                await asyncio.wait_for(s.ready.wait(), 10)
            except TimeoutError:
                log.warning(
                    "%s (%s): not connected within 10 s; its rules are not in the rebuilt "
                    "cache (its flows punt again)", s.name, s.config.address,
                )  # fmt: skip
                return
            read = 0
            try:
                async for chunk in s.flow_entries():
                    for te in chunk:
                        builder.add(te, s.index)
                    read += len(chunk)
                    if read % REBUILD_LOG_EVERY < len(chunk):
                        log.info("%s: %d rules read into the cache (%.0f s)", s.name, read,
                                 time.monotonic() - started)  # fmt: skip
            except Exception as exc:
                log.warning("%s: cannot read its rules to rebuild the cache (%d read): %s",
                            s.name, read, coord.reason_of(exc))  # fmt: skip
                return
            self.rebuild_stats[s.name] = read

        await asyncio.gather(*(read(s) for s in self.sessions))
        connections = builder.finish()
        self.rebuild_stats["seconds"] = round(time.monotonic() - started, 3)
        log.info("rule cache rebuilt from the PP nodes: %d connections, %d rules in %.1f s",
                 connections, builder.rules, time.monotonic() - started)  # fmt: skip

    def metrics(self) -> list[Sample]:
        out: list[Sample] = [
            ("cyberstar_fm_leader", {"fm": self.config.fm_id}, int(self.leader)),
            ("cyberstar_fm_cached_rules", {}, len(self.cache)),
            ("cyberstar_fm_cached_connections", {}, self.cache.connections),
        ]
        out += [(f"cyberstar_fm_{k}_total", {}, v) for k, v in self.slowpath.stats.items()]
        for tenant, counts in sorted(self.slowpath.tenant_stats.items()):
            out += [(f"cyberstar_fm_tenant_{k}_total", {"tenant": str(tenant)}, v)
                    for k, v in counts.items()]  # fmt: skip
        if self.offloader is not None:
            out += [(f"cyberstar_fm_{k}_total", {}, v) for k, v in self.offloader.stats.items()]
        for s in self.sessions:
            out.append(("cyberstar_fm_pp_primary", {"pp": s.name}, int(s.primary)))
            out.append(("cyberstar_fm_pp_connections_total", {"pp": s.name}, s.connections))
            out.append(("cyberstar_fm_pp_stream_dropped_total", {"pp": s.name}, s.stream_dropped))
            out.append(("cyberstar_fm_pp_lost_primary_total", {"pp": s.name}, s.lost_primary))
            out.append(("cyberstar_fm_pp_packet_in_total", {"pp": s.name}, s.packet_ins))
            for via, n in s.rule_writes.items():
                out.append(("cyberstar_fm_pp_rule_writes_total", {"pp": s.name, "via": via}, n))
            out.append(("cyberstar_fm_pp_ready", {"pp": s.name}, int(s.ready.is_set())))
        out.append(("cyberstar_fm_queued_packets", {}, len(self.slowpath.queue)))
        for tenant, n in sorted(self.slowpath.queue.shed.items()):
            out.append(("cyberstar_fm_packet_in_shed_total", {"tenant": str(tenant)}, n))
        out.append(("cyberstar_fm_etcd_bad_values_total", {}, self.shard_map.bad_values.count))
        for q, us in self.slowpath.latency_percentiles().items():
            if q != "count":
                out.append(("cyberstar_fm_first_packet_seconds", {"quantile": q}, us / 1e6))
        return out

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._http is not None:
            await self._http.close()
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
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
    for files in (config.tls, config.etcd.tls):
        if files is not None:
            files.read()  # unreadable certificates are bad input (exit 2), said in words
    fm = FabricMaster(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fm.stop)
    try:
        await fm.run()
    finally:
        await fm.close()
    if fm.lost_lease:
        raise RuntimeFailure(f"FM {config.fm_id}: its leadership lease lapsed; restart it")
    return 0
