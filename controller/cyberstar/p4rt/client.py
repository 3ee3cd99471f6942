"""A small, synchronous P4Runtime client (grpcio + modern generated protobufs).

One instance per device connection; no module-level state. The stream runs in a thread that
sorts incoming messages into queues (arbitration, packet-in, idle-timeout, errors).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator

import grpc
from finsy.proto import p4i, p4r, p4r_grpc, rpc_code, rpc_status

log = logging.getLogger(__name__)


class P4RuntimeError(RuntimeError):
    """A failed RPC; for Write, `errors` holds (index, code name, message) per failed update."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        errors: list[tuple[int, str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.errors = errors or []


def decode_write_error(exc: grpc.RpcError) -> P4RuntimeError:
    """Decode the per-update p4.v1.Error details of a failed batch (P4Runtime §12.3)."""
    errors: list[tuple[int, str, str]] = []
    trailers = dict(exc.trailing_metadata() or ())
    raw = trailers.get("grpc-status-details-bin")
    if raw:
        status = rpc_status.Status.FromString(raw)
        for i, detail in enumerate(status.details):
            err = p4r.Error()
            if detail.Unpack(err) and err.canonical_code != rpc_code.OK:
                errors.append((i, rpc_code.Code.Name(err.canonical_code), err.message))
    lines = "; ".join(f"update {i}: {code}: {msg}" for i, code, msg in errors)
    return P4RuntimeError(
        f"Write failed: {exc.details()}" + (f" ({lines})" if lines else ""), exc.code(), errors
    )


class P4RuntimeClient:
    def __init__(
        self, address: str, device_id: int = 0, election_id: int = 1, timeout: float = 10.0
    ) -> None:
        self.address = address
        self.device_id = device_id
        self.election_id = election_id
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        )
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.packet_ins: queue.Queue[p4r.PacketIn] = queue.Queue()
        self.idle_notifications: queue.Queue[p4r.IdleTimeoutNotification] = queue.Queue()
        self.arbitrations: queue.Queue[p4r.MasterArbitrationUpdate] = queue.Queue()
        self._requests: queue.Queue[p4r.StreamMessageRequest | None] = queue.Queue()
        self._stream_thread: threading.Thread | None = None
        self._stream_call = None

    # ---- session ----------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise P4RuntimeError(f"no P4Runtime server answered at {self.address}") from None

    def _election(self) -> p4r.Uint128:
        return p4r.Uint128(high=self.election_id >> 64, low=self.election_id & ((1 << 64) - 1))

    def open_stream(self) -> p4r.MasterArbitrationUpdate:
        """Open the StreamChannel and send arbitration; returns the server's answer."""

        def requests() -> Iterator[p4r.StreamMessageRequest]:
            while True:
                msg = self._requests.get()
                if msg is None:
                    return
                yield msg

        self._stream_call = self.stub.StreamChannel(requests())
        self._stream_thread = threading.Thread(
            target=self._read_stream, name=f"p4rt-stream-{self.address}", daemon=True
        )
        self._stream_thread.start()
        self._requests.put(
            p4r.StreamMessageRequest(
                arbitration=p4r.MasterArbitrationUpdate(
                    device_id=self.device_id, election_id=self._election()
                )
            )
        )
        try:
            return self.arbitrations.get(timeout=self.timeout)
        except queue.Empty:
            raise P4RuntimeError(f"{self.address}: no arbitration answer") from None

    def _read_stream(self) -> None:
        try:
            for msg in self._stream_call:
                kind = msg.WhichOneof("update")
                if kind == "packet":
                    self.packet_ins.put(msg.packet)
                elif kind == "arbitration":
                    self.arbitrations.put(msg.arbitration)
                elif kind == "idle_timeout_notification":
                    self.idle_notifications.put(msg.idle_timeout_notification)
                elif kind == "error":
                    log.warning("%s: stream error: %s", self.address, msg.error.message)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.warning("%s: stream closed: %s", self.address, exc.details())

    def packet_out(self, payload: bytes, metadata: Iterable[tuple[int, bytes]]) -> None:
        out = p4r.PacketOut(payload=payload)
        for mid, value in metadata:
            out.metadata.add(metadata_id=mid, value=value)
        self._requests.put(p4r.StreamMessageRequest(packet=out))

    def close(self) -> None:
        self._requests.put(None)
        if self._stream_call is not None:
            self._stream_call.cancel()
        self.channel.close()

    # ---- RPCs -------------------------------------------------------------------------------

    def set_pipeline(self, p4info: p4i.P4Info, device_config: bytes, cookie: int = 0) -> None:
        req = p4r.SetForwardingPipelineConfigRequest(
            device_id=self.device_id,
            election_id=self._election(),
            action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
            config=p4r.ForwardingPipelineConfig(
                p4info=p4info,
                p4_device_config=device_config,
                cookie=p4r.ForwardingPipelineConfig.Cookie(cookie=cookie),
            ),
        )
        try:
            self.stub.SetForwardingPipelineConfig(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise P4RuntimeError(
                f"SetForwardingPipelineConfig failed: {exc.details()}", exc.code()
            ) from None

    def write(self, updates: list[p4r.Update]) -> None:
        if not updates:
            return
        req = p4r.WriteRequest(
            device_id=self.device_id, election_id=self._election(), updates=updates
        )
        try:
            self.stub.Write(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise decode_write_error(exc) from None

    def read(self, entities: list[p4r.Entity]) -> list[p4r.Entity]:
        req = p4r.ReadRequest(device_id=self.device_id, entities=entities)
        out: list[p4r.Entity] = []
        try:
            for resp in self.stub.Read(req, timeout=self.timeout):
                out.extend(resp.entities)
        except grpc.RpcError as exc:
            raise P4RuntimeError(f"Read failed: {exc.details()}", exc.code()) from None
        return out

    def read_counter(self, counter_id: int) -> dict[int, tuple[int, int]]:
        """index → (packets, bytes) for every cell of an indexed counter."""
        ent = p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=counter_id))
        return {
            e.counter_entry.index.index: (
                e.counter_entry.data.packet_count,
                e.counter_entry.data.byte_count,
            )
            for e in self.read([ent])
        }
