"""Compute and Release over a framed TCP link: FM → SC chain head without a gRPC call per
batch.

A Compute through grpc.aio costs ~1.2-1.5 ms of CPU, caller and node together, where a frame
on an asyncio TCP connection costs ~50 µs (`bench/grpc_floor.py`); FM makes one per batch of
first packets. So an SC node also serves Compute on a second listener, `compute_listen`,
published in etcd with its chain record, and FM calls a head there when the head publishes
one (gRPC otherwise; the gRPC Compute stays, for other SCGs and tools).

Frames are the chain link's (`replication.ChainLink`: a 4-byte big-endian length, then one
protobuf message): `ComputeCall` (call_id, hops, RuleBatch) from the caller, `ComputeAnswer`
(call_id, RuleReplyBatch, or an error Status for a call refused whole) back, in the order the
calls end. The node serves a call exactly as the gRPC Compute (`ScNode.compute_batch`). A call
with a `release` (ReleaseBatch) instead is a Release, answered with `released` (ReleaseReply),
exactly as the gRPC Release (`ScNode.release_batch`): FM releases a few hundred keys a call
when rules idle out, and a grpc.aio call costs more than its keys do.

The listener is a door like the gRPC one: over TLS, a connection must show a certificate of
a role Compute is open to (else it is closed at once); at most `max_connections` connections;
frames of at most `max_message_bytes`; at most `MAX_IN_FLIGHT` calls of one connection at a
time (more: the node stops reading that connection until one ends); batches of at most
`max_batch` requests or release items (more: the call is refused with MALFORMED); a connection
without a call for `idle_timeout_s` is closed; a frame that is not a ComputeCall closes its
connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from google.protobuf.message import DecodeError

from cyberstar.listen import PeerLog
from cyberstar.proto import sc_pb2
from cyberstar.sc.client import ReleaseKey, Request, release_batch, rule_batch
from cyberstar.sc.metrics import Counters
from cyberstar.sc.replication import HELLO_TIMEOUT_S, ChainLink

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16  # calls of one connection served at once
IDLE_CHECK_S = 5.0

Serve = Callable[[sc_pb2.RuleBatch, int], Awaitable[sc_pb2.RuleReplyBatch]]
ServeRelease = Callable[[sc_pb2.ReleaseBatch, int], Awaitable[sc_pb2.ReleaseReply]]


class ComputeService:
    """The node's side: `accept` is the listener's protocol factory."""

    def __init__(self, serve: Serve, release: ServeRelease, *, tls: bool, allowed: set[str],
                 counters: Counters, max_batch: int, max_frame: int, max_connections: int,
                 idle_timeout_s: float) -> None:  # fmt: skip
        self._serve = serve
        self._release = release
        self._tls = tls
        self._allowed = allowed
        self._counters = counters
        self.max_batch = max_batch
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._links: dict[ChainLink, _Calls] = {}
        self._refusals = PeerLog(log)
        self._idle_task: asyncio.Task | None = None

    def accept(self) -> ChainLink:
        return ChainLink(self._on_frames, self.max_frame, self._on_open, self._on_oversized)

    def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        for link in list(self._links):
            link.close()

    def _on_open(self, link: ChainLink) -> None:
        why = ""
        if len(self._links) >= self.max_connections:
            why = f"{self.max_connections} compute-link connections are open already"
        elif self._tls and (link.peer is None or link.peer.role not in self._allowed):
            who = f"{link.peer.role}:{link.peer.name}" if link.peer else "no certificate"
            why = (f"Compute is not open to {who} (allowed roles: "
                   f"{', '.join(sorted(self._allowed))})")  # fmt: skip
        if why:
            self._counters.inc("refused_calls")
            self._refusals.bad_request(link.remote, f"compute link: {why}; closing")
            link.close()
            return
        self._links[link] = _Calls()
        link.closed.add_done_callback(lambda _: self._links.pop(link, None))
        if self._idle_task is None:
            self._idle_task = asyncio.get_running_loop().create_task(self._close_idle())

    def _on_oversized(self, link: ChainLink, size: int) -> None:
        self._counters.inc("refused_calls")
        self._refusals.bad_request(link.remote, f"compute link: a frame of {size} bytes (at "
                                   f"most {self.max_frame}); closing")  # fmt: skip

    def _on_frames(self, link: ChainLink, frames: list[bytes]) -> None:
        calls = self._links.get(link)
        if calls is None:
            return
        calls.last_activity = time.monotonic()
        for frame in frames:
            try:
                calls.waiting.append(sc_pb2.ComputeCall.FromString(frame))
                self._counters.inc("link_calls")
            except DecodeError:
                self._counters.inc("refused_calls")
                self._refusals.bad_request(link.remote, f"compute link: {len(frame)} bytes "
                                           "that are not a ComputeCall; closing")  # fmt: skip
                link.close()
                return
        self._pump(link, calls)

    def _pump(self, link: ChainLink, calls: _Calls) -> None:
        """Start waiting calls up to MAX_IN_FLIGHT; read the connection only while none wait
        (the calls of one read wait at most: a read is a few hundred kilobytes)."""
        loop = asyncio.get_running_loop()
        while calls.waiting and calls.running < MAX_IN_FLIGHT:
            calls.running += 1
            task = loop.create_task(self._answer(link, calls, calls.waiting.popleft()))
            calls.tasks.add(task)
            task.add_done_callback(calls.tasks.discard)
        if link.transport is None:
            return
        if calls.waiting and not calls.paused:
            link.transport.pause_reading()
            calls.paused = True
        elif not calls.waiting and calls.paused:
            link.transport.resume_reading()
            calls.paused = False

    async def _answer(self, link: ChainLink, calls: _Calls, call: sc_pb2.ComputeCall) -> None:
        answer = sc_pb2.ComputeAnswer(call_id=call.call_id)
        releasing = call.HasField("release")
        try:
            n = len(call.release.items) if releasing else len(call.batch.requests)
            if n > self.max_batch:
                self._counters.inc("refused_calls")
                answer.error.code = sc_pb2.MALFORMED
                what = "Release" if releasing else "Compute"
                answer.error.message = (f"{what} of {n} items: at most {self.max_batch} "
                                        "per call; split the batch")  # fmt: skip
            elif releasing:
                answer.released.CopyFrom(await self._release(call.release, call.hops))
            else:
                answer.batch.CopyFrom(await self._serve(call.batch, call.hops))
        except Exception as exc:  # a bug: this call fails, the link goes on
            log.exception("compute link call %d", call.call_id)
            answer.error.code = sc_pb2.INTERNAL
            answer.error.message = f"the SC node failed to compute: {exc}"
        finally:
            calls.running -= 1
            calls.last_activity = time.monotonic()
        link.send(answer.SerializeToString())
        self._pump(link, calls)

    async def _close_idle(self) -> None:
        while True:
            await asyncio.sleep(min(IDLE_CHECK_S, self.idle_timeout_s))
            now = time.monotonic()
            for link, calls in list(self._links.items()):
                idle = not calls.running and not calls.waiting
                if idle and now - calls.last_activity > self.idle_timeout_s:
                    link.close()


class _Calls:
    """The calls of one connection: waiting to start, and running."""

    __slots__ = ("last_activity", "paused", "running", "tasks", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[sc_pb2.ComputeCall] = deque()
        self.running = 0
        self.paused = False
        self.last_activity = time.monotonic()
        self.tasks: set[asyncio.Task] = set()


class ComputeLinkError(ConnectionError):
    """The call got no answer: the link failed, timed out, or the node refused the call."""


class ComputeLinkUnreachable(ComputeLinkError):
    """No connection could be made (nothing was sent): the caller may use gRPC instead."""


class ComputeLinkClient:
    """The caller's side, with `ScClient.compute`'s and `ScClient.release`'s signatures: one
    connection, opened on the first call and again after it closes; calls in flight fail when
    it closes."""

    def __init__(self, address: str, ssl_context: ssl.SSLContext | None,
                 timeout_s: float = 30.0, max_frame: int = 512 << 20) -> None:  # fmt: skip
        self.address = address
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self._max_frame = max_frame
        self._link: ChainLink | None = None
        self._connecting: asyncio.Lock | None = None
        self._calls: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)

    async def compute(
        self,
        requests: Iterable[Request | sc_pb2.RuleRequest],
        hops: int = 0,
        packed_layout: int = 0,
    ) -> list[sc_pb2.RuleReply]:
        """One reply per request, in order."""
        batch = rule_batch(requests, packed_layout)
        answer = await self._call(sc_pb2.ComputeCall(hops=hops, batch=batch))
        return list(answer.batch.replies)

    async def release(
        self, keys: Iterable[ReleaseKey | sc_pb2.ReleaseItem], hops: int = 0
    ) -> sc_pb2.ReleaseReply:
        """Release the keys, as `ScClient.release`."""
        answer = await self._call(sc_pb2.ComputeCall(hops=hops, release=release_batch(keys)))
        return answer.released

    async def _call(self, call: sc_pb2.ComputeCall) -> sc_pb2.ComputeAnswer:
        link = await self._connected()
        call.call_id = call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        answered = self._calls[call_id] = loop.create_future()
        timer = loop.call_later(self.timeout_s, _fail, answered,
                                ComputeLinkError(f"{self.address}: no answer in "
                                                 f"{self.timeout_s:g} s"))  # fmt: skip
        try:
            link.send(call.SerializeToString())
            answer: sc_pb2.ComputeAnswer = await answered
        finally:
            timer.cancel()
            self._calls.pop(call_id, None)
        if answer.HasField("error"):
            raise ComputeLinkError(f"{self.address}: {answer.error.message}")
        return answer

    async def close(self) -> None:
        if self._link is not None:
            self._link.close()
            await self._link.closed

    async def _connected(self) -> ChainLink:
        link = self._link
        if link is not None and link.transport is not None:
            return link
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._link is not None and self._link.transport is not None:
                return self._link
            host, _, port = self.address.rpartition(":")
            loop = asyncio.get_running_loop()
            connecting = loop.create_connection(
                lambda: ChainLink(
                    self._on_frames, self._max_frame, on_oversized=self._on_oversized
                ),
                host.strip("[]"),
                int(port),
                ssl=self._ssl,
                ssl_handshake_timeout=HELLO_TIMEOUT_S if self._ssl else None,
            )
            try:
                _, link = await asyncio.wait_for(connecting, self.timeout_s)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                why = str(exc) or f"no connection in {self.timeout_s:g} s"
                raise ComputeLinkUnreachable(f"{self.address}: cannot connect: {why}") from None
            if self._ssl is not None and (link.peer is None or link.peer.role != "sc"):
                link.close()
                raise ComputeLinkUnreachable(
                    f"{self.address} answers with the certificate of "
                    f"{link.peer.role + ':' + link.peer.name if link.peer else 'nobody'}, "
                    "not an SC node's"
                )
            link.closed.add_done_callback(lambda _: self._lost(link))
            self._link = link
            return link

    def _on_frames(self, link: ChainLink, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                answer = sc_pb2.ComputeAnswer.FromString(frame)
            except DecodeError:
                log.warning("compute link to %s: %d bytes that are not a ComputeAnswer; "
                            "closing", self.address, len(frame))  # fmt: skip
                link.close()
                return
            waiter = self._calls.get(answer.call_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(answer)

    def _on_oversized(self, _link: ChainLink, size: int) -> None:
        log.warning("compute link to %s: a frame of %d bytes (at most %d); closing",
                    self.address, size, self._max_frame)  # fmt: skip

    def _lost(self, link: ChainLink) -> None:
        if self._link is link:
            self._link = None
        for waiter in list(self._calls.values()):
            _fail(waiter, ComputeLinkError(f"{self.address}: the link closed"))


def _fail(waiter: asyncio.Future, exc: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(exc)
