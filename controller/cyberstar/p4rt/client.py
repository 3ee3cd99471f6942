"""A small, synchronous P4Runtime client (grpcio + modern generated protobufs).

One instance per device connection; no module-level state. The stream runs in a thread that
sorts incoming messages into queues (arbitration, packet-in, idle-timeout); stream errors are
logged. `tls` is the caller's certificate for mutual TLS, or None for plaintext, which only a
loopback or unix-socket address accepts.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator

import grpc
from finsy.proto import p4i, p4r, p4r_grpc

from cyberstar.p4rt.codec import write_of
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.messages import (
    arbitration_request,
    decode_write_error,
    packet_out_request,
    pipeline_request,
    route_stream_message,
    rpc_error,
)
from cyberstar.tls import TlsFiles, secure_or_plain_channel

log = logging.getLogger(__name__)
MAX_RECEIVE = 256 * 1024 * 1024
# One connection per client: the server tells controllers apart by connection (a Write must
# arrive on the connection that arbitrated), and gRPC would otherwise share one between
# channels to the same address.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RECEIVE),
    ("grpc.use_local_subchannel_pool", 1),
]


class P4RuntimeClient:
    def __init__(
        self,
        address: str,
        device_id: int = 0,
        election_id: int = 1,
        timeout: float = 10.0,
        *,
        tls: TlsFiles | None,
    ) -> None:
        self.address = address
        self.device_id = device_id
        self.election_id = election_id
        self.timeout = timeout
        self.channel = secure_or_plain_channel(address, tls, CHANNEL_OPTIONS, "P4Runtime server")
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        # Write with a request serialized by us (`write_of`)
        self._write_serialized = self.channel.unary_unary(
            "/p4.v1.P4Runtime/Write", response_deserializer=p4r.WriteResponse.FromString
        )
        self.packet_ins: queue.Queue[p4r.PacketIn] = queue.Queue()
        self.idle_notifications: queue.Queue[p4r.IdleTimeoutNotification] = queue.Queue()
        self.arbitrations: queue.Queue[p4r.MasterArbitrationUpdate] = queue.Queue()
        self.stream_errors: queue.Queue[p4r.StreamError] = queue.Queue()
        self._sinks = {
            "arbitration": self.arbitrations.put,
            "packet": self.packet_ins.put,
            "idle_timeout_notification": self.idle_notifications.put,
            "error": self.stream_errors.put,
        }
        self._requests: queue.Queue[p4r.StreamMessageRequest | None] = queue.Queue()
        self._stream_thread: threading.Thread | None = None
        self._stream_call = None

    # ---- session ----------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise P4RuntimeError(
                grpc.StatusCode.UNAVAILABLE, f"no P4Runtime server answered at {self.address}"
            ) from None

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
        self._requests.put(arbitration_request(self.device_id, self.election_id))
        try:
            return self.arbitrations.get(timeout=self.timeout)
        except queue.Empty:
            raise P4RuntimeError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.address}: no arbitration answer"
            ) from None

    def arbitrate(self, election_id: int) -> None:
        """Send another MasterArbitrationUpdate on the open stream (the answer comes to
        `arbitrations`)."""
        self.election_id = election_id
        self._requests.put(arbitration_request(self.device_id, election_id))

    def _read_stream(self) -> None:
        try:
            for msg in self._stream_call:
                route_stream_message(msg, self._sinks, self.address)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.warning("%s: stream closed: %s", self.address, exc.details())

    def packet_out(self, payload: bytes, metadata: Iterable[tuple[int, bytes]]) -> None:
        self._requests.put(packet_out_request(payload, metadata))

    def close(self) -> None:
        self._requests.put(None)
        if self._stream_call is not None:
            self._stream_call.cancel()
        self.channel.close()

    # ---- RPCs -------------------------------------------------------------------------------

    def set_pipeline(self, p4info: p4i.P4Info, device_config: bytes, cookie: int = 0) -> None:
        req = pipeline_request(
            self.device_id, self.election_id, p4info, device_config, cookie=cookie
        )
        try:
            self.stub.SetForwardingPipelineConfig(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise rpc_error("SetForwardingPipelineConfig failed", exc) from None

    def write(self, updates: list[p4r.Update | bytes]) -> None:
        """One Write of `updates`, messages or already serialized (`ExactTableEncoder`)."""
        if not updates:
            return
        try:
            self._write_serialized(
                write_of(self.device_id, self.election_id, updates), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise decode_write_error(exc) from None

    def read(self, entities: list[p4r.Entity]) -> list[p4r.Entity]:
        out: list[p4r.Entity] = []
        for resp in self.read_stream(entities):
            out.extend(resp.entities)
        return out

    def read_stream(self, entities: list[p4r.Entity]) -> Iterator[p4r.ReadResponse]:
        """A Read's responses as they come: the deadline is per response (`timeout` s each),
        not for the whole Read, so a table of millions of entries can be read."""
        req = p4r.ReadRequest(device_id=self.device_id, entities=entities)
        call = self.stub.Read(req)
        late = threading.Event()

        def give_up() -> None:
            late.set()
            call.cancel()

        try:
            while True:
                timer = threading.Timer(self.timeout, give_up)
                timer.start()
                try:
                    resp = next(call)
                except StopIteration:
                    return
                finally:
                    timer.cancel()
                yield resp
        except grpc.RpcError as exc:
            if late.is_set():
                raise P4RuntimeError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"Read failed: no response from {self.address} within {self.timeout:.0f} s",
                ) from None
            raise rpc_error("Read failed", exc) from None
        finally:
            call.cancel()

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
