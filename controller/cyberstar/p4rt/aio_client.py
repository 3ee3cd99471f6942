"""An asyncio P4Runtime client (grpc.aio), for controllers that run an event loop (FM).

The stream is read by a task that sorts messages into queues; `stream_closed` is set when the
stream ends, so a controller notices a restarted or dead device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from finsy.proto import p4i, p4r, p4r_grpc

from cyberstar.p4rt.client import CHANNEL_OPTIONS
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.messages import (
    Action,
    arbitration_request,
    decode_write_error,
    packet_out_request,
    pipeline_request,
    route_stream_message,
    rpc_error,
    write_request,
)

log = logging.getLogger(__name__)


class AioP4RuntimeClient:
    def __init__(self, address: str, device_id: int, election_id: int, timeout: float = 10.0
                 ) -> None:  # fmt: skip
        self.address = address
        self.device_id = device_id
        self.election_id = election_id
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.packet_ins: asyncio.Queue[p4r.PacketIn] = asyncio.Queue()
        self.idle_notifications: asyncio.Queue[p4r.IdleTimeoutNotification] = asyncio.Queue()
        self.arbitrations: asyncio.Queue[p4r.MasterArbitrationUpdate] = asyncio.Queue()
        self._sinks = {
            "arbitration": self.arbitrations.put_nowait,
            "packet": self.packet_ins.put_nowait,
            "idle_timeout_notification": self.idle_notifications.put_nowait,
        }
        self.stream_closed = asyncio.Event()
        self._out: asyncio.Queue[p4r.StreamMessageRequest | None] = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._call = None

    async def open_stream(self) -> p4r.MasterArbitrationUpdate:
        """Open the StreamChannel and arbitrate with `election_id`; returns the answer."""

        async def requests() -> AsyncIterator[p4r.StreamMessageRequest]:
            while (msg := await self._out.get()) is not None:
                yield msg

        self._call = self.stub.StreamChannel(requests())
        self._reader = asyncio.create_task(self._read())
        await self.arbitrate(self.election_id)
        try:
            return await asyncio.wait_for(self.arbitrations.get(), self.timeout)
        except TimeoutError:
            raise P4RuntimeError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.address}: no arbitration answer"
            ) from None

    async def arbitrate(self, election_id: int) -> None:
        self.election_id = election_id
        await self._out.put(arbitration_request(self.device_id, election_id))

    async def _read(self) -> None:
        try:
            async for msg in self._call:
                route_stream_message(msg, self._sinks, self.address)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.info("%s: stream ended: %s", self.address, exc.details())
        finally:
            self.stream_closed.set()

    async def packet_out(self, payload: bytes, metadata: list[tuple[int, bytes]]) -> None:
        await self._out.put(packet_out_request(payload, metadata))

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
                           action: int = Action.VERIFY_AND_COMMIT) -> None:  # fmt: skip
        req = pipeline_request(self.device_id, self.election_id, p4info, device_config, action)
        try:
            await self.stub.SetForwardingPipelineConfig(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error("SetForwardingPipelineConfig", exc) from None

    async def write(self, updates: list[p4r.Update]) -> None:
        if not updates:
            return
        req = write_request(self.device_id, self.election_id, updates)
        try:
            await self.stub.Write(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise decode_write_error(exc) from None

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
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self.channel.close()
