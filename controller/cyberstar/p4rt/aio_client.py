"""An asyncio P4Runtime client (grpc.aio), for controllers that run an event loop (FM).

The stream is read by a task that sorts messages into queues; `stream_closed` is set when the
stream ends, so a controller notices a restarted or dead device.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import grpc
from finsy.proto import p4i, p4r, p4r_grpc

from cyberstar.p4rt import batching, client
from cyberstar.p4rt.codec import write_of
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.messages import (
    Action,
    arbitration_request,
    decode_write_error,
    pipeline_request,
    route_stream_message,
    rpc_error,
    stream_write_error,
)
from cyberstar.timeline import mark
from cyberstar.tls import TlsFiles, aio_channel

log = logging.getLogger(__name__)
# A device that is down now may come up any moment (a PP node booted by a scale-out): retry
# its connection every half second at most, not with gRPC's default backoff of up to 2 min.
CHANNEL_OPTIONS = [
    *client.CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
QUEUE_LIMIT = 65536  # stream messages waiting for the controller, per kind


class AioP4RuntimeClient:
    def __init__(self, address: str, device_id: int, election_id: int, timeout: float = 10.0,
                 *, tls: TlsFiles | None) -> None:  # fmt: skip
        self.address = address
        self.device_id = device_id
        self.election_id = election_id
        self.timeout = timeout
        self.channel = aio_channel(address, tls, CHANNEL_OPTIONS, "P4Runtime server")
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        # Write with a request serialized by us (FM builds its updates as bytes), and the
        # stream, whose requests may be messages or bytes (PacketOuts built by hand)
        self._write_serialized = self.channel.unary_unary(
            "/p4.v1.P4Runtime/Write", response_deserializer=p4r.WriteResponse.FromString
        )
        self._stream_channel = self.channel.stream_stream(
            "/p4.v1.P4Runtime/StreamChannel",
            request_serializer=_serialize,
            response_deserializer=p4r.StreamMessageResponse.FromString,
        )
        # Bounded: what the controller does not take in time is dropped and counted (a
        # PacketIn's flow punts again), never buffered without end.
        self.packet_ins: asyncio.Queue[p4r.PacketIn] = asyncio.Queue(QUEUE_LIMIT)
        self.idle_notifications: asyncio.Queue[p4r.IdleTimeoutNotification] = asyncio.Queue(
            QUEUE_LIMIT
        )
        self.arbitrations: asyncio.Queue[p4r.MasterArbitrationUpdate] = asyncio.Queue()
        self.dropped = 0
        self._sinks = {
            "arbitration": self.arbitrations.put_nowait,
            "packet": self._bounded(self.packet_ins),
            "idle_timeout_notification": self._bounded(self.idle_notifications),
            "stream_write_result": self._on_stream_write_result,
        }
        self.stream_closed = asyncio.Event()
        # stream requests to write, each with what to call once gRPC has sent it
        self._out: asyncio.Queue[tuple[p4r.StreamMessageRequest, Callable | None] | None] = (
            asyncio.Queue()
        )
        self._reader: asyncio.Task | None = None
        self._writer: asyncio.Task | None = None
        self.batch = 1  # packets per stream message, once the server agreed to batches
        self.stream_writes = False  # the server takes StreamWrites (`stream_write`)
        self._write_ids = itertools.count(1)
        self._stream_results: dict[int, asyncio.Future] = {}  # StreamWrites awaiting results
        self._call = None

    def _bounded(self, queue: asyncio.Queue):
        def put(msg: object) -> None:
            try:
                queue.put_nowait(msg)
            except asyncio.QueueFull:
                self.dropped += 1

        return put

    async def open_stream(self) -> p4r.MasterArbitrationUpdate:
        """Open the StreamChannel and arbitrate with `election_id`; returns the answer."""

        self._call = self._stream_channel()
        self._reader = asyncio.create_task(self._read())
        self._writer = asyncio.create_task(self._write())
        await self.arbitrate(self.election_id)
        try:
            answer = await asyncio.wait_for(self.arbitrations.get(), self.timeout)
        except TimeoutError:
            raise P4RuntimeError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.address}: no arbitration answer"
            ) from None
        await self._negotiate_batching()
        return answer

    async def _negotiate_batching(self) -> None:
        """PacketIns and PacketOuts in batches when the server offers it (cyberstar's stream
        extension, `p4rt/batching.py`); standard messages otherwise."""
        try:
            caps = await self.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            log.info("%s: Capabilities: %s; no batching", self.address, exc.details())
            return
        offered = batching.server_max_packets(caps)
        self.stream_writes = batching.server_takes_stream_writes(caps)
        if offered:
            self.batch = min(offered, batching.MAX_PACKETS)
            await self._out.put((batching.opt_in_request(self.batch), None))

    async def arbitrate(self, election_id: int) -> None:
        self.election_id = election_id
        await self._out.put((arbitration_request(self.device_id, election_id), None))

    async def _write(self) -> None:
        """Write queued requests in order; with batching, PacketOuts queued together leave in
        one PacketOutBatch."""
        held: list = []  # a request taken while gathering PacketOuts: written next
        try:
            while True:
                item = held.pop() if held else await self._out.get()
                if item is None:
                    break
                msg, on_sent = item
                sent = [on_sent]
                if isinstance(msg, _Serialized):  # a whole StreamMessageRequest (StreamWrite)
                    msg = msg.request
                elif isinstance(msg, bytes):  # a serialized PacketOut
                    packets = [msg]
                    while len(packets) < self.batch and not self._out.empty():
                        nxt = self._out.get_nowait()
                        if nxt is None or not isinstance(nxt[0], bytes):
                            held.append(nxt)
                            break
                        packets.append(nxt[0])
                        sent.append(nxt[1])
                    msg = (batching.packet_out_batch_request(packets) if len(packets) > 1
                           else batching.packet_out_request(msg))  # fmt: skip
                await self._call.write(msg)
                for callback in sent:
                    if callback is not None:
                        callback()
            await self._call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            log.info("%s: stream writer ended: %s", self.address, exc)

    async def _read(self) -> None:
        try:
            async for msg in self._call:
                route_stream_message(msg, self._sinks, self.address)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.info("%s: stream ended: %s", self.address, exc.details())
        finally:
            self.stream_closed.set()
            ended = f"{self.address}: the stream ended before the StreamWrite's result"
            for result in self._stream_results.values():
                if not result.done():
                    result.set_exception(P4RuntimeError(grpc.StatusCode.UNAVAILABLE, ended))
            self._stream_results.clear()

    def _on_stream_write_result(self, result) -> None:
        future = self._stream_results.pop(result.id, None)
        if future is not None and not future.done():
            future.set_result(result)

    async def packet_out(self, payload: bytes, metadata: list[tuple[int, bytes]],
                         on_sent: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Queue a PacketOut; `on_sent` is called once gRPC has written it to the stream."""
        await self._out.put((batching.packet_out(payload, metadata), on_sent))

    async def get_pipeline(self) -> p4r.ForwardingPipelineConfig | None:
        """The device's pipeline, or None before one is set."""
        req = p4r.GetForwardingPipelineConfigRequest(
            device_id=self.device_id,
            response_type=p4r.GetForwardingPipelineConfigRequest.P4INFO_AND_COOKIE,
        )
        try:
            resp = await self.stub.GetForwardingPipelineConfig(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise rpc_error("GetForwardingPipelineConfig", exc) from None
        return resp.config if resp.config.HasField("p4info") else None

    async def set_pipeline(self, p4info: p4i.P4Info, device_config: bytes = b"",
                           action: int = Action.VERIFY_AND_COMMIT,
                           timeout: float | None = None) -> None:  # fmt: skip
        req = pipeline_request(self.device_id, self.election_id, p4info, device_config, action)
        try:
            await self.stub.SetForwardingPipelineConfig(req, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error("SetForwardingPipelineConfig", exc) from None

    async def write(self, updates: list[p4r.Update | bytes]) -> None:
        """One Write of `updates`, messages or already serialized (`ExactTableEncoder`)."""
        if not updates:
            return
        try:
            await self._write_serialized(
                write_of(self.device_id, self.election_id, updates), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise decode_write_error(exc) from None

    async def stream_write(self, updates: list[p4r.Update | bytes],
                           packets: list[batching.DependentPacket]) -> None:  # fmt: skip
        """One Write of `updates` and the PacketOuts that wait for it, as one StreamWrite on
        the stream (the server must take them: `stream_writes`). Returns once the server has
        written the updates and sent the packets whose updates all took effect; raises
        P4RuntimeError as `write` does."""
        write_id = next(self._write_ids)
        request = write_of(self.device_id, self.election_id, updates)
        result = asyncio.get_running_loop().create_future()
        self._stream_results[write_id] = result
        msg = _Serialized(batching.stream_write_request(write_id, request, packets))
        mark("fm.stream_write_queued")
        await self._out.put((msg, None))
        try:
            answer = await asyncio.wait_for(result, self.timeout)
            mark("fm.stream_write_result")
        except TimeoutError:
            raise P4RuntimeError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"{self.address}: no StreamWrite result within "
                                 f"{self.timeout:.0f} s") from None  # fmt: skip
        finally:
            self._stream_results.pop(write_id, None)
        error = stream_write_error(answer)
        if error is not None:
            raise error

    async def read(self, entities: list[p4r.Entity]) -> list[p4r.Entity]:
        out: list[p4r.Entity] = []
        async for resp in self.read_stream(entities):
            out.extend(resp.entities)
        return out

    async def read_stream(self, entities: list[p4r.Entity]) -> AsyncIterator[p4r.ReadResponse]:
        """A Read's responses as they come: the deadline is per response (`timeout` s each),
        not for the whole Read, so a table of millions of entries can be read."""
        req = p4r.ReadRequest(device_id=self.device_id, entities=entities)
        call = self.stub.Read(req)
        responses = aiter(call)
        try:
            while True:
                try:
                    yield await asyncio.wait_for(anext(responses), self.timeout)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise P4RuntimeError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"Read: no response from {self.address} within {self.timeout:.0f} s",
                    ) from None
        except grpc.aio.AioRpcError as exc:
            raise rpc_error("Read", exc) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._out.put(None)
        if self._call is not None:
            self._call.cancel()
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.channel.close()


class _Serialized(NamedTuple):
    """A serialized StreamMessageRequest in the writer's queue (plain bytes are PacketOuts)."""

    request: bytes


def _serialize(msg: p4r.StreamMessageRequest | bytes) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()
