"""One SC node: the gRPC service, its place in its SCG's chain, and its etcd membership.

Everything runs on one asyncio loop: gRPC handlers, the engine (synchronous, so each batch is
decided atomically), the replication links (TCP, `replication.py`) and etcd watches; only the
membership lease is refreshed from a thread of its own (`coord.LeaseKeeper`), so a busy loop
is not taken for a dead node.

Who may call what (the caller's certificate role, `cyberstar.certs`): `Compute`, `Release`,
`ScaleStatus` and `Inspect` FM, SC nodes (passing requests on) and admins; `Scale` FM and
admins; `Transfer` SC nodes only. Batches over `limits.max_batch` are refused with
RESOURCE_EXHAUSTED, so one call's work on the loop stays bounded. FM calls Compute on the compute
link (`compute_link.py`) when the head publishes one: same roles, limits and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence

import aetcd
import grpc
from google.protobuf.message import DecodeError

from cyberstar.listen import PeerLog, bind, server_options
from cyberstar.metrics import HttpServer, Route
from cyberstar.proto import sc_pb2
from cyberstar.sc import coord
from cyberstar.sc.client import HOPS_METADATA, ScClient
from cyberstar.sc.compute_link import AnswerRoute, ComputeService
from cyberstar.sc.config import ScConfig
from cyberstar.sc.engine import Engine, Outcome, validate_flow
from cyberstar.sc.flows import FlowKey, Packet, ShardId
from cyberstar.sc.metrics import Counters
from cyberstar.sc.replication import DELIVERED, FAILED, HELLO_TIMEOUT_S, Replicator, encode_ops
from cyberstar.sc.rules import LAYOUT, fill_rule, packed_rules
from cyberstar.sc.scale import ScaleDriver
from cyberstar.sc.state import NodeState
from cyberstar.tls import client_ssl, grpc_peer, server_ssl, warn_plaintext

log = logging.getLogger(__name__)
Code = sc_pb2.Code
MAX_HOPS = 3
# The roles (certificate organizational units) each RPC takes calls from.
ALLOWED = {
    "Compute": {"fm", "sc", "admin"},
    "Release": {"fm", "sc", "admin"},
    "Scale": {"fm", "admin"},
    "ScaleStatus": {"fm", "sc", "admin"},
    "Inspect": {"fm", "sc", "admin"},
    "Transfer": {"sc"},
}
LOOP_BEAT_S = 0.5
# The chain lock lives on a lease of this TTL: a holder that dies frees it after this long.
CHAIN_LOCK_TTL_S = 10


def status(code: int, message: str = "") -> sc_pb2.Status:
    return sc_pb2.Status(code=code, message=message)


def reply_of(request_id: int, out: Outcome, packed: bool = False) -> sc_pb2.RuleReply:
    """The reply to one request; its rules packed (`flow_records`) when `packed` and they
    fit, else as protobuf rules."""
    reply = sc_pb2.RuleReply(request_id=request_id, slot=out.slot, shard=out.shard)
    reply.status.code = out.code
    if out.message:
        reply.status.message = out.message
    if packed and out.rules:
        data = packed_rules(out.tenant_id, out.rules, out.timeout_ns)
        if data is not None:
            reply.packed_rules = data
            return reply
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


class Unparsable:
    """A request that is not the message its method takes."""

    def __init__(self, kind: str, size: int) -> None:
        self.kind = kind
        self.size = size


def _lenient(message: type):
    def parse(data: bytes):
        try:
            return message.FromString(data)
        except DecodeError:
            return Unparsable(message.__name__, len(data))

    return parse


class ScNode:
    def __init__(self, config: ScConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.engine = Engine(config, self.counters)
        self.keys = coord.Keys(config.etcd_prefix)
        self.incarnation = uuid.uuid4().hex[:12]
        tls = config.tls
        for files in (tls, config.etcd.tls):
            if files is not None:
                files.read()  # unreadable certificates are bad input (exit 2), said in words
        self._server_ssl = server_ssl(tls) if tls else None
        self.replicator = Replicator(
            config.node_id,
            lambda: self.engine.state,
            self._set_state,
            self.counters,
            self._server_ssl,
            client_ssl(tls) if tls else None,
            config.limits.chain_frame_bytes,
            config.limits.chain_connections,
            answer_timeout_s=config.commit_timeout_s,
        )
        self.chains: dict[str, coord.Chain] = {}
        self.bad_values = coord.BadValues()
        self.etcd: aetcd.Client | None = None
        self.scale = ScaleDriver(self)
        self._clients: dict[str, ScClient] = {}
        self._server: grpc.aio.Server | None = None
        self._chain_server: asyncio.Server | None = None
        self.chain_address = ""
        self._compute_server: asyncio.Server | None = None
        self.compute_address = ""
        grpc_limits = config.limits.grpc
        self.compute_service = ComputeService(
            self.compute_batch,
            self.release_batch,
            tls=tls is not None,
            allowed=ALLOWED["Compute"],
            counters=self.counters,
            max_batch=config.limits.max_batch,
            max_frame=grpc_limits.max_message_bytes,
            max_connections=grpc_limits.max_connections,
            idle_timeout_s=grpc_limits.idle_timeout_s,
        )
        self.replicator.deliver = self.compute_service.deliver  # the tail answers FM
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._lease: aetcd.leases.Lease | None = None
        self._keeper: coord.LeaseKeeper | None = None
        self._claiming = False
        self._bad_requests = PeerLog(log)
        self._http: HttpServer | None = None

    def _set_state(self, state: NodeState) -> None:
        self.engine.state = state

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        config, limits = self.config, self.config.limits
        me = f"SC node {config.node_id}"
        self._server = grpc.aio.server(
            options=server_options(limits.grpc), maximum_concurrent_rpcs=limits.grpc.max_calls
        )
        self._server.add_generic_rpc_handlers((self._service(),))
        bind(self._server, config.listen, config.tls, f"{me} gRPC")
        await self._server.start()
        self._chain_server, self.chain_address = await self._listen(
            self.replicator.accept, config.chain_endpoint, f"{me} chain link"
        )
        self._compute_server, self.compute_address = await self._listen(
            self.compute_service.accept, config.compute_endpoint, f"{me} compute link"
        )
        self.etcd = await coord.connect(config.etcd, me)
        await self._register()
        self._spawn(self._watch_lease())
        self._spawn(coord.watch_prefix(self.etcd, self.keys.chains(), self._on_chains, self._stop))
        self._spawn(coord.watch_prefix(self.etcd, self.keys.members(), self._reconcile, self._stop))
        if config.metrics:
            await self._serve_metrics()
        log.info(
            "%s of %s listening on %s (chain link on %s, compute link on %s, %s), etcd %s",
            me,
            config.scg,
            config.listen,
            self.chain_address,
            self.compute_address,
            "mutual TLS" if config.tls else "PLAINTEXT",
            config.etcd.address,
        )

    async def _listen(self, factory, endpoint: tuple[str, int],
                      what: str) -> tuple[asyncio.Server, str]:  # fmt: skip
        """A listener of framed links (chain, compute) with the node's TLS: (server, address)."""
        host, port = endpoint
        try:
            server = await asyncio.get_running_loop().create_server(
                factory,
                host,
                port,
                ssl=self._server_ssl,
                ssl_handshake_timeout=HELLO_TIMEOUT_S if self.config.tls else None,
                backlog=128,
                reuse_port=False,
            )
        except OSError as exc:
            raise OSError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from None
        address = f"{host}:{server.sockets[0].getsockname()[1]}"
        if self.config.tls is None:
            warn_plaintext(what, address)
        return server, address

    async def _serve_metrics(self) -> None:
        """GET /metrics: the counters and each shard's size, read in the event loop (the state
        changes there); mutual TLS like the node's gRPC when it has TLS."""
        route = Route("GET", lambda _req: (200, "text/plain; version=0.0.4", self.metrics_text()))
        self._http = HttpServer({"/metrics": route})
        await self._http.start(self.config.metrics, self._server_ssl)

    def metrics_text(self) -> str:
        labels = f'node="{self.config.node_id}",scg="{self.config.scg}"'
        lines = [self.counters.text({"node": self.config.node_id, "scg": self.config.scg})]
        lines.append(f"cyberstar_sc_head{{{labels}}} {int(self.replicator.is_head)}")
        for shard in self.engine.shards():
            sl = f'{labels},shard="{shard.id}",state="{shard.state}"'
            lines.append(f"cyberstar_sc_shard_connections{{{sl}}} {shard.count}")
            lines.append(f"cyberstar_sc_shard_free{{{sl}}} {shard.free()}")
        return "\n".join(lines) + "\n"

    def _spawn(self, coro) -> asyncio.Task:
        """A task the node keeps a reference to (and cancels on stop); a failure is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("SC node task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            await self._http.close()
        for task in list(self._tasks):
            task.cancel()
        self.scale.close()
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
        await self.replicator.close()
        if self.etcd is not None and self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.revoke()
        for client in self._clients.values():
            await client.close()
        self.compute_service.close()
        for listener in (self._chain_server, self._compute_server):
            if listener is not None:
                listener.close()
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
            "compute": self.compute_address,
            "incarnation": self.incarnation,
        }
        await self.etcd.put(
            self.keys.member(self.config.node_id), json.dumps(value).encode(), lease=self._lease
        )
        self._keeper = coord.LeaseKeeper(
            self.config.etcd,
            self._lease.id,
            self.config.lease_ttl_s,
            stall_limit_s=max(self.config.lease_ttl_s, coord.STALL_LIMIT_S),
            what=f"SC node {self.config.node_id}",
        )
        self._keeper.start()

    async def _watch_lease(self) -> None:
        """Beat for the lease keeper; when the lease lapsed anyway (the process was stopped, the
        host starved it, etcd was away), rejoin as a new incarnation, keeping the state: the new
        predecessor sends only what this node missed if its history still matches."""
        while not self._stop.is_set():
            assert self._keeper is not None
            self._keeper.beat()
            if self._keeper.expired.is_set():
                self.counters.inc("lease_lost")
                log.warning("SC node %s: membership lease lapsed; rejoining %s (state kept)",
                            self.config.node_id, self.config.scg)  # fmt: skip
                old = self._keeper
                await asyncio.to_thread(old.stop)
                self.incarnation = uuid.uuid4().hex[:12]
                try:
                    await self._register()
                except Exception as exc:
                    log.warning("SC node %s: cannot re-register yet: %s", self.config.node_id,
                                coord.reason_of(exc))  # fmt: skip
                    self._keeper = old  # expired: tried again next beat
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), LOOP_BEAT_S)

    # -- chain membership ----------------------------------------------------------------------
    async def _reconcile(self) -> None:
        """The holder of the group's lock rewrites the chain: dead nodes out, new ones last.

        It waits for the lock rather than giving up: a node killed while holding it keeps it
        until its lease lapses, and the membership change that needs repairing may be the
        last event this watch sees."""
        assert self.etcd is not None
        lock = self.etcd.lock(self.keys.chain_lock(self.config.scg), ttl=CHAIN_LOCK_TTL_S)
        while not await lock.acquire(timeout=CHAIN_LOCK_TTL_S):
            if self._stop.is_set():
                return
        try:
            members = {}
            for kv in await self.etcd.get_prefix(self.keys.members()):
                try:
                    m = coord.parse_member(kv.value)
                except ValueError as exc:
                    self.bad_values.skip(kv, str(exc))
                    continue
                if m["scg"] == self.config.scg:
                    node_id = kv.key.decode(errors="replace").rsplit("/", 1)[1]
                    members[node_id] = (kv.create_revision, m)
            raw = await self.etcd.get(self.keys.chain(self.config.scg))
            chain = coord.Chain(self.config.scg, 0, ())
            if raw is not None:
                try:
                    chain = coord.parse_chain(self.config.scg, raw.value)
                except ValueError as exc:
                    # Rewrite it, above any epoch a node may have adopted.
                    self.bad_values.skip(raw, str(exc))
                    epoch = max(self.replicator.chain.epoch, raw.version)
                    chain = coord.Chain(self.config.scg, epoch, ())
            keep = [
                n
                for n in chain.nodes
                if n.id in members and members[n.id][1]["incarnation"] == n.incarnation
            ]
            kept = {n.id for n in keep}
            joiners = sorted((rev, nid, m) for nid, (rev, m) in members.items() if nid not in kept)
            nodes = tuple(keep) + tuple(
                coord.ChainNode(
                    nid, m["address"], m["incarnation"], m.get("chain", ""), m.get("compute", "")
                )
                for _, nid, m in joiners
            )
            if nodes != chain.nodes:
                new = coord.Chain(self.config.scg, chain.epoch + 1, nodes)
                await self.etcd.put(self.keys.chain(self.config.scg), new.to_json())
                log.info(
                    "chain of %s repaired, epoch %d: %s",
                    new.scg,
                    new.epoch,
                    " → ".join(n.id for n in nodes),
                )
        finally:
            with contextlib.suppress(Exception):
                await lock.release()

    async def _on_chains(self) -> None:
        assert self.etcd is not None
        self.chains = await coord.read_chains(self.etcd, self.keys, self.bad_values)
        mine = self.chains.get(self.config.scg)
        if mine is not None:
            self.replicator.set_chain(mine, self.incarnation)
        if self.replicator.is_head:
            self._spawn(self._claim_tenants())
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
            client = self._clients[address] = ScClient(address, self.config.tls)
        return client

    def not_head_message(self) -> str:
        chain = self.chains.get(self.config.scg)
        head = chain.head if chain else None
        where = f"; the head is {head.id} at {head.address}" if head else ""
        return f"{self.config.node_id} is not the head of {self.config.scg}{where}"

    # -- who may call, with what ----------------------------------------------------------------
    def _service(self) -> grpc.GenericRpcHandler:
        """The ServiceComputing service as the generated code registers it, except that every
        call goes through `_guarded`: a message that does not parse is refused (no traceback
        in the log), and so is a caller whose role may not call the method or a batch over
        the limit."""
        service = sc_pb2.DESCRIPTOR.services_by_name["ServiceComputing"]
        handlers = {}
        for method in service.methods:
            request = getattr(sc_pb2, method.input_type.name)
            reply = getattr(sc_pb2, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(method.name),
                request_deserializer=_lenient(request),
                response_serializer=reply.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service.full_name, handlers)

    def _guarded(self, method: str):
        serve = getattr(self, method)

        async def call(request, context):
            if isinstance(request, Unparsable):
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                                   f"{method}: {request.size} bytes that are not a "
                                   f"{request.kind}")  # fmt: skip
            peer = grpc_peer(context)
            if peer is not None and peer.role not in ALLOWED[method]:
                await self._refuse(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method} is not open to {peer.role}:{peer.name} "
                    f"(allowed roles: {', '.join(sorted(ALLOWED[method]))})",
                )
            items = len(request.requests) if method == "Compute" else (
                len(request.items) if method == "Release" else 0)  # fmt: skip
            limit = self.config.limits.max_batch
            if items > limit:
                await self._refuse(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{method} of {items} items: at most {limit} per call; split the batch",
                )
            return await serve(request, context)

        return call

    async def _refuse(self, context, code: grpc.StatusCode, message: str) -> None:
        self.counters.inc("refused_calls")
        self._bad_requests.bad_request(context.peer(), message)
        await context.abort(code, message)

    # -- FM-facing RPCs ------------------------------------------------------------------------
    async def Compute(self, request: sc_pb2.RuleBatch, context) -> sc_pb2.RuleReplyBatch:
        return await self.compute_batch(request, _hops(context))

    async def compute_batch(
        self, request: sc_pb2.RuleBatch, hops: int, route: AnswerRoute | None = None
    ) -> sc_pb2.RuleReplyBatch | None:
        """A Compute, from gRPC or the compute link (`hops`: SCGs it was passed through).

        With a `route` (the caller listens on the tail) and a change to replicate or one under
        way, the answer goes down the chain in an update and None is returned: the tail sends
        it, or this node does through `route` when the tail could not (`_settle_answer`)."""
        reqs = request.requests
        if not self.replicator.is_head:
            self.counters.inc("not_head", len(reqs))
            st = status(Code.NOT_HEAD, self.not_head_message())
            return sc_pb2.RuleReplyBatch(
                replies=[sc_pb2.RuleReply(request_id=r.request_id, status=st) for r in reqs]
            )
        ops: list = []
        replies: list[sc_pb2.RuleReply] = []
        proxied: dict[str, list[int]] = defaultdict(list)
        packed = request.packed_layout == LAYOUT.digest
        for i, r in enumerate(reqs):
            out = self._compute_one(r, ops)
            if out.proxy_to and hops < MAX_HOPS:
                proxied[out.proxy_to].append(i)
            replies.append(reply_of(r.request_id, out, packed))
        if packed:
            self.counters.inc("packed_replies", sum(1 for rep in replies if rep.packed_rules))
        repl = self.replicator
        under_way = repl.acked < repl.applied  # a reply may depend on an update under way
        if route is not None and not proxied and repl.successor is not None and (ops or under_way):
            batch = sc_pb2.RuleReplyBatch(replies=replies)
            answer = sc_pb2.ComputeAnswer(call_id=route.call_id, batch=batch).SerializeToString()
            repl.submit(
                *encode_ops(ops),
                answer=answer,
                answer_token=route.token,
                settled=lambda outcome: self._settle_answer(route, answer, batch, outcome),
            )
            self.counters.inc("answers_passed_on")
            return None
        seq = self.replicator.submit(*encode_ops(ops)) if ops else self.replicator.applied
        if proxied:
            await asyncio.gather(
                *(
                    self._proxy_compute(
                        scg, [reqs[i] for i in idx], idx, replies, hops, request.packed_layout
                    )
                    for scg, idx in proxied.items()
                )
            )
        if not await self.replicator.commit(seq, self.config.commit_timeout_s):
            self._not_replicated(replies)
        return sc_pb2.RuleReplyBatch(replies=replies)

    def _not_replicated(self, replies: Sequence[sc_pb2.RuleReply]) -> None:
        self.counters.inc("unavailable", len(replies))
        st = status(Code.UNAVAILABLE, "the SC group could not replicate in time; retry")
        for rep in replies:
            if rep.status.code == Code.OK:
                rep.status.CopyFrom(st)
                del rep.rules[:]
                rep.ClearField("packed_rules")

    def _settle_answer(
        self, route: AnswerRoute, answer: bytes, batch: sc_pb2.RuleReplyBatch, outcome: str
    ) -> None:
        """What the head does once a passed-through answer's update is settled: nothing when
        the tail sent it; send it when the tail may not have; UNAVAILABLE when the update was
        not committed (the caller ignores an answer to a call it has its answer to)."""
        if outcome == DELIVERED:
            return
        if outcome == FAILED:
            self._not_replicated(batch.replies)
            answer = sc_pb2.ComputeAnswer(call_id=route.call_id, batch=batch).SerializeToString()
        self.counters.inc("answers_sent_by_head")
        route.send(answer)

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
        self, scg: str, reqs: list, idx: list[int], replies: list, hops: int, packed_layout: int
    ) -> None:
        address = self.head_address(scg)
        try:
            if address is None:
                raise ConnectionError(f"SCG {scg} has no head")
            got = await self.client_for(address).compute(
                reqs, hops=hops + 1, packed_layout=packed_layout
            )
            self.counters.inc("proxied", len(reqs))
            for i, rep in zip(idx, got, strict=True):
                replies[i] = rep
        except Exception as exc:
            self.counters.inc("unavailable", len(reqs))
            st = status(Code.UNAVAILABLE, f"owner SCG {scg} unreachable: {exc}")
            for i in idx:
                replies[i].status.CopyFrom(st)

    async def Release(self, request: sc_pb2.ReleaseBatch, context) -> sc_pb2.ReleaseReply:
        return await self.release_batch(request, _hops(context))

    async def release_batch(self, request: sc_pb2.ReleaseBatch, hops: int) -> sc_pb2.ReleaseReply:
        """A Release, from gRPC or the compute link (`hops`: SCGs it was passed through)."""
        if not self.replicator.is_head:
            self.counters.inc("not_head")
            return sc_pb2.ReleaseReply(status=status(Code.NOT_HEAD, self.not_head_message()))
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
