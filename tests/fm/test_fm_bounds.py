"""FM's slow path under a careless or hostile load (issue 8), with FM's own SlowPath, a real SC
engine's replies and real gRPC; the PP session is a double whose writes fail, since a real PP
that refuses FM's writes is what this is about.

* One tenant's flood of new flows delays another tenant's first packet by at most one batch,
  and is shed (counted per tenant) when its queue is full.
* A connection whose rules could not be written is released in SC after its idle timeout; the
  unhardened FM returned before caching it and its SNAT port leaked for ever.
* An SC reply batch of the wrong length leaves nothing pending; it used to raise in the router
  and leave the flows pending (black-holed) until FM restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time

import grpc
import pytest
from finsy.proto import p4r
from sc.helpers import ask, engine_from, tcp
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from cyberstar.fm.cache import RuleCache
from cyberstar.fm.config import QueueConfig
from cyberstar.fm.fairqueue import FairQueue
from cyberstar.fm.slowpath import PACKET_IN_FIELDS, SlowPath
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import sc_pb2
from cyberstar.sc.client import Request
from cyberstar.sc.flows import FlowKey, Packet, ShardId
from cyberstar.sc.routing import Released, Route, ScRouter
from cyberstar.sc.server import reply_of

TENANTS = """\
  - id: 7
    chain: [nat]
    forward_nexthop: 2
    return_nexthop: 1
    idle_timeout_s: 0.3
    nfs:
      nat: {kind: snat, pool: ["203.0.113.9:20000-20009"]}
"""


def test_a_flooding_tenant_waits_its_turn_and_is_shed() -> None:
    q: FairQueue[str] = FairQueue(total=1000, per_tenant=800)
    for i in range(5000):
        q.put(7, f"flood{i}")
    assert q.shed[7] == 5000 - 800 and len(q) == 800
    for i in range(200):
        assert q.put(8, f"t8-{i}")
    # The queue is full: a newcomer's packets get in, the longest queue (the flood) pays.
    for i in range(5):
        assert q.put(9, f"t9-{i}")
    assert q.shed == {7: 4205} and len(q) == 1000
    # Round robin: every waiting tenant's first packet is in the next batch.
    assert q.take(3) == ["flood0", "t8-0", "t9-0"]
    assert len(q.take(256)) == 256


def packet_in(tenant: int, sport: int) -> p4r.PacketIn:
    frame = bytes(Ether() / IP(src="10.1.0.2", dst="10.2.0.2") / TCP(sport=sport, dport=8080))
    pin = p4r.PacketIn(payload=frame)
    pin.metadata.add(metadata_id=PACKET_IN_FIELDS["ingress_port"], value=b"\x01")
    pin.metadata.add(metadata_id=PACKET_IN_FIELDS["tenant_id"], value=tenant.to_bytes(2, "big"))
    return pin


class FailingSession:
    """A PP session whose writes fail (e.g. its table is full, or it restarted meanwhile),
    written by the Write RPC or, for a node that takes them, as StreamWrites (whose packets
    the node would not send)."""

    index, name, packet_ins = 0, "pp1", 0

    def __init__(self, stream_writes: bool) -> None:
        self.stream_writes = stream_writes
        self.rule_writes = {"stream": 0, "rpc": 0}
        self.written: list[p4r.Update] = []
        self.sent = 0

    async def write(self, updates: list[p4r.Update]) -> None:
        assert not self.stream_writes
        self._refuse(updates)

    async def stream_write(self, updates: list[p4r.Update], packets) -> None:
        assert self.stream_writes
        self._refuse(updates)

    def _refuse(self, updates: list[p4r.Update]) -> None:
        self.written += updates
        errors = [(i, "RESOURCE_EXHAUSTED", "table full") for i in range(len(updates))]
        raise P4RuntimeError(grpc.StatusCode.UNKNOWN, "every update failed", errors)

    async def packet_out(self, payload: bytes, metadata, on_sent=None) -> None:
        self.sent += 1


class OneHeadMap:
    """Every flow routes to one head (what ShardMap answers when one SCG owns the tenant)."""

    def __init__(self, head: str) -> None:
        self.head = head

    def route(self, tenant_id: int, key: FlowKey) -> Route:
        return Route(ShardId.whole(tenant_id), 0, "scg1", self.head)

    def compute_address(self, head: str) -> str:
        return ""  # the head publishes no compute link: Compute goes over gRPC


class EngineRouter:
    """A router in front of a real SC engine: what an SC group would answer."""

    def __init__(self, packed: bool = False, damage=None) -> None:
        self.engine = engine_from(TENANTS)
        self.map = OneHeadMap("here")
        self.released: list = []
        self.packed = packed  # answer with packed rules, as SC does when FM asks
        self.damage = damage  # what to do to the packed rules on the way

    async def compute(self, requests: list[Request]) -> list[sc_pb2.RuleReply]:
        out = []
        for r in requests:
            result = ask(self.engine, r.packet.tenant_id, r.packet.key)
            reply = reply_of(r.request_id, result, self.packed)
            if self.damage is not None:
                reply.packed_rules = self.damage(reply.packed_rules)
            out.append(reply)
        return out

    async def release(self, keys) -> Released:
        self.released += keys
        return Released(sc_pb2.ReleaseReply(status=sc_pb2.Status(code=sc_pb2.OK)), [])


@pytest.mark.parametrize("stream_writes", [False, True], ids=["write-rpc", "stream-write"])
def test_a_connection_whose_rules_were_not_written_is_released(stream_writes: bool) -> None:
    async def go() -> None:
        router = EngineRouter()
        slow = SlowPath(RuleCache(PIPELINE), router, 16, 0.0)
        session = FailingSession(stream_writes)
        sweeper = asyncio.create_task(slow.sweep_orphans(interval_s=0.1))
        try:
            await slow._process([(session, packet_in(7, 40000), time.monotonic())])
            assert len(session.written) == 2 and session.sent == 0
            assert slow.stats["connections_not_installed"] == 1
            for _ in range(30):
                if router.released:
                    break
                await asyncio.sleep(0.1)
        finally:
            sweeper.cancel()
        keys = {(k.tenant_id, k.key) for k in router.released}
        assert (7, tcp("10.1.0.2", 40000, "10.2.0.2", 8080)) in keys
        assert len(keys) == 2, "the forward and the return key of the connection"
        assert len(slow.cache) == 0

    asyncio.run(go())


async def _short_sc() -> tuple[grpc.aio.Server, int]:
    """A misbehaving SC node: it answers every Compute batch with one reply too few."""

    async def compute(request: sc_pb2.RuleBatch, context) -> sc_pb2.RuleReplyBatch:
        st = sc_pb2.Status(code=sc_pb2.UNKNOWN_TENANT, message="no")
        return sc_pb2.RuleReplyBatch(
            replies=[sc_pb2.RuleReply(request_id=r.request_id, status=st)
                     for r in request.requests[:-1]]
        )  # fmt: skip

    handler = grpc.method_handlers_generic_handler(
        "cyberstar.sc.v1.ServiceComputing",
        {"Compute": grpc.unary_unary_rpc_method_handler(
            compute, request_deserializer=sc_pb2.RuleBatch.FromString,
            response_serializer=sc_pb2.RuleReplyBatch.SerializeToString)},
    )  # fmt: skip
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_fm_writes_the_same_updates_from_packed_rules() -> None:
    """SC's packed rules (what FM asks for) and its protobuf rules become the same P4Runtime
    updates; packed rules that break the layout are refused like a bad protobuf rule: counted,
    nothing written, nothing left pending."""

    async def written(router: EngineRouter) -> tuple[list, SlowPath]:
        slow = SlowPath(RuleCache(PIPELINE), router, 16, 0.0)
        slow._conn_ids = itertools.count(1 << 40)  # the cookies' connection ids, in both runs
        session = FailingSession(stream_writes=True)
        await slow._process([(session, packet_in(7, 43000 + i), time.monotonic())
                             for i in range(3)])  # fmt: skip
        return session.written, slow

    async def go() -> None:
        plain, _ = await written(EngineRouter())
        packed, _ = await written(EngineRouter(packed=True))
        assert len(plain) == 6 and packed == plain
        bad, slow = await written(EngineRouter(packed=True, damage=lambda b: b[:-1]))
        assert bad == [] and slow.stats["sc_bad_rules"] == 3 and slow._pending == {}

    asyncio.run(go())


def test_a_reply_batch_of_the_wrong_length_leaves_nothing_pending() -> None:
    async def go() -> None:
        server, port = await _short_sc()
        router = ScRouter(OneHeadMap(f"127.0.0.1:{port}"), None, attempts=2, pause_s=0.01)
        try:
            reqs = [Request(i, Packet(7, 1, 0, tcp("10.1.0.2", 40000 + i, "10.2.0.2", 80)))
                    for i in range(1, 4)]  # fmt: skip
            replies = await router.compute(reqs)
            assert [r.request_id for r in replies] == [1, 2, 3]
            assert replies[2].status.code == sc_pb2.UNAVAILABLE
            assert re.search(r"answered \d+ replies to \d+ requests", replies[2].status.message)
            slow = SlowPath(RuleCache(PIPELINE), router, 16, 0.0, queue=QueueConfig())
            session = FailingSession(stream_writes=False)
            await slow._process(
                [(session, packet_in(7, 41000 + i), time.monotonic()) for i in range(3)]
            )
            assert slow._pending == {}, "flows left pending: black-holed until FM restarts"
        finally:
            await router.close()
            await server.stop(0)

    asyncio.run(go())


def test_an_sc_error_leaves_nothing_pending() -> None:
    class Broken(EngineRouter):
        async def compute(self, requests):
            raise ConnectionError("the SC group went away")

    async def go() -> None:
        slow = SlowPath(RuleCache(PIPELINE), Broken(), 16, 0.0)
        with contextlib.suppress(ConnectionError):
            session = FailingSession(stream_writes=False)
            await slow._process([(session, packet_in(7, 42000), time.monotonic())])
        assert slow._pending == {} and slow.stats["sc_unanswered"] == 1

    asyncio.run(go())


def test_packet_ins_queue_by_tenant() -> None:
    async def go() -> None:
        slow = SlowPath(RuleCache(PIPELINE), EngineRouter(), 16, 0.0,
                        queue=QueueConfig(max_packets=100, per_tenant=10))  # fmt: skip
        session = FailingSession(stream_writes=False)
        for i in range(50):
            slow.on_packet_in(session, packet_in(7, 43000 + i))
        slow.on_packet_in(session, packet_in(8, 44000))
        assert slow.stats["packet_in_shed"] == 40 and slow.queue.shed == {7: 40}
        first = slow.queue.take(2)
        assert {int.from_bytes(p.metadata[1].value, "big") for _, p, _ in first} == {7, 8}

    asyncio.run(go())


def test_the_stream_queues_from_a_pp_are_bounded() -> None:
    """A PP streaming PacketIns faster than FM takes them costs dropped (counted) messages,
    not FM's memory: the unhardened client queued them without bound."""
    from cyberstar.p4rt.aio_client import QUEUE_LIMIT, AioP4RuntimeClient, route_stream_message

    async def go() -> None:
        client = AioP4RuntimeClient("unix:/nonexistent.sock", 1, 1, tls=None)
        try:
            message = p4r.StreamMessageResponse(packet=p4r.PacketIn(payload=b"x" * 60))
            for _ in range(QUEUE_LIMIT + 1000):
                route_stream_message(message, client._sinks, "pp")
            assert client.packet_ins.qsize() == QUEUE_LIMIT and client.dropped == 1000
        finally:
            await client.close()

    asyncio.run(go())
