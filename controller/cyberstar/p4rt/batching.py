"""Several packets per P4Runtime stream message, through the spec's extension points.

The messages are in `cyberstar/proto/p4rt_batch.proto`, which says how they are negotiated:
the server advertises `StreamBatching` in `CapabilitiesResponse.experimental`; a controller
opts in on its stream with a `StreamBatching` in `StreamMessageRequest.other`; then PacketIns
travel as `PacketInBatch` (`StreamMessageResponse.other`) and PacketOuts may travel as
`PacketOutBatch` (`StreamMessageRequest.other`). A server whose capability says
`stream_writes` also takes a `StreamWrite` (a Write and the PacketOuts that wait for it, in one
stream message) and answers each with a `StreamWriteResult`. Everything else is standard
P4Runtime.
"""

from __future__ import annotations

from typing import NamedTuple

from finsy.proto import p4r
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from cyberstar.p4rt.wire import field
from cyberstar.proto import p4rt_batch_pb2 as pb

MAX_PACKETS = 256  # the most packets this server puts in one batch, and accepts in one
_PREFIX = "type.googleapis.com/"
STREAM_BATCHING = _PREFIX + pb.StreamBatching.DESCRIPTOR.full_name
PACKET_IN_BATCH = _PREFIX + pb.PacketInBatch.DESCRIPTOR.full_name
PACKET_OUT_BATCH = _PREFIX + pb.PacketOutBatch.DESCRIPTOR.full_name
STREAM_WRITE = _PREFIX + pb.StreamWrite.DESCRIPTOR.full_name
STREAM_WRITE_RESULT = _PREFIX + pb.StreamWriteResult.DESCRIPTOR.full_name


def _any(type_url: str, message) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString())


def capability(max_packets: int = MAX_PACKETS) -> any_pb2.Any:
    """What a batching server puts in `CapabilitiesResponse.experimental`."""
    return _any(STREAM_BATCHING, pb.StreamBatching(max_packets=max_packets, stream_writes=True))


def _offered(caps: p4r.CapabilitiesResponse) -> pb.StreamBatching:
    """The server's StreamBatching capability; an empty one (nothing offered) if it has none."""
    if not caps.HasField("experimental") or caps.experimental.type_url != STREAM_BATCHING:
        return pb.StreamBatching()
    return pb.StreamBatching.FromString(caps.experimental.value)


def server_max_packets(caps: p4r.CapabilitiesResponse) -> int:
    """How many packets per message the server batches (0: it does not)."""
    return _offered(caps).max_packets


def server_takes_stream_writes(caps: p4r.CapabilitiesResponse) -> bool:
    """Whether the server takes StreamWrite messages on the stream."""
    return _offered(caps).stream_writes


def opt_in_request(max_packets: int) -> p4r.StreamMessageRequest:
    """The controller's request for batches of at most `max_packets` PacketIns."""
    return p4r.StreamMessageRequest(other=_any(STREAM_BATCHING, pb.StreamBatching(
        max_packets=max_packets)))  # fmt: skip


def requested_max_packets(other: any_pb2.Any) -> int:
    """A controller's StreamBatching; ValueError if it does not parse."""
    try:
        return pb.StreamBatching.FromString(other.value).max_packets
    except DecodeError:
        raise ValueError("a StreamBatching that does not parse") from None


_PACKET_IN_BATCH_URL = field(1, PACKET_IN_BATCH.encode())


def packet_in_response(packet_in: bytes) -> bytes:
    """A standard StreamMessageResponse (`packet`) around one serialized PacketIn."""
    return field(2, packet_in)


def packet_in_batch_response(packet_ins: list[bytes]) -> bytes:
    """A StreamMessageResponse whose `other` is a PacketInBatch of serialized PacketIns.
    Built as bytes: it is on the punt path, once per batch."""
    batch = b"".join([field(1, p) for p in packet_ins])
    return field(5, _PACKET_IN_BATCH_URL + field(2, batch))


def packet_ins_of(other: any_pb2.Any) -> list[p4r.PacketIn]:
    return [p4r.PacketIn.FromString(p) for p in pb.PacketInBatch.FromString(other.value).packets]


_PACKET_OUT_BATCH_URL = field(1, PACKET_OUT_BATCH.encode())


def packet_out(payload: bytes, metadata: list[tuple[int, bytes]]) -> bytes:
    """A serialized PacketOut (ids below 128): FM builds one per first packet."""
    meta = b"".join([field(2, bytes((0x08, mid)) + field(2, value)) for mid, value in metadata])
    return field(1, payload) + meta


def packet_out_request(packet_out: bytes) -> bytes:
    """A standard StreamMessageRequest (`packet`) around one serialized PacketOut."""
    return field(2, packet_out)


def packet_out_batch_request(packet_outs: list[bytes]) -> bytes:
    """A StreamMessageRequest whose `other` is a PacketOutBatch of serialized PacketOuts."""
    batch = b"".join([field(1, p) for p in packet_outs])
    return field(4, _PACKET_OUT_BATCH_URL + field(2, batch))


def packet_outs_of(other: any_pb2.Any) -> list[p4r.PacketOut]:
    """The PacketOuts of a PacketOutBatch; ValueError says what is wrong with it."""
    try:
        raw = pb.PacketOutBatch.FromString(other.value).packets
        if len(raw) > MAX_PACKETS:
            raise ValueError(f"a PacketOutBatch of {len(raw)} packets: at most {MAX_PACKETS}")
        return [p4r.PacketOut.FromString(p) for p in raw]
    except DecodeError:
        raise ValueError("a PacketOutBatch that does not parse") from None


class DependentPacket(NamedTuple):
    """A serialized PacketOut to send once updates [first_update, first_update + updates) of
    the same StreamWrite all took effect."""

    packet_out: bytes
    first_update: int
    updates: int


_STREAM_WRITE_URL = field(1, STREAM_WRITE.encode())
_STREAM_WRITE_RESULT_URL = field(1, STREAM_WRITE_RESULT.encode())


def stream_write_request(write_id: int, write: bytes, packets: list[DependentPacket]) -> bytes:
    """A StreamMessageRequest whose `other` is a StreamWrite of a serialized WriteRequest."""
    msg = pb.StreamWrite(id=write_id, write=write, packets=[
        pb.DependentPacketOut(packet_out=p.packet_out, first_update=p.first_update,
                              updates=p.updates) for p in packets])  # fmt: skip
    return field(4, _STREAM_WRITE_URL + field(2, msg.SerializeToString()))


def stream_write_of(other: any_pb2.Any) -> pb.StreamWrite:
    """A controller's StreamWrite; ValueError when it does not parse (it has no id to answer).
    The server answers one of more than `MAX_PACKETS` packets with its StreamWriteResult."""
    try:
        return pb.StreamWrite.FromString(other.value)
    except DecodeError:
        raise ValueError("a StreamWrite that does not parse") from None


def stream_write_result_response(write_id: int, code: int, message: str = "",
                                 errors: list[bytes] | None = None) -> bytes:  # fmt: skip
    """A StreamMessageResponse whose `other` is the StreamWriteResult of StreamWrite
    `write_id`."""
    msg = pb.StreamWriteResult(id=write_id, code=code, message=message, errors=errors or [])
    return field(5, _STREAM_WRITE_RESULT_URL + field(2, msg.SerializeToString()))


def stream_write_result_of(other: any_pb2.Any) -> pb.StreamWriteResult:
    return pb.StreamWriteResult.FromString(other.value)
