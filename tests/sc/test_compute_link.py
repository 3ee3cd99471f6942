"""The compute link (`cyberstar.sc.compute_link`): FM's Compute to an SC head without gRPC,
held to the gRPC Compute's answers and tried as a hostile caller would (issue 9: the gRPC call
was most of FM's CPU per batch; every listening socket is a door)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import pytest

from cyberstar.lab.procs import free_port
from cyberstar.lab.sc import ScLab, ScProcess, rule_key
from cyberstar.lab.wait import wait_until_async
from cyberstar.proto import sc_pb2
from cyberstar.sc.client import ReleaseKey, Request, ScClient
from cyberstar.sc.compute_link import ComputeLinkClient, ComputeLinkError
from cyberstar.sc.flows import FlowKey, Packet
from cyberstar.sc.replication import ChainLink
from cyberstar.sc.routing import ScRouter, ShardMap
from cyberstar.tls import client_ssl
from sc import chainwire
from sc.test_chain import TENANTS
from sc.test_sc_security import chain_of, inspect, run

pytestmark = pytest.mark.usefixtures("need_etcd")


@pytest.fixture(scope="module")
def lab():
    with ScLab(TENANTS, lease_ttl_s=3) as lab:
        lab.add_scg("scg1", 3)
        run(chain_of(lab))
        yield lab


def flows(first: int, n: int) -> list[sc_pb2.RuleRequest]:
    return [
        sc_pb2.RuleRequest(request_id=i, flow=sc_pb2.Flow(
            tenant_id=7, ingress_port=1, src_addr=0x0A000001 + i, dst_addr=0x5DB8D801,
            protocol=6, src_port=40000, dst_port=443))
        for i in range(first, first + n)
    ]  # fmt: skip


async def link_compute(address: str, tls, batches: list[list[sc_pb2.RuleRequest]]) -> list:
    client = ComputeLinkClient(address, client_ssl(tls), timeout_s=10)
    try:
        return await asyncio.gather(*(client.compute(b) for b in batches))
    finally:
        await client.close()


async def grpc_compute(address: str, tls, batch: list[sc_pb2.RuleRequest]) -> list:
    async with ScClient(address, tls) as c:
        return await c.compute(batch)


def test_the_link_answers_as_the_grpc_compute(lab: ScLab) -> None:
    head = run(chain_of(lab)).nodes[0]
    assert head.compute and head.compute != head.address
    fm = lab.certs.files("fm", "fm-link")
    before = run(inspect(head.address, lab.client_tls)).counters
    # 40 calls in flight on one connection (more than a connection's calls served at once),
    # answered in the order they end: each answer must reach its own call.
    batches = [flows(1000 + 10 * i, 1 + i % 10) for i in range(40)]
    answers = run(link_compute(head.compute, fm, batches))
    for batch, replies in zip(batches, answers, strict=True):
        assert [r.request_id for r in replies] == [r.request_id for r in batch]
        assert all(r.status.code == sc_pb2.OK and r.rules for r in replies)
    # The same flows through gRPC: the connections the link created, the same rules.
    again = run(grpc_compute(head.address, fm, [r for b in batches for r in b]))
    assert again == [r for a in answers for r in a]
    after = run(inspect(head.address, lab.client_tls)).counters
    n = sum(len(b) for b in batches)
    assert after["link_calls"] - before["link_calls"] == 40
    assert after["connections_created"] - before["connections_created"] == n
    assert after["cache_hits"] - before["cache_hits"] == n


def test_packed_replies_carry_the_rules_of_the_protobuf_ones(lab: ScLab) -> None:
    """FM asks for its packed records (`RuleBatch.packed_layout`); the rules they hold are the
    protobuf replies' rules, read by the general parser. A caller of another layout gets
    protobuf rules."""
    from cyberstar.fm.cache import RuleCodec, connection_cookie
    from cyberstar.pipeline.pp import PIPELINE
    from cyberstar.sc.rules import table_entry

    head = run(chain_of(lab)).nodes[0]
    fm = lab.certs.files("fm", "fm-packed")
    codec = RuleCodec(PIPELINE)
    batch = flows(3000, 6)

    async def calls() -> tuple[list, list, list]:
        client = ComputeLinkClient(head.compute, client_ssl(fm), timeout_s=10)
        try:
            packed = await client.compute(batch, packed_layout=codec.layout.digest)
            other = await client.compute(batch, packed_layout=codec.layout.digest ^ 1)
        finally:
            await client.close()
        return packed, other, await grpc_compute(head.address, fm, batch)

    before = run(inspect(head.address, lab.client_tls)).counters
    packed, other, plain = run(calls())
    after = run(inspect(head.address, lab.client_tls)).counters
    assert after["packed_replies"] - before["packed_replies"] == len(batch)
    assert other == plain and all(r.rules and not r.packed_rules for r in plain)
    for p, r in zip(packed, plain, strict=True):
        assert p.packed_rules and not p.rules
        assert (p.request_id, p.status, p.slot, p.shard) == (r.request_id, r.status, r.slot,
                                                             r.shard)  # fmt: skip
        conn = codec.from_packed(9, p.slot, p.packed_rules)
        cookie = connection_cookie(9, r.slot)
        assert [c.entry for c in conn.rules] == [
            dataclasses.replace(table_entry(rule), metadata=cookie) for rule in r.rules
        ]


def test_fm_routes_compute_over_the_link(lab: ScLab) -> None:
    chain = run(chain_of(lab))
    head = chain.nodes[0]

    async def route() -> list:
        smap = ShardMap(lab.etcd_config())
        await smap.start()
        router = ScRouter(smap, lab.certs.files("fm", "fm-router"))
        try:
            assert smap.compute_address(head.address) == head.compute
            assert isinstance(router.compute_client(head.address), ComputeLinkClient)
            key = FlowKey(6, 0x0A000099, 0x5DB8D801, 40001, 443)
            return await router.compute([Request(1, Packet(7, 1, 0, key))])
        finally:
            await router.close()
            await smap.close()

    before = run(inspect(head.address, lab.client_tls)).counters["link_calls"]
    (reply,) = run(route())
    assert reply.status.code == sc_pb2.OK and reply.rules
    assert run(inspect(head.address, lab.client_tls)).counters["link_calls"] == before + 1


def test_fm_uses_grpc_when_the_link_cannot_be_reached(lab: ScLab, caplog) -> None:
    head = run(chain_of(lab)).nodes[0]

    async def route() -> list:
        smap = ShardMap(lab.etcd_config())
        await smap.start()
        smap.compute_address = lambda _head: f"127.0.0.1:{free_port()}"  # nobody listens
        router = ScRouter(smap, lab.certs.files("fm", "fm-fallback"))
        try:
            key = FlowKey(6, 0x0A000098, 0x5DB8D801, 40002, 443)
            (reply,) = await router.compute([Request(1, Packet(7, 1, 0, key))])
            keys = [ReleaseKey(7, rule_key(r), reply.slot) for r in reply.rules]
            return reply, await router.release(keys)
        finally:
            await router.close()
            await smap.close()

    before = run(inspect(head.address, lab.client_tls)).counters
    reply, released = run(route())
    assert reply.status.code == sc_pb2.OK and reply.rules
    assert (released.failed, released.reply.freed_connections) == ([], 1)
    after = run(inspect(head.address, lab.client_tls)).counters
    assert after["requests"] == before["requests"] + 1
    assert after["freed_connections"] == before["freed_connections"] + 1
    assert after["link_calls"] == before["link_calls"]
    assert re.search(r"SC compute link 127\.0\.0\.1:\d+: cannot connect: .*; using gRPC to "
                     + re.escape(head.address), caplog.text)  # fmt: skip


def test_the_link_is_open_only_to_compute_roles(lab: ScLab) -> None:
    head = run(chain_of(lab)).nodes[0]
    before = run(inspect(head.address, lab.client_tls)).counters
    for role in ("pp", "etcd"):
        with pytest.raises(ComputeLinkError, match="the link closed"):
            run(link_compute(head.compute, lab.certs.files(role, f"{role}-x"), [flows(1, 1)]))
    # Plaintext to the TLS listener: no answer, the connection is closed.
    with chainwire.connect(head.compute, None) as sock:
        call = sc_pb2.ComputeCall(call_id=1, batch=sc_pb2.RuleBatch(requests=flows(1, 1)))
        chainwire.send_frame(sock, call.SerializeToString())
        assert chainwire.closed_by_peer(sock, 15)
    after = run(inspect(head.address, lab.client_tls)).counters
    assert after["refused_calls"] == before["refused_calls"] + 2
    assert after["requests"] == before["requests"]
    assert after["link_calls"] == before["link_calls"]


def test_garbage_oversized_frames_and_batches_are_refused(lab: ScLab) -> None:
    head = run(chain_of(lab)).nodes[0]
    fm = lab.certs.files("fm", "fm-garbage")
    refused = run(inspect(head.address, lab.client_tls)).counters["refused_calls"]
    # A frame that is not a ComputeCall closes its connection, without an answer.
    with chainwire.connect(head.compute, fm) as sock:
        chainwire.send_frame(sock, b"\xff\xff\xff\x07")
        assert chainwire.read_frame(sock) is None
    # A frame announced over the message limit (64 MiB) is refused at its length.
    with chainwire.connect(head.compute, fm) as sock:
        sock.sendall(chainwire.FRAME.pack((64 << 20) + 1))
        assert chainwire.closed_by_peer(sock, 15)
    # A batch over max_batch (1024) is refused whole; the connection goes on.
    with chainwire.connect(head.compute, fm) as sock:
        huge = sc_pb2.ComputeCall(call_id=5, batch=sc_pb2.RuleBatch(requests=flows(0, 1025)))
        chainwire.send_frame(sock, huge.SerializeToString())
        answer = sc_pb2.ComputeAnswer.FromString(chainwire.read_frame(sock))
        assert answer.call_id == 5 and answer.error.code == sc_pb2.MALFORMED
        assert (
            answer.error.message == "Compute of 1025 items: at most 1024 per call; split the batch"
        )
        assert not answer.batch.replies
        ok = sc_pb2.ComputeCall(call_id=6, batch=sc_pb2.RuleBatch(requests=flows(5000, 1)))
        chainwire.send_frame(sock, ok.SerializeToString())
        answer = sc_pb2.ComputeAnswer.FromString(chainwire.read_frame(sock))
        assert answer.call_id == 6 and answer.batch.replies[0].status.code == sc_pb2.OK
        # So is a Release over max_batch.
        items = [sc_pb2.ReleaseItem(flow=r.flow) for r in flows(0, 1025)]
        huge = sc_pb2.ComputeCall(call_id=7, release=sc_pb2.ReleaseBatch(items=items))
        chainwire.send_frame(sock, huge.SerializeToString())
        answer = sc_pb2.ComputeAnswer.FromString(chainwire.read_frame(sock))
        assert answer.call_id == 7 and answer.error.code == sc_pb2.MALFORMED
        assert (
            answer.error.message == "Release of 1025 items: at most 1024 per call; split the batch"
        )
        assert not answer.HasField("released")
    info = run(inspect(head.address, lab.client_tls))
    assert info.counters["refused_calls"] == refused + 4
    assert info.role == "head" and "Traceback" not in lab.nodes[head.id].log.read_text()


def test_connections_are_capped_and_idle_ones_closed(lab: ScLab) -> None:
    config = lab.node_config("scg9-0", "scg9")
    config["limits"] = {"max_connections": 2, "idle_timeout_s": 3}
    node = ScProcess(config, lab.workdir)
    lab.nodes["scg9-0"] = node
    node.start()

    async def head_of_scg9():
        smap = ShardMap(lab.etcd_config())
        await smap.start()
        try:
            await smap.wait_until(lambda m: "scg9" in m.chains and m.chains["scg9"].nodes, 30)
            return smap.chains["scg9"].nodes[0]
        finally:
            await smap.close()

    head = run(head_of_scg9())
    fm = lab.certs.files("fm", "fm-idle")
    socks = [chainwire.connect(head.compute, fm) for _ in range(3)]
    try:
        # Over the cap: closed at once; the others are held until idle for 3 s. The held ones
        # are looked at briefly so the looking ends (about 2 s) before they can be idle.
        assert chainwire.closed_by_peer(socks[2], 1.0)
        assert [chainwire.closed_by_peer(s, 0.5) for s in socks[:2]] == [False, False]
        t0 = time.monotonic()
        assert all(chainwire.closed_by_peer(s, 15) for s in socks[:2])
        assert time.monotonic() - t0 < 10  # idle for 3 s, checked every 3 s
    finally:
        for s in socks:
            s.close()
    info = run(inspect(head.address, lab.client_tls))
    assert info.counters["refused_calls"] == 1


def test_fm_computes_and_releases_more_than_one_call_may_carry(lab: ScLab) -> None:
    """Whatever a caller hands FM's router — first packets, or the thousands of rules a PP's
    idle scan may report at once — it must split: an SC node refuses a call of more than its
    max_batch (1024) items whole."""
    head = run(chain_of(lab)).nodes[0]
    n = 1300  # connections in one Compute batch, then 2 600 keys (forward, return) released

    async def go():
        smap = ShardMap(lab.etcd_config())
        await smap.start()
        router = ScRouter(smap, lab.certs.files("fm", "fm-release"), attempts=2)
        try:
            reqs = [Request(i + 1, Packet(7, 1, 0, FlowKey(6, 0x0A100000 + i, 0x5DB8D801,
                                                           40000, 443)))
                    for i in range(n)]  # fmt: skip
            replies = await router.compute(reqs)
            assert [r.request_id for r in replies] == list(range(1, n + 1))
            keys = []
            for reply in replies:
                assert reply.status.code == sc_pb2.OK, reply.status
                keys += [ReleaseKey(7, rule_key(r), reply.slot) for r in reply.rules]
            return await router.release(keys)
        finally:
            await router.close()
            await smap.close()

    before = run(inspect(head.address, lab.client_tls)).counters
    done = run(go())
    assert done.failed == [] and done.reply.status.code == sc_pb2.OK, done.reply.status
    assert (done.reply.released_keys, done.reply.freed_connections) == (2 * n, n), done.reply
    after = run(inspect(head.address, lab.client_tls)).counters
    assert after["freed_connections"] - before["freed_connections"] == n
    assert after["refused_calls"] == before["refused_calls"]
    # Both went over the compute link, in calls of at most 256 items: 1 300 requests in 6
    # Computes, 2 600 keys in 11 Releases.
    assert after["link_calls"] - before["link_calls"] == 6 + 11


async def listening_client(head, tail_compute: str, tls) -> ComputeLinkClient:
    client = ComputeLinkClient(head.compute, client_ssl(tls), timeout_s=10)
    client.use_tail(tail_compute)
    await wait_until_async(lambda: client.listening, 10, "the tail to register the token")
    return client


def test_the_tail_answers_a_client_that_listens_there(lab: ScLab) -> None:
    """Packet-pass-through (paper §3.2): the head puts the answer in the update and the tail
    sends it once it applied the update; the head neither answers nor waits for the
    acknowledgement, which comes later, for several updates at once."""
    chain = run(chain_of(lab))
    head, tail = chain.nodes[0], chain.nodes[-1]
    fm = lab.certs.files("fm", "fm-passthrough")
    batches = [flows(6000 + 10 * i, 1 + i % 4) for i in range(6)]

    async def calls() -> list:
        client = await listening_client(head, tail.compute, fm)
        try:
            return [await client.compute(b) for b in batches]
        finally:
            await client.close()

    before = {n.id: run(inspect(n.address, lab.client_tls)).counters for n in chain.nodes}
    answers = run(calls())
    # The answers are the gRPC Compute's for the same flows (stored connections by now).
    again = run(grpc_compute(head.address, fm, [r for b in batches for r in b]))
    assert again == [r for a in answers for r in a]
    assert all(r.status.code == sc_pb2.OK and r.rules for a in answers for r in a)
    after = {n.id: run(inspect(n.address, lab.client_tls)).counters for n in chain.nodes}

    def grew(node, counter: str) -> int:
        return after[node.id][counter] - before[node.id][counter]

    assert grew(head, "answers_passed_on") == 6
    assert grew(tail, "answers_delivered") == 6
    assert grew(head, "answers_sent_by_head") == 0
    assert grew(tail, "answers_undelivered") == 0

    # The held-back acknowledgement reaches the head: everything it applied is committed.
    async def committed() -> bool:
        info = await inspect(head.address, lab.client_tls)
        return info.committed_seq == info.applied_seq

    run(wait_until_async(committed, 5, "the head to learn the tail applied it all"))


def test_the_head_answers_when_the_tail_has_no_listener(lab: ScLab) -> None:
    """A client that registered its token on the middle instead (as FM may, the moment the
    chain changes): the tail finds nobody to send to, says so in its acknowledgement, and the
    head answers once the update is committed."""
    chain = run(chain_of(lab))
    head, middle, tail = chain.nodes
    fm = lab.certs.files("fm", "fm-no-listener")
    batch = flows(7000, 3)

    async def call() -> list:
        client = await listening_client(head, middle.compute, fm)
        try:
            return await client.compute(batch)
        finally:
            await client.close()

    before = {n.id: run(inspect(n.address, lab.client_tls)).counters for n in chain.nodes}
    replies = run(call())
    assert [r.request_id for r in replies] == [r.request_id for r in batch]
    assert all(r.status.code == sc_pb2.OK and r.rules for r in replies)
    after = {n.id: run(inspect(n.address, lab.client_tls)).counters for n in chain.nodes}
    assert after[head.id]["answers_passed_on"] - before[head.id]["answers_passed_on"] == 1
    assert after[tail.id]["answers_undelivered"] - before[tail.id]["answers_undelivered"] == 1
    assert after[head.id]["answers_sent_by_head"] - before[head.id]["answers_sent_by_head"] == 1
    assert after[middle.id]["answers_delivered"] == before[middle.id]["answers_delivered"]


def test_listen_takes_tokens_of_bounded_size_and_number(lab: ScLab) -> None:
    tail = run(chain_of(lab)).nodes[-1]
    fm = lab.certs.files("fm", "fm-listen")
    refused = run(inspect(tail.address, lab.client_tls)).counters["refused_calls"]
    with chainwire.connect(tail.compute, fm) as sock:

        def listen(call_id: int, token: bytes) -> sc_pb2.ComputeAnswer:
            call = sc_pb2.ComputeCall(call_id=call_id, listen=token)
            chainwire.send_frame(sock, call.SerializeToString())
            return sc_pb2.ComputeAnswer.FromString(chainwire.read_frame(sock))

        for call_id, size in ((1, 15), (2, 65)):
            answer = listen(call_id, b"t" * size)
            assert answer.call_id == call_id and answer.error.code == sc_pb2.MALFORMED
            assert f"a token of {size} bytes" in answer.error.message
        for i in range(16):  # MAX_TOKENS
            assert not listen(10 + i, bytes([i]) * 16).HasField("error")
        assert not listen(40, bytes([3]) * 16).HasField("error")  # again: not a new one
        answer = listen(41, b"\xee" * 16)
        assert answer.error.code == sc_pb2.MALFORMED and "at most 16" in answer.error.message
        # The connection goes on: a Compute on it is answered.
        ok = sc_pb2.ComputeCall(call_id=42, batch=sc_pb2.RuleBatch(requests=flows(7100, 1)))
        chainwire.send_frame(sock, ok.SerializeToString())
        answer = sc_pb2.ComputeAnswer.FromString(chainwire.read_frame(sock))
        assert answer.call_id == 42 and answer.batch.replies[0].status.code == sc_pb2.NOT_HEAD
    info = run(inspect(tail.address, lab.client_tls))
    assert info.counters["refused_calls"] == refused + 3


def test_a_call_fails_at_once_when_the_tail_connection_it_awaits_closes() -> None:
    """The answer of a call that named the token may have been on its way over the tail's
    connection when it closed: the call fails then (the router retries it, answered from the
    stored connection) instead of waiting out its timeout. A head that never answers and a
    tail that closes stand in for the failure."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        calls: list[sc_pb2.ComputeCall] = []
        tails: list[ChainLink] = []
        heard = asyncio.Event()

        def head_frames(_link: ChainLink, frames: list[bytes]) -> None:
            calls.extend(sc_pb2.ComputeCall.FromString(f) for f in frames)
            heard.set()

        def tail_frames(link: ChainLink, frames: list[bytes]) -> None:
            for frame in frames:
                call = sc_pb2.ComputeCall.FromString(frame)
                link.send(sc_pb2.ComputeAnswer(call_id=call.call_id).SerializeToString())
                tails.append(link)

        head = await loop.create_server(lambda: ChainLink(head_frames, 1 << 20), "127.0.0.1", 0)
        tail = await loop.create_server(lambda: ChainLink(tail_frames, 1 << 20), "127.0.0.1", 0)
        client = ComputeLinkClient(address_of(head), None, timeout_s=30)
        try:
            client.use_tail(address_of(tail))
            await wait_until_async(lambda: client.listening, 5, "the tail to register")
            call = asyncio.create_task(client.compute(flows(1, 2)))
            await asyncio.wait_for(heard.wait(), 5)
            assert calls[0].answer_token == client.token and len(client.token) == 16
            t0 = time.monotonic()
            tails[0].close()
            with pytest.raises(ComputeLinkError, match="the tail's connection closed"):
                await asyncio.wait_for(call, 10)
            assert time.monotonic() - t0 < 2
        finally:
            await client.close()
            head.close()
            tail.close()

    asyncio.run(go())


def address_of(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"
