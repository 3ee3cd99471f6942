"""Raw P4Runtime connections that turn every answer into a canonical, comparable form, for
replaying the same requests against bmv2 (the oracle) and the XDP node.

Nothing here interprets P4Runtime: a unary call becomes its status code name plus, for a failed
Write, the canonical code of each update's `p4.v1.Error` (P4Runtime §12.3); a Read becomes the
sorted text of the entities it returned; a stream message becomes its kind and the fields a
controller acts on. Messages, which differ between implementations by design, are dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from finsy.proto import p4i, p4r, p4r_grpc, rpc_code, rpc_status
from google.protobuf import text_format

from cyberstar.p4rt.client import CHANNEL_OPTIONS
from cyberstar.tls import TlsFiles, secure_or_plain_channel

Outcome = tuple  # ("OK", ...) or (code name, ...): compared as a whole
SETTLE_S = 0.25  # a stream is quiet when nothing arrived for this long
CALL_TIMEOUT_S = 20.0


@dataclass
class Target:
    """A P4Runtime server to replay requests against."""

    name: str  # "bmv2" or "xdp"
    address: str
    tls: TlsFiles | None
    device_id: int
    device_config: bytes
    p4info: p4i.P4Info

    def connect(self) -> Connection:
        return Connection(self)


def _code(exc: grpc.RpcError) -> str:
    return exc.code().name


def _update_codes(exc: grpc.RpcError) -> tuple[str, ...]:
    """The canonical code of each update's p4.v1.Error in the status details."""
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not raw:
        return ()
    codes = []
    for detail in rpc_status.Status.FromString(raw).details:
        err = p4r.Error()
        codes.append(rpc_code.Code.Name(err.canonical_code) if detail.Unpack(err) else "?")
    return tuple(codes)


def canonical_entity(entity: p4r.Entity) -> str:
    return text_format.MessageToString(entity, as_one_line=True)


class Connection:
    """One gRPC connection (controllers are told apart by connection) to a target."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.channel = secure_or_plain_channel(
            target.address, target.tls, CHANNEL_OPTIONS, f"{target.name} P4Runtime"
        )
        grpc.channel_ready_future(self.channel).result(timeout=CALL_TIMEOUT_S)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.streams: list[Stream] = []

    def call(self, method: str, request) -> tuple[Outcome, object]:
        """A unary RPC: (outcome, response or None)."""
        try:
            response = getattr(self.stub, method)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return (_code(exc), *_update_codes(exc)), None
        return ("OK",), response

    def unary(self, method: str, request) -> Outcome:
        return self.call(method, request)[0]

    def read(self, request: p4r.ReadRequest) -> Outcome:
        """("OK", sorted entities) or (code,)."""
        try:
            entities = [e for r in self.stub.Read(request, timeout=CALL_TIMEOUT_S)
                        for e in r.entities]  # fmt: skip
        except grpc.RpcError as exc:
            return (_code(exc),)
        return ("OK", tuple(sorted(canonical_entity(e) for e in entities)))

    def stream(self) -> Stream:
        s = Stream(self.stub)
        self.streams.append(s)
        return s

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self.channel.close()


class Stream:
    """A StreamChannel whose answers are collected, in canonical form, by a thread."""

    def __init__(self, stub: p4r_grpc.P4RuntimeStub) -> None:
        self._requests: queue.Queue[p4r.StreamMessageRequest | None] = queue.Queue()
        self.received: queue.Queue[Outcome] = queue.Queue()
        self._call = stub.StreamChannel(self._iterate())
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _iterate(self) -> Iterator[p4r.StreamMessageRequest]:
        while (msg := self._requests.get()) is not None:
            yield msg

    def _collect(self) -> None:
        try:
            for msg in self._call:
                self.received.put(canonical_stream_message(msg))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.received.put(("closed", _code(exc)))

    def send(self, msg: p4r.StreamMessageRequest) -> None:
        self._requests.put(msg)

    def arbitrate(self, device_id: int, election_id: int | None = None,
                  role: p4r.Role | None = None) -> None:  # fmt: skip
        upd = p4r.MasterArbitrationUpdate(device_id=device_id)
        if election_id is not None:
            upd.election_id.high, upd.election_id.low = election_id >> 64, election_id % 2**64
        if role is not None:
            upd.role.CopyFrom(role)
        self.send(p4r.StreamMessageRequest(arbitration=upd))

    def take(self, timeout: float = 5.0) -> Outcome | None:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


def settle(streams: list[Stream], first_within: float = 3.0) -> list[tuple[Outcome, ...]]:
    """What each stream received until all were quiet for SETTLE_S (waiting at most
    `first_within` for anything at all)."""
    got: list[list[Outcome]] = [[] for _ in streams]
    deadline = time.monotonic() + first_within
    quiet_since = None
    while True:
        moved = False
        for i, s in enumerate(streams):
            while not s.received.empty():
                got[i].append(s.received.get_nowait())
                moved = True
        now = time.monotonic()
        if moved or (quiet_since is None and any(got)):
            quiet_since = now
        if quiet_since is not None and now - quiet_since >= SETTLE_S:
            break
        if quiet_since is None and now >= deadline:
            break
        time.sleep(0.01)
    return [tuple(g) for g in got]


def canonical_stream_message(msg: p4r.StreamMessageResponse) -> Outcome:
    kind = msg.WhichOneof("update")
    if kind == "arbitration":
        a = msg.arbitration
        eid = (a.election_id.high << 64 | a.election_id.low) if a.HasField("election_id") else None
        return ("arbitration", a.device_id, eid, rpc_code.Code.Name(a.status.code))
    if kind == "packet":
        meta = tuple(sorted((m.metadata_id, int.from_bytes(m.value, "big"))
                            for m in msg.packet.metadata))  # fmt: skip
        return ("packet", msg.packet.payload.hex(), meta)
    if kind == "error":
        return ("error", rpc_code.Code.Name(msg.error.canonical_code),
                msg.error.WhichOneof("details") or "")  # fmt: skip
    if kind == "idle_timeout_notification":
        entries = sorted(canonical_entity(p4r.Entity(table_entry=e))
                         for e in msg.idle_timeout_notification.table_entry)  # fmt: skip
        return ("idle", tuple(entries))
    return (kind,)
