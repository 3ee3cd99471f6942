"""cyberstar's stream batching extension on a real XDP PP node: negotiated through
Capabilities and StreamMessageRequest.other, never imposed on a standard controller.

Frames that miss the flow table are sent into peer1 (port 1) and must come back as PacketIns;
PacketOuts to port 2 must leave on peer2. Raw StreamChannel calls are used so that the tests see
the messages as they are on the wire (the clients unpack batches)."""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import subprocess
import threading
import time

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc, rpc_code
from google.protobuf import any_pb2

from cyberstar import netns, packets
from cyberstar.codegen.p4info import build_p4info
from cyberstar.p4rt.codec import update
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.messages import arbitration_request
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import p4rt_batch_pb2 as pb
from cyberstar.tls import secure_or_plain_channel
from pp.test_p4rt_server import flow_entry

pytestmark = pytest.mark.root
BATCHING_URL = "type.googleapis.com/cyberstar.p4rt.v1.StreamBatching"
IN_BATCH_URL = "type.googleapis.com/cyberstar.p4rt.v1.PacketInBatch"
OUT_BATCH_URL = "type.googleapis.com/cyberstar.p4rt.v1.PacketOutBatch"
WRITE_URL = "type.googleapis.com/cyberstar.p4rt.v1.StreamWrite"
RESULT_URL = "type.googleapis.com/cyberstar.p4rt.v1.StreamWriteResult"
OUT_FIELDS = {f.name: i for i, f in enumerate(PIPELINE.packet_out.fields, start=1)}
_election = iter(range(5000, 1 << 30))


class RawStream:
    """One StreamChannel with the messages exactly as received."""

    def __init__(self, node, election_id: int | None = None) -> None:
        self.node = node
        self.channel = secure_or_plain_channel(node.address, node.tls, [], "P4Runtime server")
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.election_id = next(_election) if election_id is None else election_id
        self.requests: queue.Queue = queue.Queue()
        self.messages: queue.Queue[p4r.StreamMessageResponse] = queue.Queue()
        self.call = self.stub.StreamChannel(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()
        self.send(arbitration_request(node.device_id, self.election_id))
        self.arbitration = self.next_message().arbitration
        if election_id is None:
            assert self.arbitration.status.code == rpc_code.OK

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
    s = primed(RawStream(shared_pp_node))
    yield s
    s.close()


def primed(s: RawStream) -> RawStream:
    """The stream's node with the pipeline committed and tenant 7 classified on port 1."""
    s.stub.SetForwardingPipelineConfig(p4r.SetForwardingPipelineConfigRequest(
        device_id=1, election_id=p4r.Uint128(low=s.election_id),
        action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
        config=p4r.ForwardingPipelineConfig(p4info=build_p4info(PIPELINE))))  # fmt: skip
    s.write([update(p4r.Update.INSERT, PIPELINE, build_entry(
        PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"},
        "set_tenant", {"tenant_id": 7}))])  # fmt: skip
    return s


def opt_in(max_packets: int) -> p4r.StreamMessageRequest:
    value = pb.StreamBatching(max_packets=max_packets).SerializeToString()
    return p4r.StreamMessageRequest(other=any_pb2.Any(type_url=BATCHING_URL, value=value))


def frames(count: int, first_port: int) -> list[bytes]:
    return [packets.tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01", "192.168.1.2",
                              "10.0.0.5", first_port + i, 80) for i in range(count)]  # fmt: skip


def send_burst(ns: str, burst: list[bytes]) -> None:
    """Send from one CPU: the punts' perf buffer has a ring per CPU, so frames sent from two
    (the thread migrated mid-burst) may be read out of order — as distinct flows may be."""
    with netns.entered(ns):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        with tx:
            tx.bind(("peer1", 0))
            for f in burst:
                tx.send(f)
    finally:
        os.sched_setaffinity(0, cpus)


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


def test_capabilities_offer_batching_and_stream_writes(shared_pp_node) -> None:
    s = RawStream(shared_pp_node)
    try:
        caps = s.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=10)
    finally:
        s.close()
    assert caps.p4runtime_api_version
    assert caps.experimental.type_url == BATCHING_URL
    assert pb.StreamBatching.FromString(caps.experimental.value).max_packets >= 64
    assert pb.StreamBatching.FromString(caps.experimental.value).stream_writes


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


@pytest.mark.parametrize(
    "url", [BATCHING_URL, OUT_BATCH_URL, WRITE_URL, "type.googleapis.com/x.Unknown"]
)
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


# ---- StreamWrite: a Write and the PacketOuts that wait for it, in one stream message ----------


def flow_update(kind: int, sport: int) -> p4r.Update:
    return update(kind, PIPELINE, flow_entry(sport))


def stream_write(stream: RawStream, write_id: int, updates: list[p4r.Update],
                 packets: list[tuple[bytes, int, int]], election_id: int | None = None
                 ) -> None:  # fmt: skip
    eid = p4r.Uint128(low=stream.election_id if election_id is None else election_id)
    write = p4r.WriteRequest(device_id=1, election_id=eid, updates=updates)
    send_stream_write(stream, write_id, write.SerializeToString(), packets)


def send_stream_write(stream: RawStream, write_id: int, write: bytes,
                      packets: list[tuple[bytes, int, int]]) -> None:  # fmt: skip
    msg = pb.StreamWrite(id=write_id, write=write, packets=[
        pb.DependentPacketOut(packet_out=p, first_update=first, updates=n)
        for p, first, n in packets])  # fmt: skip
    stream.send(p4r.StreamMessageRequest(other=any_pb2.Any(
        type_url=WRITE_URL, value=msg.SerializeToString())))  # fmt: skip


def result_of(stream: RawStream) -> tuple[int, int, list[int]]:
    """The next StreamWriteResult: (id, code, each update's canonical code)."""
    msg = stream.next_message()
    assert msg.WhichOneof("update") == "other", msg
    assert msg.other.type_url == RESULT_URL
    result = pb.StreamWriteResult.FromString(msg.other.value)
    return result.id, result.code, [p4r.Error.FromString(e).canonical_code for e in result.errors]


def flow_keys(stream: RawStream) -> set[int]:
    req = p4r.ReadRequest(device_id=1, entities=[p4r.Entity(table_entry=p4r.TableEntry(
        table_id=PIPELINE.table("flow_table").id))])  # fmt: skip
    sports = set()
    for resp in stream.stub.Read(req):
        for e in resp.entities:
            (sport,) = [m.exact.value for m in e.table_entry.match if m.field_id == 5]
            sports.add(int.from_bytes(sport, "big"))
    return sports


def tagged(n: int) -> list[bytes]:
    """Frames that can be told apart from anything else on peer2."""
    return [packets.tcp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.5",
                              "192.168.1.2", 80, 43000 + i) for i in range(n)]  # fmt: skip


class Received:
    """Which of `expected` leave on peer2 from entering the block until `wait_s` after it."""

    def __init__(self, ns: str, expected: list[bytes], wait_s: float = 1.5) -> None:
        self.expected, self.wait_s, self.frames = expected, wait_s, []
        with netns.entered(ns):
            self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.rx.bind(("peer2", 0))
        self.rx.settimeout(0.1)

    def __enter__(self) -> Received:
        return self

    def __exit__(self, *exc) -> None:
        deadline = time.monotonic() + self.wait_s
        with self.rx:
            while time.monotonic() < deadline:
                try:
                    frame = self.rx.recv(4096)
                except TimeoutError:
                    continue
                if frame in self.expected:
                    self.frames.append(frame)


def test_a_stream_write_writes_then_sends_the_packets_whose_updates_took_effect(
    stream, shared_pp_node
) -> None:
    frames_ = tagged(4)
    ins = p4r.Update.INSERT
    updates = [flow_update(ins, 1001), flow_update(ins, 1002),
               flow_update(p4r.Update.DELETE, 1003)]  # fmt: skip
    with Received(shared_pp_node.ns, frames_) as got:
        stream_write(stream, 41, updates, [
            (_out(frames_[0], 2), 0, 1),  # waits for update 0: sent
            (_out(frames_[1], 2), 1, 2),  # waits for updates 1 and 2 (2 fails): kept back
            (_out(frames_[2], 2), 0, 0),  # waits for nothing: sent
        ])  # fmt: skip
        # P4Runtime §12.3: UNKNOWN, one error per update, OK for those that took effect
        assert result_of(stream) == (41, 2, [0, 0, grpc.StatusCode.NOT_FOUND.value[0]])
    assert got.frames == [frames_[0], frames_[2]]
    assert flow_keys(stream) == {1001, 1002}

    # An INSERT of a present entry: ALREADY_EXISTS, and the rule its packet waits for is there.
    with Received(shared_pp_node.ns, frames_) as got:
        stream_write(stream, 42, [flow_update(ins, 1001)], [(_out(frames_[3], 2), 0, 1)])
        assert result_of(stream) == (42, 2, [grpc.StatusCode.ALREADY_EXISTS.value[0]])
    assert got.frames == [frames_[3]]

    with Received(shared_pp_node.ns, frames_) as got:
        stream_write(stream, 43, [flow_update(ins, 1004)], [(_out(frames_[1], 2), 0, 1)])
        assert result_of(stream) == (43, 0, [])
    assert got.frames == [frames_[1]]
    assert flow_keys(stream) == {1001, 1002, 1004}


@pytest.mark.parametrize(
    "case", ["range", "election", "write-garbage", "packet-garbage", "too-many"]
)
def test_a_refused_stream_write_writes_nothing_and_sends_nothing(
    stream, shared_pp_node, case
) -> None:
    frames_ = tagged(1)
    ups = [flow_update(p4r.Update.INSERT, 2001)]
    expected = grpc.StatusCode.INVALID_ARGUMENT
    with Received(shared_pp_node.ns, frames_) as got:
        if case == "range":  # a PacketOut waiting for an update the Write does not have
            stream_write(stream, 7, ups, [(_out(frames_[0], 2), 0, 2)])
        elif case == "election":  # not the primary's election id
            stream_write(stream, 7, ups, [(_out(frames_[0], 2), 0, 1)], stream.election_id + 1)
            expected = grpc.StatusCode.PERMISSION_DENIED
        elif case == "write-garbage":
            send_stream_write(stream, 7, b"\xff\xff\xff", [(_out(frames_[0], 2), 0, 0)])
        elif case == "too-many":  # 257 packets: the capability's limit is 256
            stream_write(stream, 7, ups, [(_out(frames_[0], 2), 0, 1)] * 257)
        else:
            eid = p4r.Uint128(low=stream.election_id)
            write = p4r.WriteRequest(device_id=1, election_id=eid, updates=ups)
            send_stream_write(stream, 7, write.SerializeToString(), [(b"\xff\xff\xff", 0, 0)])
        write_id, code, errors = result_of(stream)
    assert (write_id, code, errors) == (7, expected.value[0], [])
    assert got.frames == []
    assert flow_keys(stream) == set()


def test_a_stream_write_from_a_backup_is_refused(stream, shared_pp_node) -> None:
    backup = RawStream(shared_pp_node, election_id=stream.election_id - 1)
    try:
        assert backup.arbitration.status.code != rpc_code.OK  # a backup: the primary is higher
        stream_write(backup, 9, [flow_update(p4r.Update.INSERT, 3001)], [])
        write_id, code, _ = result_of(backup)
    finally:
        backup.close()
    assert (write_id, code) == (9, grpc.StatusCode.PERMISSION_DENIED.value[0])
    assert flow_keys(stream) == set()


def test_the_asyncio_client_reports_a_stream_write_as_the_write_rpc_does(stream) -> None:
    """FM's client: the same P4RuntimeError (code, per-update errors) for the same updates
    sent as a StreamWrite and as a Write call, and OK for a StreamWrite that took."""
    from cyberstar.p4rt.aio_client import AioP4RuntimeClient

    node_address, tls = stream.node.address, stream.node.tls
    ins, delete = p4r.Update.INSERT, p4r.Update.DELETE

    async def go() -> tuple[P4RuntimeError, P4RuntimeError]:
        client = AioP4RuntimeClient(node_address, 1, stream.election_id + 1, tls=tls)
        try:
            await client.open_stream()  # the new primary
            assert client.stream_writes
            await client.stream_write([flow_update(ins, 4001)], [])
            bad = [flow_update(ins, 4001), flow_update(ins, 4002),
                   flow_update(delete, 4003)]  # fmt: skip
            with pytest.raises(P4RuntimeError) as streamed:
                await client.stream_write(bad, [])
            await client.write([flow_update(delete, 4002)])
            with pytest.raises(P4RuntimeError) as called:
                await client.write(bad)
            return streamed.value, called.value
        finally:
            await client.close()

    streamed, called = asyncio.run(go())
    expected = [(0, "ALREADY_EXISTS"), (2, "NOT_FOUND")]
    for err in (streamed, called):
        assert err.code == grpc.StatusCode.UNKNOWN
        assert [(i, code) for i, code, _ in err.errors] == expected
    assert streamed.errors == called.errors


def test_a_controller_that_never_reads_its_stream_is_not_read_either(shared_pp_node) -> None:
    """Every refused PacketOut gets a StreamError (carrying the packet) that is never dropped:
    a controller that sends them without reading its answers must stall in gRPC's flow
    control, not make the node queue its answers without end."""
    offered, consumed = 20_000, [0]
    eid = p4r.Uint128(low=1)  # below the primary of other tests: a backup, refused packets
    big = p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"\x00" * 12_000))

    def requests():
        yield p4r.StreamMessageRequest(
            arbitration=p4r.MasterArbitrationUpdate(device_id=1, election_id=eid)
        )
        for _ in range(offered):
            consumed[0] += 1
            yield big

    channel = secure_or_plain_channel(
        shared_pp_node.address, shared_pp_node.tls, [], "P4Runtime server"
    )
    call = p4r_grpc.P4RuntimeStub(channel).StreamChannel(requests())  # never read
    try:
        last, deadline = -1, time.monotonic() + 60
        while consumed[0] != last and time.monotonic() < deadline:
            last = consumed[0]
            time.sleep(2)
        assert consumed[0] < offered // 2, consumed[0]  # stalled, not taken in whole
    finally:
        call.cancel()
        channel.close()


@pytest.fixture
def shaped(pp_node):
    """A node of its own with port 2 shaped to 1 kB/s: a PacketOut's send(2) to it blocks
    once the socket's buffer is full (~90 frames of 1.4 kB). Unshaped after the test."""
    tc = ["ip", "netns", "exec", pp_node.ns, "tc", "qdisc"]
    subprocess.run([*tc, "add", "dev", "pp2", "root", "tbf", "rate", "8kbit", "burst", "1600",
                    "limit", "100000000"], check=True)  # fmt: skip
    s = primed(RawStream(pp_node))
    try:
        yield s, lambda: subprocess.run([*tc, "del", "dev", "pp2", "root"], check=False)
    finally:
        subprocess.run([*tc, "del", "dev", "pp2", "root"], check=False, capture_output=True)
        s.close()


def send_packet_outs(s: RawStream, count: int) -> None:
    """`count` PacketOuts of 1.4 kB to port 2, in PacketOutBatches of up to 256."""
    for at in range(0, count, 256):
        batch = pb.PacketOutBatch(packets=[_out(f + bytes(1400 - len(f)), 2)
                                           for f in tagged(min(256, count - at))])  # fmt: skip
        s.send(p4r.StreamMessageRequest(other=any_pb2.Any(
            type_url=OUT_BATCH_URL, value=batch.SerializeToString())))  # fmt: skip


def test_a_port_that_drains_slowly_does_not_hold_up_the_node(shaped) -> None:
    """PacketOuts leave from a thread of their own: while the shaped port takes minutes for
    what the controller sent it, the node still answers the next StreamWrite and Reads."""
    s, _ = shaped
    send_packet_outs(s, 200)
    time.sleep(0.5)  # the transmit thread is blocked in send(2) by now
    t0 = time.monotonic()
    stream_write(s, 77, [flow_update(p4r.Update.INSERT, 1077)], [])
    assert result_of(s) == (77, rpc_code.OK, [])
    assert flow_keys(s) == {1077}
    assert time.monotonic() - t0 < 3


def test_a_stream_is_not_read_while_4096_packet_outs_wait(shaped) -> None:
    """The transmit thread's queue is bounded: past 4 096 unsent PacketOuts the node stops
    reading the stream (the controller waits in gRPC's flow control), and reads on once the
    port drains."""
    s, unshape = shaped
    send_packet_outs(s, 4096 + 256)
    time.sleep(1.0)
    stream_write(s, 78, [flow_update(p4r.Update.INSERT, 1078)], [])
    with pytest.raises(queue.Empty):
        s.next_message(timeout=2)  # not read: no result
    assert flow_keys(s) == set()  # and not written
    unshape()
    assert result_of(s) == (78, rpc_code.OK, [])
    assert flow_keys(s) == {1078}
