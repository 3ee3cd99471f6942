"""The stream batching messages built as bytes (p4rt/batching.py) parse, with protobuf's own
parser, into the P4Runtime and cyberstar messages they stand for."""

from __future__ import annotations

from finsy.proto import p4r
from hypothesis import given
from hypothesis import strategies as st

from cyberstar.p4rt import batching
from cyberstar.proto import p4rt_batch_pb2 as pb

payloads = st.binary(min_size=1, max_size=2000)
metadata = st.lists(st.tuples(st.integers(1, 127), st.binary(min_size=1, max_size=16)),
                    max_size=4)  # fmt: skip


def expected_packet_out(payload: bytes, meta: list[tuple[int, bytes]]) -> p4r.PacketOut:
    out = p4r.PacketOut(payload=payload)
    for mid, value in meta:
        out.metadata.add(metadata_id=mid, value=value)
    return out


@given(payloads, metadata)
def test_packet_out_and_its_standard_request(payload, meta) -> None:
    raw = batching.packet_out(payload, meta)
    assert p4r.PacketOut.FromString(raw) == expected_packet_out(payload, meta)
    req = p4r.StreamMessageRequest.FromString(batching.packet_out_request(raw))
    assert req.packet == expected_packet_out(payload, meta)


@given(st.lists(st.tuples(payloads, metadata), min_size=1, max_size=20))
def test_packet_out_batch_request(packets) -> None:
    raw = batching.packet_out_batch_request([batching.packet_out(p, m) for p, m in packets])
    req = p4r.StreamMessageRequest.FromString(raw)
    assert req.WhichOneof("update") == "other"
    assert req.other.type_url == "type.googleapis.com/cyberstar.p4rt.v1.PacketOutBatch"
    assert batching.packet_outs_of(req.other) == [expected_packet_out(p, m) for p, m in packets]


@given(st.lists(payloads, min_size=1, max_size=20))
def test_packet_in_batch_response(frames) -> None:
    packet_ins = [p4r.PacketIn(payload=f).SerializeToString() for f in frames]
    msg = p4r.StreamMessageResponse.FromString(batching.packet_in_batch_response(packet_ins))
    assert msg.other.type_url == "type.googleapis.com/cyberstar.p4rt.v1.PacketInBatch"
    got = pb.PacketInBatch.FromString(msg.other.value).packets
    assert [p4r.PacketIn.FromString(p).payload for p in got] == frames
    one = p4r.StreamMessageResponse.FromString(batching.packet_in_response(packet_ins[0]))
    assert one.packet.payload == frames[0]
