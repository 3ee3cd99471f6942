"""cyberstar's stream batching extension on a real XDP PP node: negotiated through
Capabilities and StreamMessageRequest.other, never imposed on a standard controller.

Frames that miss the flow table are sent into peer1 (port 1) and must come back as PacketIns;
PacketOuts to port 2 must leave on peer2. Raw StreamChannel calls are used so that the tests see
the messages as they are on the wire (the clients unpack batches)."""

from __future__ import annotations

import queue
import socket
import threading
import time

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc, rpc_code
from google.protobuf import any_pb2

from cyberstar import netns, packets
from cyberstar.codegen.p4info import build_p4info
from cyberstar.p4rt.codec import update
from cyberstar.p4rt.messages import arbitration_request
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import p4rt_batch_pb2 as pb
from cyberstar.tls import secure_or_plain_channel

pytestmark = pytest.mark.root
BATCHING_URL = "type.googleapis.com/cyberstar.p4rt.v1.StreamBatching"
IN_BATCH_URL = "type.googleapis.com/cyberstar.p4rt.v1.PacketInBatch"
OUT_BATCH_URL = "type.googleapis.com/cyberstar.p4rt.v1.PacketOutBatch"
OUT_FIELDS = {f.name: i for i, f in enumerate(PIPELINE.packet_out.fields, start=1)}
_election = iter(range(5000, 1 << 30))


class RawStream:
    """One StreamChannel with the messages exactly as received."""

    def __init__(self, node) -> None:
        self.channel = secure_or_plain_channel(node.address, node.tls, [], "P4Runtime server")
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.election_id = next(_election)
        self.requests: queue.Queue = queue.Queue()
        self.messages: queue.Queue[p4r.StreamMessageResponse] = queue.Queue()
        self.call = self.stub.StreamChannel(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()
        self.send(arbitration_request(node.device_id, self.election_id))
        answer = self.next_message()
        assert answer.arbitration.status.code == rpc_code.OK

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.messages.put(msg)
        except grpc.RpcError:
            pass

    def send(self, req: p4r.StreamMessageRequest) -> None:
        self.requests.put(req)

    def next_message(self, timeout: float = 10) -> p4r.StreamMessageResponse:
        return self.messages.get(timeout=timeout)

    def write(self, updates) -> None:
        eid = p4r.Uint128(low=self.election_id)
        self.stub.Write(p4r.WriteRequest(device_id=1, election_id=eid, updates=updates))

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def stream(shared_pp_node):
    s = RawStream(shared_pp_node)
    s.stub.SetForwardingPipelineConfig(p4r.SetForwardingPipelineConfigRequest(
        device_id=1, election_id=p4r.Uint128(low=s.election_id),
        action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
        config=p4r.ForwardingPipelineConfig(p4info=build_p4info(PIPELINE))))  # fmt: skip
    s.write([update(p4r.Update.INSERT, PIPELINE, build_entry(
        PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"},
        "set_tenant", {"tenant_id": 7}))])  # fmt: skip
    yield s
    s.close()


def opt_in(max_packets: int) -> p4r.StreamMessageRequest:
    value = pb.StreamBatching(max_packets=max_packets).SerializeToString()
    return p4r.StreamMessageRequest(other=any_pb2.Any(type_url=BATCHING_URL, value=value))


def frames(count: int, first_port: int) -> list[bytes]:
    return [packets.tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01", "192.168.1.2",
                              "10.0.0.5", first_port + i, 80) for i in range(count)]  # fmt: skip


def send_burst(ns: str, burst: list[bytes]) -> None:
    with netns.entered(ns):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with tx:
        tx.bind(("peer1", 0))
        for f in burst:
            tx.send(f)


def packet_ins(stream: RawStream, count: int) -> list[tuple[str, list[p4r.PacketIn]]]:
    """(message kind, its PacketIns) per message until `count` PacketIns arrived."""
    got: list[tuple[str, list[p4r.PacketIn]]] = []
    total, deadline = 0, time.monotonic() + 20
    while total < count:
        msg = stream.next_message(max(0.1, deadline - time.monotonic()))
        kind = msg.WhichOneof("update")
        if kind == "packet":
            got.append(("packet", [msg.packet]))
        elif kind == "other":
            assert msg.other.type_url == IN_BATCH_URL
            batch = pb.PacketInBatch.FromString(msg.other.value)
            got.append(("batch", [p4r.PacketIn.FromString(p) for p in batch.packets]))
        else:
            continue
        total += len(got[-1][1])
    return got


def test_capabilities_offer_batching(shared_pp_node) -> None:
    s = RawStream(shared_pp_node)
    try:
        caps = s.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=10)
    finally:
        s.close()
    assert caps.p4runtime_api_version
    assert caps.experimental.type_url == BATCHING_URL
    assert pb.StreamBatching.FromString(caps.experimental.value).max_packets >= 64


def test_a_controller_that_opts_in_gets_every_punt_in_batches_in_order(
    stream, shared_pp_node
) -> None:
    stream.send(opt_in(64))
    time.sleep(0.2)  # the opt-in is read before the burst punts
    burst = frames(300, 20000)
    send_burst(shared_pp_node.ns, burst)
    got = packet_ins(stream, len(burst))
    payloads = [p.payload for _, pins in got for p in pins]
    assert payloads == burst
    assert all(kind == "batch" for kind, _ in got)
    sizes = [len(pins) for _, pins in got]
    assert max(sizes) > 1 and max(sizes) <= 64, sizes
    (packet_in,) = (c for c in build_p4info(PIPELINE).controller_packet_metadata
                    if c.preamble.name == "packet_in")  # fmt: skip
    port_id = next(m.id for m in packet_in.metadata if m.name == "ingress_port")
    for _, pins in got:
        for p in pins:
            meta = {m.metadata_id: int.from_bytes(m.value, "big") for m in p.metadata}
            assert meta[port_id] == 1  # each arrived on port 1


def test_a_standard_controller_gets_one_packet_in_per_message(stream, shared_pp_node) -> None:
    burst = frames(100, 30000)
    send_burst(shared_pp_node.ns, burst)
    got = packet_ins(stream, len(burst))
    assert all(kind == "packet" and len(pins) == 1 for kind, pins in got)
    assert [pins[0].payload for _, pins in got] == burst


def _out(payload: bytes, egress_port: int) -> bytes:
    return p4r.PacketOut(payload=payload, metadata=[
        p4r.PacketMetadata(metadata_id=OUT_FIELDS["egress_port"],
                           value=egress_port.to_bytes(2, "big"))]).SerializeToString()  # fmt: skip


def test_packet_out_batch_sends_each_packet_and_refuses_a_bad_one_alone(
    stream, shared_pp_node
) -> None:
    with netns.entered(shared_pp_node.ns):
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    rx.bind(("peer2", 0))
    rx.settimeout(5)
    sent = [packets.tcp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.5",
                              "192.168.1.2", 80, 41000 + i) for i in range(3)]  # fmt: skip
    batch = pb.PacketOutBatch(packets=[_out(sent[0], 2), _out(sent[1], 9), _out(sent[2], 2)])
    stream.send(p4r.StreamMessageRequest(other=any_pb2.Any(
        type_url=OUT_BATCH_URL, value=batch.SerializeToString())))  # fmt: skip
    seen = []
    with rx:
        while len(seen) < 2:
            frame = rx.recv(4096)
            if frame in sent:
                seen.append(frame)
    assert seen == [sent[0], sent[2]]
    err = stream.next_message()
    assert err.WhichOneof("update") == "error"
    assert err.error.canonical_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert err.error.packet_out.packet_out.payload == sent[1]


@pytest.mark.parametrize("url", [BATCHING_URL, OUT_BATCH_URL, "type.googleapis.com/x.Unknown"])
def test_garbage_in_other_is_a_stream_error_and_the_stream_lives_on(stream, url) -> None:
    stream.send(p4r.StreamMessageRequest(other=any_pb2.Any(type_url=url, value=b"\xff\xff\xff")))
    err = stream.next_message()
    assert err.WhichOneof("update") == "error"
    expected = grpc.StatusCode.UNIMPLEMENTED if url.endswith("Unknown") else (
        grpc.StatusCode.INVALID_ARGUMENT)  # fmt: skip
    assert err.error.canonical_code == expected.value[0]
    # the stream still answers: a second arbitration update gets its answer
    stream.send(arbitration_request(1, stream.election_id))
    assert stream.next_message().arbitration.status.code == rpc_code.OK


def test_an_oversized_packet_out_batch_is_refused(stream) -> None:
    batch = pb.PacketOutBatch(packets=[_out(b"\x00" * 60, 2)] * 1000)
    stream.send(p4r.StreamMessageRequest(other=any_pb2.Any(
        type_url=OUT_BATCH_URL, value=batch.SerializeToString())))  # fmt: skip
    err = stream.next_message()
    assert err.error.canonical_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "at most" in err.error.message
