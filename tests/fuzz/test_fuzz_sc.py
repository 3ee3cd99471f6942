"""Fuzzing an SC node's doors (issue 8): random and mutated gRPC messages for every RPC, and
random frames on the chain link before a hello. The node stays up, answers each call with an
error status (never a crash: UNKNOWN, INTERNAL, UNAVAILABLE), logs no traceback, and its state
stays sound (no shard appears, no pool element is held twice or lost)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import Counter

import grpc
import needs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sc import chainwire
from sc.test_chain import TENANTS, UNIVERSE

from cyberstar.lab.sc import ScLab, cluster_census
from cyberstar.proto import sc_pb2
from cyberstar.sc.routing import ShardMap
from cyberstar.tls import channel_credentials

pytestmark = pytest.mark.slow
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
FLOW = sc_pb2.Flow(tenant_id=99, ingress_port=1, src_addr=0x0A000001, dst_addr=0x5DB8D801,
                   protocol=6, src_port=1234, dst_port=443)  # fmt: skip
# A valid message of each RPC's type, to mutate (a tenant and shards this node does not have).
SEEDS = {
    "Compute": sc_pb2.RuleBatch(requests=[sc_pb2.RuleRequest(request_id=1, flow=FLOW)] * 3),
    "Release": sc_pb2.ReleaseBatch(items=[sc_pb2.ReleaseItem(flow=FLOW, slot=3)]),
    "Scale": sc_pb2.ScaleRequest(op_id="f", kind=0, shard="99:0-1024", target_scg="scg9"),
    "ScaleStatus": sc_pb2.ScaleStatusRequest(op_id="nope", wait_ms=10),
    "Inspect": sc_pb2.InspectRequest(elements=False),
    "Transfer": sc_pb2.TransferRequest(op_id="f", kind=0, shard="99:0-1024", payload=b"{}"),
}
# What a call may end with: an answer, or a refusal the caller can act on.
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def node():
    needs.etcd()
    with ScLab(TENANTS, lease_ttl_s=3) as lab:
        lab.add_scg("scg1", 1)

        async def ready() -> str:
            smap = ShardMap(lab.etcd_config())
            await smap.start()
            try:
                await smap.wait_until(lambda m: len(m.shards) == 1 and m.head("scg1"), 30)
                return smap.chains["scg1"].nodes[0].chain
            finally:
                await smap.close()

        chain = asyncio.run(ready())
        (proc,) = lab.nodes.values()
        with grpc.secure_channel(proc.address, channel_credentials(lab.client_tls)) as admin:
            yield lab, proc, admin, chain
        assert proc.alive, "the node died"
        assert "Traceback" not in proc.log.read_text()
        census = asyncio.run(cluster_census([proc.address], lab.client_tls))
        (free, held, shards, _info) = census[proc.node_id]
        assert [s[0] for s in shards] == ["7:0-1024"]
        everything = Counter(free) + Counter(held)
        assert max(everything.values()) == 1 and len(everything) == UNIVERSE


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(SEEDS)))
    if draw(st.booleans()):
        return method, draw(st.binary(max_size=600))
    data = bytearray(SEEDS[method].SerializeToString())
    if not data:  # InspectRequest() serializes to nothing
        return method, draw(st.binary(max_size=8))
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return method, bytes(data[: draw(st.integers(0, len(data)))])


@SETTINGS
@given(call=calls())
def test_random_and_mutated_calls_get_an_answer(node, call: tuple[str, bytes]) -> None:
    _, _, admin, _ = node
    method, data = call
    stub = admin.unary_unary(f"/cyberstar.sc.v1.ServiceComputing/{method}")
    try:
        stub(data, timeout=20)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    assert code in ANSWERS, (method, data, code)


@SETTINGS
@given(payload=st.binary(max_size=2000), kind=st.integers(0, 3), part=st.integers(0, 9))
def test_transfers_from_a_peer_with_garbage_payloads_change_nothing(node, payload, kind, part):
    lab, proc, _, _ = node
    request = sc_pb2.TransferRequest(op_id="fuzz", kind=kind, shard="7:0-1024", payload=payload,
                                     part=part, from_scg="scg9")  # fmt: skip
    peer = channel_credentials(lab.certs.files("sc", "fuzz-peer"))
    with grpc.secure_channel(proc.address, peer) as ch:
        stub = ch.unary_unary("/cyberstar.sc.v1.ServiceComputing/Transfer")
        answer = sc_pb2.TransferReply.FromString(stub(request.SerializeToString(), timeout=20))
    assert answer.status.code != sc_pb2.OK, answer


@st.composite
def chain_inputs(draw: st.DrawFn) -> bytes:
    """Whole frames (a partial one just waits for the hello timeout, tested elsewhere): random
    bodies, mutated hellos, or a length over the limit."""
    kind = draw(st.sampled_from(["random", "hello", "huge"]))
    if kind == "random":
        body = draw(st.binary(max_size=300))
        return chainwire.FRAME.pack(len(body)) + body
    if kind == "huge":
        return chainwire.FRAME.pack(draw(st.integers(4097, 2**32 - 1))) + draw(st.binary())
    hello = sc_pb2.ChainMessage(hello=sc_pb2.ChainHello(
        epoch=draw(st.integers(0, 2**64 - 1)), from_node=draw(st.text(max_size=30))))  # fmt: skip
    body = bytearray(hello.SerializeToString())
    for _ in range(draw(st.integers(0, 3))):
        if body:
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return chainwire.FRAME.pack(len(body)) + bytes(body)


@SETTINGS
@given(data=chain_inputs())
def test_random_chain_link_input_is_refused(node, data: bytes) -> None:
    lab, _, _, chain = node
    with chainwire.connect(chain, lab.client_tls) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        sock.settimeout(15)
        got = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := sock.recv(4096):
                got += chunk
    if got:  # the only answer an outsider gets: a refusal, with no epoch in it
        (n,) = chainwire.FRAME.unpack(got[:4])
        ack = sc_pb2.ChainAck.FromString(got[4 : 4 + n])
        assert ack.refused and "epoch" not in ack.refused and not ack.applied_seq


def test_the_fuzzed_node_still_answers(node) -> None:
    _, _, admin, _ = node
    stub = admin.unary_unary("/cyberstar.sc.v1.ServiceComputing/Inspect")
    info = sc_pb2.InspectReply.FromString(stub(b"", timeout=10))
    assert info.role == "single" and info.counters["refused_calls"] > 0
    assert json.loads(json.dumps(dict(info.counters)))["chain_refused"] > 0
