"""One SC node: the gRPC service, its place in its SCG's chain, and its etcd membership.

Everything runs on one asyncio loop: gRPC handlers, the engine (synchronous, so each batch is
decided atomically), the replication links (TCP, `replication.py`) and etcd watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable

import aetcd
import grpc

from cyberstar.proto import sc_pb2, sc_pb2_grpc
from cyberstar.sc import coord
from cyberstar.sc.client import GRPC_OPTIONS, HOPS_METADATA, ScClient
from cyberstar.sc.config import ScConfig
from cyberstar.sc.engine import Engine, Outcome, validate_flow
from cyberstar.sc.flows import FlowKey, Packet, ShardId
from cyberstar.sc.metrics import Counters
from cyberstar.sc.replication import Replicator, encode_ops
from cyberstar.sc.rules import fill_rule
from cyberstar.sc.scale import ScaleDriver
from cyberstar.sc.state import NodeState

log = logging.getLogger(__name__)
Code = sc_pb2.Code
MAX_HOPS = 3


def status(code: int, message: str = "") -> sc_pb2.Status:
    return sc_pb2.Status(code=code, message=message)


def reply_of(request_id: int, out: Outcome) -> sc_pb2.RuleReply:
    reply = sc_pb2.RuleReply(request_id=request_id, slot=out.slot, shard=out.shard)
    reply.status.code = out.code
    if out.message:
        reply.status.message = out.message
    add = reply.rules.add
    for rule in out.rules:
        fill_rule(add(), out.tenant_id, rule, out.timeout_ns)
    return reply


def _hops(context: grpc.aio.ServicerContext) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == HOPS_METADATA:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


class ScNode(sc_pb2_grpc.ServiceComputingServicer):
    def __init__(self, config: ScConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.engine = Engine(config, self.counters)
        self.keys = coord.Keys(config.etcd_prefix)
        self.incarnation = uuid.uuid4().hex[:12]
        self.replicator = Replicator(
            config.node_id, lambda: self.engine.state, self._set_state, self.counters
        )
        self.chains: dict[str, coord.Chain] = {}
        self.etcd: aetcd.Client | None = None
        self.scale = ScaleDriver(self)
        self._clients: dict[str, ScClient] = {}
        self._server: grpc.aio.Server | None = None
        self._chain_server: asyncio.Server | None = None
        self.chain_address = ""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._lease: aetcd.leases.Lease | None = None
        self._claiming = False

    def _set_state(self, state: NodeState) -> None:
        self.engine.state = state

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = grpc.aio.server(options=GRPC_OPTIONS)
        sc_pb2_grpc.add_ServiceComputingServicer_to_server(self, self._server)
        if self._server.add_insecure_port(self.config.listen) == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self._server.start()
        host, port = self.config.chain_endpoint
        self._chain_server = await asyncio.get_running_loop().create_server(
            self.replicator.accept, host, port
        )
        bound = self._chain_server.sockets[0].getsockname()[1]
        self.chain_address = f"{host}:{bound}"
        self.etcd = coord.connect(self.config.etcd)
        await self.etcd.connect()
        await self._register()
        self._tasks = [
            asyncio.create_task(self._keepalive()),
            asyncio.create_task(
                coord.watch_prefix(self.etcd, self.keys.chains(), self._on_chains, self._stop)
            ),
            asyncio.create_task(
                coord.watch_prefix(self.etcd, self.keys.members(), self._reconcile, self._stop)
            ),
        ]
        log.info(
            "SC node %s of %s listening on %s (chain link on %s)",
            self.config.node_id,
            self.config.scg,
            self.config.listen,
            self.chain_address,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await self.replicator.close()
        if self.etcd is not None and self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.revoke()
        for client in self._clients.values():
            await client.close()
        if self._chain_server is not None:
            self._chain_server.close()
        if self._server is not None:
            await self._server.stop(0.5)
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                await self.etcd.close()

    async def _register(self) -> None:
        assert self.etcd is not None
        self._lease = await self.etcd.lease(self.config.lease_ttl_s)
        value = {
            "scg": self.config.scg,
            "address": self.config.listen,
            "chain": self.chain_address,
            "incarnation": self.incarnation,
        }
        await self.etcd.put(
            self.keys.member(self.config.node_id), json.dumps(value).encode(), lease=self._lease
        )

    async def _keepalive(self) -> None:
        interval = self.config.lease_ttl_s / 3
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return
            try:
                assert self._lease is not None
                reply = await self._lease.refresh()
                expired = reply.TTL <= 0
            except Exception as exc:
                log.warning("lease refresh failed: %s", exc)
                continue
            if expired:
                # The group took us for dead and may have moved on: rejoin as a fresh node.
                log.warning("lease expired: rejoining %s as a new incarnation", self.config.scg)
                self.incarnation = uuid.uuid4().hex[:12]
                self.replicator.reset()
                with contextlib.suppress(Exception):
                    await self._register()

    # -- chain membership ----------------------------------------------------------------------
    async def _reconcile(self) -> None:
        """The holder of the group's lock rewrites the chain: dead nodes out, new ones last."""
        assert self.etcd is not None
        lock = self.etcd.lock(self.keys.chain_lock(self.config.scg), ttl=10)
        if not await lock.acquire(timeout=5):
            return
        try:
            members = {}
            for kv in await self.etcd.get_prefix(self.keys.members()):
                m = json.loads(kv.value)
                if m["scg"] == self.config.scg:
                    node_id = kv.key.decode().rsplit("/", 1)[1]
                    members[node_id] = (kv.create_revision, m)
            raw = await self.etcd.get(self.keys.chain(self.config.scg))
            chain = coord.Chain.from_json(self.config.scg, raw.value if raw else None)
            keep = [
                n
                for n in chain.nodes
                if n.id in members and members[n.id][1]["incarnation"] == n.incarnation
            ]
            kept = {n.id for n in keep}
            joiners = sorted((rev, nid, m) for nid, (rev, m) in members.items() if nid not in kept)
            nodes = tuple(keep) + tuple(
                coord.ChainNode(nid, m["address"], m["incarnation"], m.get("chain", ""))
                for _, nid, m in joiners
            )
            if nodes != chain.nodes:
                new = coord.Chain(self.config.scg, chain.epoch + 1, nodes)
                await self.etcd.put(self.keys.chain(self.config.scg), new.to_json())
                log.info(
                    "chain of %s, epoch %d: %s", new.scg, new.epoch, " → ".join(n.id for n in nodes)
                )
        finally:
            with contextlib.suppress(Exception):
                await lock.release()

    async def _on_chains(self) -> None:
        assert self.etcd is not None
        self.chains = await coord.read_chains(self.etcd, self.keys)
        mine = self.chains.get(self.config.scg)
        if mine is not None:
            self.replicator.set_chain(mine, self.incarnation)
        if self.replicator.is_head:
            asyncio.get_running_loop().create_task(self._claim_tenants())
            self.scale.resume()

    async def _claim_tenants(self) -> None:
        """The head creates the first shard of each tenant homed here that nobody owns yet."""
        if self._claiming or self.etcd is None:
            return
        self._claiming = True
        try:
            for tid, tenant in self.config.tenants.items():
                if tenant.home_scg not in (None, self.config.scg):
                    continue
                if self.engine.state.by_tenant.get(tid):
                    continue
                whole = ShardId.whole(tid)
                etcd = self.etcd
                ok, _ = await etcd.transaction(
                    compare=[etcd.transactions.create(self.keys.claim(tid)) == 0],
                    success=[
                        etcd.transactions.put(self.keys.claim(tid), self.config.scg.encode()),
                        etcd.transactions.put(
                            self.keys.shard(whole), json.dumps({"scg": self.config.scg}).encode()
                        ),
                    ],
                    failure=[],
                )
                if not ok:
                    continue
                shard = self.engine.initial_shard(tid)
                op = ["create", str(whole), {n: p.encode() for n, p in shard.pools.items()}]
                await self.submit([op])
                log.info("claimed tenant %d: shard %s", tid, whole)
        finally:
            self._claiming = False

    # -- helpers -------------------------------------------------------------------------------
    async def submit(
        self,
        ops: list,
        then: Callable[[], object] | None = None,
        wait: bool = True,
    ) -> tuple[bool, list]:
        """Apply operations as head, replicate them, wait for the tail (unless not `wait`).

        Returns (committed, what each op returned); `then`, if given, runs right after the
        ops are applied, before any other request can change the state, and its result is
        appended to the list."""
        data, blobs = encode_ops(ops)
        results = [self.engine.state.apply(op) for op in ops]
        if then is not None:
            results.append(then())
        seq = self.replicator.submit(data, blobs)
        if not wait:
            return True, results
        return await self.replicator.commit(seq, self.config.commit_timeout_s), results

    def head_address(self, scg: str) -> str | None:
        chain = self.chains.get(scg)
        head = chain.head if chain else None
        return head.address if head else None

    def client_for(self, address: str) -> ScClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = ScClient(address)
        return client

    def not_head_message(self) -> str:
        chain = self.chains.get(self.config.scg)
        head = chain.head if chain else None
        where = f"; the head is {head.id} at {head.address}" if head else ""
        return f"{self.config.node_id} is not the head of {self.config.scg}{where}"

    # -- FM-facing RPCs ------------------------------------------------------------------------
    async def Compute(self, request: sc_pb2.RuleBatch, context) -> sc_pb2.RuleReplyBatch:
        reqs = request.requests
        if not self.replicator.is_head:
            self.counters.inc("not_head", len(reqs))
            st = status(Code.NOT_HEAD, self.not_head_message())
            return sc_pb2.RuleReplyBatch(
                replies=[sc_pb2.RuleReply(request_id=r.request_id, status=st) for r in reqs]
            )
        hops = _hops(context)
        ops: list = []
        replies: list[sc_pb2.RuleReply] = []
        proxied: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(reqs):
            out = self._compute_one(r, ops)
            if out.proxy_to and hops < MAX_HOPS:
                proxied[out.proxy_to].append(i)
            replies.append(reply_of(r.request_id, out))
        seq = self.replicator.submit(*encode_ops(ops)) if ops else self.replicator.applied
        if proxied:
            await asyncio.gather(
                *(
                    self._proxy_compute(scg, [reqs[i] for i in idx], idx, replies, hops)
                    for scg, idx in proxied.items()
                )
            )
        if not await self.replicator.commit(seq, self.config.commit_timeout_s):
            self.counters.inc("unavailable", len(reqs))
            st = status(Code.UNAVAILABLE, "the SC group could not replicate in time; retry")
            for rep in replies:
                if rep.status.code == Code.OK:
                    rep.status.CopyFrom(st)
                    del rep.rules[:]
        return sc_pb2.RuleReplyBatch(replies=replies)

    def _compute_one(self, r: sc_pb2.RuleRequest, ops: list) -> Outcome:
        f = r.flow
        if not r.HasField("flow"):
            self.counters.inc("malformed")
            return Outcome(Code.MALFORMED, "request has no flow")
        values = {
            "tenant_id": f.tenant_id,
            "ingress_port": f.ingress_port,
            "vni": f.vni,
            "src_addr": f.src_addr,
            "dst_addr": f.dst_addr,
            "protocol": f.protocol,
            "src_port": f.src_port,
            "dst_port": f.dst_port,
        }
        err = validate_flow(values)
        if err:
            self.counters.inc("malformed")
            return Outcome(Code.MALFORMED, err)
        key = FlowKey(f.protocol, f.src_addr, f.dst_addr, f.src_port, f.dst_port)
        return self.engine.compute(Packet(f.tenant_id, f.ingress_port, f.vni, key), ops)

    async def _proxy_compute(
        self, scg: str, reqs: list, idx: list[int], replies: list, hops: int
    ) -> None:
        address = self.head_address(scg)
        try:
            if address is None:
                raise ConnectionError(f"SCG {scg} has no head")
            got = await self.client_for(address).compute(reqs, hops=hops + 1)
            self.counters.inc("proxied", len(reqs))
            for i, rep in zip(idx, got, strict=True):
                replies[i] = rep
        except Exception as exc:
            self.counters.inc("unavailable", len(reqs))
            st = status(Code.UNAVAILABLE, f"owner SCG {scg} unreachable: {exc}")
            for i in idx:
                replies[i].status.CopyFrom(st)

    async def Release(self, request: sc_pb2.ReleaseBatch, context) -> sc_pb2.ReleaseReply:
        if not self.replicator.is_head:
            self.counters.inc("not_head")
            return sc_pb2.ReleaseReply(status=status(Code.NOT_HEAD, self.not_head_message()))
        hops = _hops(context)
        ops: list = []
        out = sc_pb2.ReleaseReply(status=status(Code.OK))
        proxied: dict[str, list] = defaultdict(list)
        for item in request.items:
            f = item.flow
            key = FlowKey(f.protocol, f.src_addr, f.dst_addr, f.src_port, f.dst_port)
            slot = item.slot if item.HasField("slot") else None
            if f.tenant_id not in self.config.tenants:
                self.counters.inc("unknown_tenant")
                out.unknown_keys += 1
                continue
            result = self.engine.release(f.tenant_id, key, slot, ops)
            if result.startswith("proxy:") and hops < MAX_HOPS:
                proxied[result[6:]].append(item)
            elif result == "freed":
                out.released_keys += 1
                out.freed_connections += 1
            elif result in ("released", "deferred"):
                out.released_keys += 1
            else:
                out.unknown_keys += 1
        seq = self.replicator.submit(*encode_ops(ops)) if ops else self.replicator.applied
        for scg, items in proxied.items():
            address = self.head_address(scg)
            if address is None:
                out.unknown_keys += len(items)
                continue
            try:
                got = await self.client_for(address).release(items, hops=hops + 1)
            except grpc.aio.AioRpcError as exc:
                out.status.CopyFrom(status(Code.UNAVAILABLE, f"owner SCG {scg}: {exc.details()}"))
                continue
            self.counters.inc("proxied", len(items))
            out.forwarded += len(items)
            out.released_keys += got.released_keys
            out.freed_connections += got.freed_connections
            out.unknown_keys += got.unknown_keys
        if not await self.replicator.commit(seq, self.config.commit_timeout_s):
            out.status.CopyFrom(
                status(Code.UNAVAILABLE, "the SC group could not replicate in time")
            )
        return out

    async def Scale(self, request: sc_pb2.ScaleRequest, context) -> sc_pb2.ScaleReply:
        if not self.replicator.is_head:
            return sc_pb2.ScaleReply(
                op_id=request.op_id, status=status(Code.NOT_HEAD, self.not_head_message())
            )
        return self.scale.start(request)

    async def ScaleStatus(self, request: sc_pb2.ScaleStatusRequest, context) -> sc_pb2.ScaleReply:
        return await self.scale.status(request.op_id, request.wait_ms / 1000)

    async def Transfer(self, request: sc_pb2.TransferRequest, context) -> sc_pb2.TransferReply:
        if not self.replicator.is_head:
            return sc_pb2.TransferReply(status=status(Code.NOT_HEAD, self.not_head_message()))
        return await self.scale.receive(request)

    async def Inspect(self, request: sc_pb2.InspectRequest, context) -> sc_pb2.InspectReply:
        shards = []
        for s in self.engine.shards():
            detail = ""
            if request.elements:
                held = [e for c in s.connections() for _, e in c.holdings]
                free = {n: p.encode() for n, p in s.pools.items()}
                detail = json.dumps({"free": free, "held": held})
            shards.append(
                sc_pb2.ShardInfo(
                    id=str(s.id),
                    state=s.state,
                    connections=s.count,
                    free=s.free(),
                    detail_json=detail,
                )
            )
        labels = {"node": self.config.node_id, "scg": self.config.scg}
        return sc_pb2.InspectReply(
            node_id=self.config.node_id,
            scg=self.config.scg,
            role=self.replicator.role(),
            epoch=self.replicator.chain.epoch,
            applied_seq=self.replicator.applied,
            committed_seq=self.replicator.acked,
            shards=shards,
            counters=dict(self.counters.values),
            metrics_text=self.counters.text(labels),
        )
