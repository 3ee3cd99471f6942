"""P4Runtime request messages and stream routing shared by the sync and asyncio clients."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import grpc
from finsy.proto import p4i, p4r, rpc_code, rpc_status

from cyberstar.p4rt import batching
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.proto import p4rt_batch_pb2 as pb

log = logging.getLogger(__name__)
Action = p4r.SetForwardingPipelineConfigRequest


def uint128(value: int) -> p4r.Uint128:
    return p4r.Uint128(high=value >> 64, low=value & ((1 << 64) - 1))


def arbitration_request(device_id: int, election_id: int) -> p4r.StreamMessageRequest:
    update = p4r.MasterArbitrationUpdate(device_id=device_id, election_id=uint128(election_id))
    return p4r.StreamMessageRequest(arbitration=update)


def packet_out_request(
    payload: bytes, metadata: Iterable[tuple[int, bytes]]
) -> p4r.StreamMessageRequest:
    out = p4r.PacketOut(payload=payload)
    for mid, value in metadata:
        out.metadata.add(metadata_id=mid, value=value)
    return p4r.StreamMessageRequest(packet=out)


def pipeline_request(
    device_id: int,
    election_id: int,
    p4info: p4i.P4Info,
    device_config: bytes,
    action: int = Action.VERIFY_AND_COMMIT,
    cookie: int | None = None,
) -> p4r.SetForwardingPipelineConfigRequest:
    config = p4r.ForwardingPipelineConfig(p4info=p4info, p4_device_config=device_config)
    if cookie is not None:
        config.cookie.cookie = cookie
    return Action(
        device_id=device_id, election_id=uint128(election_id), action=action, config=config
    )


def write_request(device_id: int, election_id: int, updates: list[p4r.Update]) -> p4r.WriteRequest:
    return p4r.WriteRequest(device_id=device_id, election_id=uint128(election_id), updates=updates)


def route_stream_message(
    msg: p4r.StreamMessageResponse, sinks: dict[str, Callable], address: str
) -> None:
    """Hand a stream message to the sink for its `update` kind (arbitration, packet,
    idle_timeout_notification); the PacketIns of a PacketInBatch go to the packet sink one
    by one; stream errors are logged."""
    kind = msg.WhichOneof("update")
    sink = sinks.get(kind)
    if sink is not None:
        sink(getattr(msg, kind))
    elif kind == "other" and msg.other.type_url == batching.PACKET_IN_BATCH:
        for packet_in in batching.packet_ins_of(msg.other):
            sinks["packet"](packet_in)
    elif kind == "other" and msg.other.type_url == batching.STREAM_WRITE_RESULT:
        sink = sinks.get("stream_write_result")
        if sink is not None:
            sink(batching.stream_write_result_of(msg.other))
    elif kind == "error":
        log.warning("%s: stream error: %s", address, msg.error.message)


def rpc_error(what: str, exc: grpc.RpcError) -> P4RuntimeError:
    return P4RuntimeError(exc.code(), f"{what}: {exc.details()}")


def decode_write_error(exc: grpc.RpcError) -> P4RuntimeError:
    """Decode the per-update p4.v1.Error details of a failed batch (P4Runtime §12.3)."""
    details: list[p4r.Error] = []
    trailers = dict(exc.trailing_metadata() or ())
    raw = trailers.get("grpc-status-details-bin")
    if raw:
        for detail in rpc_status.Status.FromString(raw).details:
            err = p4r.Error()
            details.append(err if detail.Unpack(err) else p4r.Error(canonical_code=rpc_code.OK))
    return write_error(exc.code(), exc.details(), details)


def stream_write_error(result: pb.StreamWriteResult) -> P4RuntimeError | None:
    """The error a StreamWriteResult reports, as the Write RPC's would be; None for OK."""
    if result.code == rpc_code.OK:
        return None
    code = _STATUS_CODES.get(result.code, grpc.StatusCode.UNKNOWN)
    return write_error(code, result.message, [p4r.Error.FromString(e) for e in result.errors])


_STATUS_CODES = {c.value[0]: c for c in grpc.StatusCode}


def write_error(code: grpc.StatusCode, message: str, details: list[p4r.Error]) -> P4RuntimeError:
    errors = [(i, rpc_code.Code.Name(e.canonical_code), e.message)
              for i, e in enumerate(details) if e.canonical_code != rpc_code.OK]  # fmt: skip
    lines = "; ".join(f"update {i}: {c}: {msg}" for i, c, msg in errors)
    return P4RuntimeError(
        code, f"Write failed: {message}" + (f" ({lines})" if lines else ""), errors
    )
