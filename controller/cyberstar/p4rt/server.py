"""A P4Runtime server (grpc.aio) in front of a device.

The protocol lives here — device ids, arbitration, pipeline state, per-update errors in Write
status details, Read responses in bounded chunks, the stream — and the device
(`cyberstar.pp.device`) does the target work. Errors follow the P4Runtime specification's
status codes.

No client can block another: the server runs on its own event loop, so an idle stream costs
no thread; device work runs in a small thread pool and takes the device's lock one chunk at a
time, so a Read whose client stops consuming holds no lock (and is cancelled when one chunk
waits longer than `SEND_TIMEOUT_S`); streams are capped, and one that does not arbitrate
within `ARBITRATION_TIMEOUT_S` is closed. A PacketOut to a port's socket may wait as long as
the port is congested, so those leave from a transmit thread (its queue bounded: a stream's
reading pauses while `MAX_UNSENT_PACKET_OUTS` wait); PacketOuts into the pipeline are the
kernel's own work, which does not wait, and are sent on the loop unless the thread still holds
earlier ones (order is kept). A StreamWrite is answered once its packets are sent.

The door (`serve`): mutual TLS with certificates of a CA (`cyberstar certs init`), only callers
of certificate role `fm` or `admin`, or plaintext on loopback or a unix socket when asked for;
no SO_REUSEPORT; connections, handshakes and idle time bounded (`cyberstar.listen`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Protocol

import grpc
from finsy.proto import p4r, rpc_code, rpc_status
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from cyberstar.listen import GrpcLimits, bind, server_options
from cyberstar.p4rt import batching
from cyberstar.p4rt.arbitration import Arbitration, Controller
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.outbox import Outbox
from cyberstar.pipeline.frames import Punted
from cyberstar.timeline import mark
from cyberstar.tls import TlsFiles, grpc_peer

log = logging.getLogger(__name__)
API_VERSION = "1.4.0"
READ_CHUNK = 1000  # entities per ReadResponse
SEND_TIMEOUT_S = 30.0  # a Read response the client has not taken by then ends the Read
ARBITRATION_TIMEOUT_S = 10.0  # a stream must arbitrate this soon after it opens
MAX_STREAMS = 32  # open StreamChannels, arbitrated or not
OUTBOX_LIMIT = 65536  # messages queued for one stream (PacketIns beyond it are dropped)
MAX_UNREAD_ANSWERS = 4096  # a stream's answers and errors queued before its reading pauses
MAX_UNSENT_PACKET_OUTS = 4096  # PacketOuts waiting for the transmit thread; reading pauses here
MAX_MESSAGE_BYTES = 16 << 20
# A Write of at most this many updates runs on the event loop when the device is not busy: a
# thread hand-off costs more than the write (most of a small Write's CPU in a profile).
INLINE_WRITE_UPDATES = 64
MAX_SINCE_SAVE = 1 << 20  # updates written after VERIFY_AND_SAVE, replayed by COMMIT
CONTROLLER_ROLES = frozenset({"fm", "admin"})  # certificate roles that may use the service
Action = p4r.SetForwardingPipelineConfigRequest
_END = object()
_EXTENSIONS = (batching.STREAM_BATCHING, batching.PACKET_OUT_BATCH)  # StreamWrite: its own


class Device(Protocol):
    def verify_config(self, config: p4r.ForwardingPipelineConfig) -> None: ...
    def commit(self, reconcile: bool) -> None: ...
    # `request`: the serialized WriteRequest the updates came in, for a device that reads it
    def write(self, updates: list[p4r.Update], request: bytes | None = None
              ) -> list[P4RuntimeError | None]: ...  # fmt: skip
    def write_if_idle(self, updates: list[p4r.Update], request: bytes | None = None
                      ) -> list[P4RuntimeError | None] | None: ...  # fmt: skip
    def read(self, entity: p4r.Entity) -> Iterator[bytes]: ...  # serialized ReadResponses
    def packet_outs(self, packets: list[p4r.PacketOut]) -> list[P4RuntimeError | None]: ...
    def packet_outs_if_bounded(self, packets: list[p4r.PacketOut]
                               ) -> list[P4RuntimeError | None] | None: ...  # fmt: skip
    def packet_in(self, punted: Punted) -> bytes: ...


class PacketIns(list):
    """Serialized PacketIns queued for a stream as one item (a perf-buffer poll's worth); the
    stream's outbox weighs it by its length."""


def peer_of(context: grpc.aio.ServicerContext) -> str:
    """The connection a call arrived on: its transport address and, under TLS, the peer's
    certificate names. Calls on one gRPC channel share it; another process never does."""
    names = context.peer_identities() or ()
    return context.peer() + "".join(f"|{n.decode(errors='replace')}" for n in names)


class P4RuntimeServer:
    def __init__(self, device: Device, device_id: int) -> None:
        self.device = device
        self.device_id = device_id
        self.arbitration = Arbitration(device_id)
        self._config: p4r.ForwardingPipelineConfig | None = None  # committed
        self._saved: p4r.ForwardingPipelineConfig | None = None  # VERIFY_AND_SAVE
        self._since_save: list[p4r.Update] = []  # applied since, for COMMIT to replay (§14)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Lock | None = None  # writes, pipeline changes, arbitration
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="p4rt-device")
        self._tx = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="p4rt-packet-out")
        self._tx_lock = threading.Lock()
        self._unsent = 0  # PacketOuts handed to the transmit thread, not sent yet
        self._tx_room: asyncio.Event | None = None  # set when a paused reader may go on
        self._tx_paused = False
        self._streams = 0
        self.stats = {"write_errors": 0, "packet_in": 0, "packet_in_dropped": 0}

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._gate = asyncio.Lock()
        self._tx_room = asyncio.Event()

    # ---- helpers ------------------------------------------------------------------------------

    def _check_device(self, device_id: int) -> None:
        if device_id != self.device_id:
            raise P4RuntimeError(
                grpc.StatusCode.NOT_FOUND, f"device id {device_id}: this target is {self.device_id}"
            )

    def _check_pipeline(self) -> None:
        if self._config is None:
            raise P4RuntimeError(
                grpc.StatusCode.FAILED_PRECONDITION,
                # bmv2's words, which controllers (finsy) recognize
                "no forwarding pipeline config set for this device: "
                "call SetForwardingPipelineConfig first",
            )

    async def _on_device(self, fn, *args):
        assert self._loop is not None
        return await self._loop.run_in_executor(self._pool, fn, *args)

    def publish(self, msg: p4r.StreamMessageResponse | PacketIns) -> bool:
        """Send the primary (from any thread) a stream message (an idle-timeout notification)
        or PacketIns; each stream sends those as batches or one by one, as its controller
        asked."""
        ok = self.arbitration.send_to_primary(msg)
        if isinstance(msg, PacketIns):
            self.stats["packet_in" if ok else "packet_in_dropped"] += len(msg)
        return ok

    def notify(self, msg: bytes) -> bool:
        """Send a serialized stream message other than a PacketIn (an idle-timeout
        notification) to the primary (any thread)."""
        return self.arbitration.send_to_primary(msg)

    @property
    def pipeline_set(self) -> bool:
        return self._config is not None

    # ---- RPCs ---------------------------------------------------------------------------------

    async def Capabilities(self, request, context):
        return p4r.CapabilitiesResponse(
            p4runtime_api_version=API_VERSION, experimental=batching.capability()
        )

    async def SetForwardingPipelineConfig(self, request, context):
        assert self._gate is not None
        try:
            self._check_device(request.device_id)
            async with self._gate:
                self.arbitration.check_writer(_election_id(request), peer_of(context))
                await self._set_pipeline(request)
        except P4RuntimeError as err:
            await context.abort(err.code, err.message)
        return p4r.SetForwardingPipelineConfigResponse()

    async def _set_pipeline(self, request: p4r.SetForwardingPipelineConfigRequest) -> None:
        action = request.action
        if action in (
            Action.VERIFY,
            Action.VERIFY_AND_SAVE,
            Action.VERIFY_AND_COMMIT,
            Action.RECONCILE_AND_COMMIT,
        ):
            if not request.HasField("config"):
                raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, "no config given")
            await self._on_device(self.device.verify_config, request.config)
        if action == Action.VERIFY:
            pass
        elif action == Action.VERIFY_AND_SAVE:
            self._saved = request.config
            self._since_save = []
        elif action == Action.COMMIT:
            if request.HasField("config"):
                raise P4RuntimeError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "COMMIT takes no config (it commits the saved one)",
                )
            if self._saved is None:
                raise P4RuntimeError(grpc.StatusCode.NOT_FOUND, "no saved config to commit")
            # The forwarding state becomes the writes made since the save (§14).
            replay = self._since_save
            await self._commit(self._saved, reconcile=False)
            await self._on_device(self.device.write, replay)
        elif action in (Action.VERIFY_AND_COMMIT, Action.RECONCILE_AND_COMMIT):
            await self._commit(request.config, reconcile=action == Action.RECONCILE_AND_COMMIT)
        else:
            raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown action {action}")

    async def _commit(self, config: p4r.ForwardingPipelineConfig, reconcile: bool) -> None:
        await self._on_device(self.device.commit, reconcile and self._config is not None)
        self._config = p4r.ForwardingPipelineConfig()
        self._config.CopyFrom(config)
        self._saved = None
        self._since_save = []

    async def GetForwardingPipelineConfig(self, request, context):
        """The saved or committed config, with the fields `response_type` asks for; without
        one the response's `config` is unset (P4Runtime §15), which controllers (finsy,
        p4runtime-shell) take as "set the pipeline"."""
        try:
            self._check_device(request.device_id)
        except P4RuntimeError as err:
            await context.abort(err.code, err.message)
        # a saved config is the one later Reads and Writes refer to (§14)
        stored = self._saved if self._saved is not None else self._config
        if stored is None:
            return p4r.GetForwardingPipelineConfigResponse()
        rt = p4r.GetForwardingPipelineConfigRequest
        out = p4r.ForwardingPipelineConfig()
        if stored.HasField("cookie"):
            out.cookie.CopyFrom(stored.cookie)
        if request.response_type in (rt.ALL, rt.P4INFO_AND_COOKIE):
            out.p4info.CopyFrom(stored.p4info)
        if request.response_type in (rt.ALL, rt.DEVICE_CONFIG_AND_COOKIE):
            out.p4_device_config = stored.p4_device_config
        return p4r.GetForwardingPipelineConfigResponse(config=out)

    async def Write(self, request, context):
        raw = None
        if isinstance(request, SerializedWrite):
            request, raw = request.message, request.raw
        try:
            results = await self._write(request, raw, peer_of(context))
        except P4RuntimeError as err:
            await context.abort(err.code, err.message)
        status = _write_status(results)
        if status is None:
            return p4r.WriteResponse()
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.set_code(grpc.StatusCode.UNKNOWN)
        context.set_details(status.message)
        return p4r.WriteResponse()

    async def _write(self, request: p4r.WriteRequest, raw: bytes | None, peer: str
                     ) -> list[P4RuntimeError | None]:  # fmt: skip
        """A WriteRequest applied (the Write RPC's and a StreamWrite's): each update's error or
        None; P4RuntimeError when the request as a whole is refused."""
        assert self._gate is not None
        self._check_device(request.device_id)
        async with self._gate:
            self.arbitration.check_writer(_election_id(request), peer)
            self._check_pipeline()
            if request.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
                raise P4RuntimeError(
                    grpc.StatusCode.UNIMPLEMENTED, "only CONTINUE_ON_ERROR batches are supported"
                )
            updates = request.updates
            saving = self._saved is not None
            if saving and len(self._since_save) + len(updates) > MAX_SINCE_SAVE:
                raise P4RuntimeError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{MAX_SINCE_SAVE} updates were written since VERIFY_AND_SAVE: "
                    "COMMIT the saved config (or commit another) before writing more",
                )
            results = None
            if len(updates) <= INLINE_WRITE_UPDATES:
                results = self.device.write_if_idle(updates, raw)
            if results is None:
                results = await self._on_device(self.device.write, updates, raw)
            if saving:
                done = zip(updates, results, strict=True)
                self._since_save += [u for u, r in done if r is None]
        self.stats["write_errors"] += sum(r is not None for r in results)
        return results

    async def Read(self, request, context):
        try:
            self._check_device(request.device_id)
            self._check_pipeline()
            if not request.entities:
                await context.write(p4r.ReadResponse())
                return
            for entity in request.entities:
                chunks = self.device.read(entity)
                while (chunk := await self._on_device(next, chunks, None)) is not None:
                    try:
                        await asyncio.wait_for(context.write(chunk), SEND_TIMEOUT_S)
                    except TimeoutError:
                        raise P4RuntimeError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"the client took no Read response for {SEND_TIMEOUT_S:.0f} s",
                        ) from None
        except P4RuntimeError as err:
            await context.abort(err.code, err.message)

    async def StreamChannel(self, request_iterator, context):
        if self._streams >= MAX_STREAMS:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_STREAMS} streams are open already"
            )
        self._streams += 1
        assert self._loop is not None
        outbox = Outbox(self._loop, OUTBOX_LIMIT, weight=_weight)
        state = _StreamState(peer_of(context))
        reader = asyncio.create_task(self._read_stream(request_iterator, state, outbox))
        timer = self._loop.call_later(
            ARBITRATION_TIMEOUT_S, self._arbitration_overdue, state, outbox
        )
        try:
            while True:
                for item in _coalesced(await outbox.take(), state.batch):
                    if item is _END:
                        return
                    if isinstance(item, P4RuntimeError):
                        await context.abort(item.code, item.message)
                    await context.write(item)
        finally:
            timer.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._streams -= 1
            if state.controller is not None:
                self.arbitration.leave(state.controller)

    @staticmethod
    def _arbitration_overdue(state: _StreamState, outbox: Outbox) -> None:
        if state.controller is None:
            outbox.put_urgent(
                P4RuntimeError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no MasterArbitrationUpdate within {ARBITRATION_TIMEOUT_S:.0f} s",
                )
            )

    async def _read_stream(self, requests, state: _StreamState, outbox: Outbox) -> None:
        try:
            async for req in requests:
                # A controller that leaves its answers unread is not read either, nor one
                # whose PacketOuts the device cannot send as fast as they come.
                await outbox.urgent_below(MAX_UNREAD_ANSWERS)
                await self._packet_outs_below(MAX_UNSENT_PACKET_OUTS)
                await self._on_stream_request(req, state, outbox)
        except P4RuntimeError as err:
            outbox.put_urgent(err)
        except asyncio.CancelledError:
            raise
        except grpc.RpcError:
            pass
        except Exception:  # a bug must end this stream, not the server
            log.exception("stream reader failed")
        outbox.put_urgent(_END)

    async def _on_stream_request(
        self, req: p4r.StreamMessageRequest, state: _StreamState, outbox: Outbox
    ) -> None:
        if isinstance(req, Undecodable):
            raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, req.message)
        kind = req.WhichOneof("update")
        if kind == "arbitration":
            assert self._gate is not None
            async with self._gate:  # a change of primary waits for Writes in flight
                state.controller = self.arbitration.update(
                    state.controller, req.arbitration, outbox, state.peer
                )
            return
        controller = state.controller
        if controller is None:
            raise P4RuntimeError(
                grpc.StatusCode.FAILED_PRECONDITION, "send a MasterArbitrationUpdate first"
            )
        if kind == "packet":
            self._packet_outs(controller, [req.packet], outbox)
        elif kind == "other" and req.other.type_url == batching.STREAM_WRITE:
            await self._stream_write(controller, req.other, state.peer, outbox)
        elif kind == "other" and req.other.type_url in _EXTENSIONS:
            try:  # cyberstar's stream batching (p4rt/batching.py)
                if req.other.type_url == batching.STREAM_BATCHING:
                    wanted = batching.requested_max_packets(req.other)
                    state.batch = max(1, min(wanted, batching.MAX_PACKETS))
                    return
                packets = batching.packet_outs_of(req.other)
            except ValueError as exc:
                outbox.put_urgent(_stream_error(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
                return
            self._packet_outs(controller, packets, outbox)
        else:
            what = f"other ({req.other.type_url})" if kind == "other" else kind
            outbox.put_urgent(
                _stream_error(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported")
            )

    async def _stream_write(
        self, controller: Controller, other: any_pb2.Any, peer: str, outbox: Outbox
    ) -> None:
        """A StreamWrite (p4rt/batching.py): its Write as the Write RPC does it, then the
        PacketOuts whose updates all took effect, then its StreamWriteResult."""
        mark("pp.stream_write_received")
        try:
            msg = batching.stream_write_of(other)
        except ValueError as exc:
            outbox.put_urgent(_stream_error(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
            return
        try:
            if len(msg.packets) > batching.MAX_PACKETS:
                raise P4RuntimeError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a StreamWrite of {len(msg.packets)} PacketOuts: at most "
                    f"{batching.MAX_PACKETS}; split it",
                )
            request = _parse(p4r.WriteRequest, msg.write, "WriteRequest in the StreamWrite")
            ranges = [(p.first_update, p.first_update + p.updates) for p in msg.packets]
            bad = [r for r in ranges if r[1] > len(request.updates)]
            if bad:
                raise P4RuntimeError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a PacketOut waits for updates {bad[0][0]}..{bad[0][1] - 1} of a Write of "
                    f"{len(request.updates)}: name updates of this StreamWrite's Write",
                )
            packets = [
                _parse(p4r.PacketOut, p.packet_out, "PacketOut in the StreamWrite")
                for p in msg.packets
            ]
            results = await self._write(request, msg.write, peer)
        except P4RuntimeError as err:
            outbox.put_urgent(
                batching.stream_write_result_response(msg.id, err.code.value[0], err.message)
            )
            return
        mark("pp.write_applied")
        took = [r is None or r.code == grpc.StatusCode.ALREADY_EXISTS for r in results]
        ready = [p for p, (a, b) in zip(packets, ranges, strict=True) if all(took[a:b])]
        status = _write_status(results)
        if status is None:
            answer = batching.stream_write_result_response(msg.id, rpc_code.OK)
        else:
            errors = [d.value for d in status.details]
            answer = batching.stream_write_result_response(
                msg.id, status.code, status.message, errors
            )
        self._packet_outs(controller, ready, outbox, then=answer)

    def _packet_outs(self, controller: Controller, packets: list[p4r.PacketOut], outbox: Outbox,
                     then: bytes | None = None) -> None:  # fmt: skip
        """Send `packets` in order, each failure as a stream error, then queue the answer
        `then` (a StreamWrite's result) once they are all sent: on the loop when the device
        can send them without waiting, else from the transmit thread."""
        try:
            if not self.arbitration.is_primary(controller):
                raise P4RuntimeError(
                    grpc.StatusCode.PERMISSION_DENIED, "only the primary sends packets"
                )
            self._check_pipeline()
        except P4RuntimeError as err:
            for packet in packets:
                outbox.put_urgent(_stream_error(err.code, err.message, packet))
            if then is not None:
                outbox.put_urgent(then)
            return
        if not packets:
            if then is not None:
                outbox.put_urgent(then)
            return
        if self._unsent == 0:  # nothing queued to overtake: on the loop if it cannot wait
            try:
                results = self.device.packet_outs_if_bounded(packets)
            except Exception as exc:  # a bug: answer these PacketOuts, keep the stream
                results = _internal(packets, exc)
            if results is not None:
                _answer(packets, results, outbox, then)
                return
        with self._tx_lock:
            self._unsent += len(packets)
        self._tx.submit(self._transmit, packets, outbox, then)

    def _transmit(self, packets: list[p4r.PacketOut], outbox: Outbox, then: bytes | None) -> None:
        """On the transmit thread: the device sends the packets; errors and `then` queued."""
        try:
            results = self.device.packet_outs(packets)
        except Exception as exc:  # a bug: answer these PacketOuts, keep the stream
            results = _internal(packets, exc)
        _answer(packets, results, outbox, then)
        with self._tx_lock:
            self._unsent -= len(packets)
            wake = self._tx_paused and self._unsent < MAX_UNSENT_PACKET_OUTS
            if wake:
                self._tx_paused = False
        if wake and self._loop is not None and self._tx_room is not None:
            self._loop.call_soon_threadsafe(self._tx_room.set)

    async def _packet_outs_below(self, count: int) -> None:
        """Wait (on the event loop) until fewer than `count` PacketOuts wait to be sent."""
        assert self._tx_room is not None
        while True:
            with self._tx_lock:
                if self._unsent < count:
                    return
                self._tx_paused = True
                self._tx_room.clear()
            await self._tx_room.wait()


def _internal(packets: list[p4r.PacketOut], exc: Exception) -> list[P4RuntimeError | None]:
    log.error("PacketOut failed", exc_info=exc)
    return [P4RuntimeError(grpc.StatusCode.INTERNAL, str(exc))] * len(packets)


def _answer(packets: list[p4r.PacketOut], results: list[P4RuntimeError | None], outbox: Outbox,
            then: bytes | None) -> None:  # fmt: skip
    """Each refused PacketOut as a stream error, then `then` (a StreamWrite's result)."""
    mark("pp.packet_outs_sent")
    for packet, err in zip(packets, results, strict=True):
        if err is not None:
            outbox.put_urgent(_stream_error(err.code, err.message, packet))
    if then is not None:
        outbox.put_urgent(then)


class _StreamState:
    __slots__ = ("batch", "controller", "peer")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.controller: Controller | None = None
        self.batch = 1  # PacketIns per message: 1 until the controller asks for batches


def _weight(item: object) -> int:
    """An outbox item's weight: PacketIns count as their packets."""
    return len(item) if isinstance(item, PacketIns) else 1


def _coalesced(items: list, batch: int) -> Iterator[object]:
    """The stream messages for what the outbox held: PacketIns as standard one-packet messages,
    or, for a controller that asked for batches, consecutive PacketIns in batches of `batch`."""
    packets: list[bytes] = []
    for item in items:
        if isinstance(item, PacketIns):
            if batch == 1:
                yield from map(batching.packet_in_response, item)
            else:
                packets += item
            continue
        for i in range(0, len(packets), batch):
            yield batching.packet_in_batch_response(packets[i : i + batch])
        packets = []
        yield item
    for i in range(0, len(packets), batch):
        yield batching.packet_in_batch_response(packets[i : i + batch])


def _election_id(request) -> p4r.Uint128 | None:
    return request.election_id if request.HasField("election_id") else None


def _write_status(results: list[P4RuntimeError | None]) -> rpc_status.Status | None:
    """A Write's status when some updates failed (P4Runtime §12.3: UNKNOWN, one p4.v1.Error
    per update in the details, OK for those that took effect); None when none failed."""
    failed = sum(r is not None for r in results)
    if not failed:
        return None
    status = rpc_status.Status(
        code=rpc_code.UNKNOWN, message=f"{failed} of {len(results)} updates failed"
    )
    for r in results:
        err = p4r.Error(canonical_code=rpc_code.OK)
        if r is not None:
            err = p4r.Error(canonical_code=r.code.value[0], message=r.message, space="cyberstar")
        detail = any_pb2.Any()
        detail.Pack(err)
        status.details.append(detail)
    return status


def _stream_error(
    code: grpc.StatusCode, message: str, packet: p4r.PacketOut | None = None
) -> p4r.StreamMessageResponse:
    err = p4r.StreamError(canonical_code=code.value[0], message=message, space="cyberstar")
    if packet is not None:
        err.packet_out.packet_out.CopyFrom(packet)
    return p4r.StreamMessageResponse(error=err)


def _parse(message_type, raw: bytes, what: str):
    """`raw` parsed as `message_type`; INVALID_ARGUMENT naming `what` if it does not parse."""
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise P4RuntimeError(
            grpc.StatusCode.INVALID_ARGUMENT, f"the {what} does not parse: {exc}"
        ) from None


def _serialize(msg: object) -> bytes:
    """Responses may be pre-serialized bytes (PacketIns, idle-timeout notifications and Read
    responses, built without message objects)."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


class Undecodable:
    """A request whose bytes are not the message the method takes."""

    def __init__(self, what: str, error: Exception) -> None:
        self.message = f"the request is not a valid {what}: {error}"


def _decoder(message_type):
    """Parse a request; bytes that do not parse become an `Undecodable`, which the method
    answers with INVALID_ARGUMENT (gRPC would answer UNKNOWN and log a traceback)."""

    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except Exception as exc:
            return Undecodable(message_type.DESCRIPTOR.full_name, exc)

    return decode


class SerializedWrite:
    """A WriteRequest with the bytes it was parsed from, which the device may read whole."""

    __slots__ = ("message", "raw")

    def __init__(self, message: p4r.WriteRequest, raw: bytes) -> None:
        self.message, self.raw = message, raw


def _write_decoder(data: bytes) -> SerializedWrite | Undecodable:
    message = _decode_write(data)
    return message if isinstance(message, Undecodable) else SerializedWrite(message, data)


_decode_write = _decoder(p4r.WriteRequest)


def _refusing_undecodable(method):
    async def handler(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await method(request, context)

    return handler


def _handlers(impl: P4RuntimeServer) -> grpc.GenericRpcHandler:
    """The P4Runtime service, as the generated code registers it, except that StreamChannel
    responses go through `_serialize` and requests that do not parse are INVALID_ARGUMENT."""

    def unary(method, request_type, response_type, decoder=None):
        return grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(method),
            request_deserializer=decoder or _decoder(request_type),
            response_serializer=response_type.SerializeToString,
        )  # fmt: skip

    return grpc.method_handlers_generic_handler(
        "p4.v1.P4Runtime",
        {
            "Write": unary(impl.Write, p4r.WriteRequest, p4r.WriteResponse, _write_decoder),
            "Read": grpc.unary_stream_rpc_method_handler(
                _refusing_undecodable(impl.Read), request_deserializer=_decoder(p4r.ReadRequest),
                response_serializer=_serialize,
            ),
            "SetForwardingPipelineConfig": unary(
                impl.SetForwardingPipelineConfig, p4r.SetForwardingPipelineConfigRequest,
                p4r.SetForwardingPipelineConfigResponse,
            ),
            "GetForwardingPipelineConfig": unary(
                impl.GetForwardingPipelineConfig, p4r.GetForwardingPipelineConfigRequest,
                p4r.GetForwardingPipelineConfigResponse,
            ),
            "StreamChannel": grpc.stream_stream_rpc_method_handler(
                impl.StreamChannel, request_deserializer=_decoder(p4r.StreamMessageRequest),
                response_serializer=_serialize,
            ),
            "Capabilities": unary(
                impl.Capabilities, p4r.CapabilitiesRequest, p4r.CapabilitiesResponse
            ),
        },
    )  # fmt: skip


class _RoleCheck(grpc.GenericRpcHandler):
    """Over mutual TLS, only controllers (certificate role `fm` or `admin`) reach the service:
    each method's behavior is wrapped, the servicer is unchanged."""

    def __init__(self, inner: grpc.GenericRpcHandler, roles: frozenset[str]) -> None:
        self.inner = inner
        self.roles = roles

    def service(self, handler_call_details):
        handler = self.inner.service(handler_call_details)
        if handler is None:
            return None
        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        kind = next(k for k in kinds if getattr(handler, k) is not None)
        behavior = getattr(handler, kind)
        roles = self.roles

        async def checked(request, context):
            peer = grpc_peer(context)
            if peer is not None and peer.role not in roles:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"P4Runtime is not open to {peer.role}:{peer.name} (allowed roles: "
                    f"{', '.join(sorted(roles))})",
                )
            return await behavior(request, context)

        return handler._replace(**{kind: checked})


class ServingThread:
    """The server's event loop, in a thread of its own; `stop` ends it."""

    def __init__(self, server_impl: P4RuntimeServer, address: str, tls: TlsFiles | None) -> None:
        self.address = address
        self.tls = tls
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(server_impl, started), name="p4rt-server", daemon=True
        )
        self._thread.start()
        started.result()  # raises what binding raised

    def _run(self, impl: P4RuntimeServer, started: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start(impl))
        except BaseException as exc:
            started.set_exception(exc)
            self._loop.close()
            return
        started.set_result(None)
        self._loop.run_forever()
        self._loop.close()

    async def _start(self, impl: P4RuntimeServer) -> None:
        impl.bind_loop(self._loop)
        # No SO_REUSEPORT (a port another process holds is an error), bounded connections,
        # handshakes and idle time: `cyberstar.listen`.
        limits = GrpcLimits(max_message_bytes=MAX_MESSAGE_BYTES)
        server = grpc.aio.server(
            options=server_options(limits), maximum_concurrent_rpcs=4 * MAX_STREAMS
        )
        server.add_generic_rpc_handlers((_RoleCheck(_handlers(impl), CONTROLLER_ROLES),))
        bind(server, self.address, self.tls, "P4Runtime")
        if self.address.startswith("unix:"):  # on a socket file, its mode is the door's lock
            os.chmod(self.address.removeprefix("unix:"), 0o600)
        await server.start()
        self._server = server

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (its callbacks must be scheduled thread-safely)."""
        return self._loop

    def stop(self, grace: float = 1.0) -> None:
        if self._server is not None and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
            with contextlib.suppress(Exception):
                fut.result(grace + 5)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def serve(server_impl: P4RuntimeServer, address: str, tls: TlsFiles | None) -> ServingThread:
    """Serve P4Runtime on `address` (host:port or unix:PATH) until `stop`: mutual TLS with
    `tls`, or plaintext (None: loopback or a unix socket only). Raises OSError naming the
    address when it cannot listen."""
    return ServingThread(server_impl, address, tls)
