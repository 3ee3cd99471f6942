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

Packet-pass-through (paper §3.2, `replication.py`): FM also connects to the chain's tail and
registers there for a random token (a call with `listen`). A Compute to the head that names
the token (`answer_token`) may then be answered by the tail, on that connection, once the
tail applied the batch's update — two messages fewer on the first packet's path than the
acknowledgement back up the chain and the head's answer. The caller takes whichever answer of
a call comes first (the head sends it too when the tail may not have); `ComputeLinkClient`
does all this when given the tail's address (`use_tail`).

The listener is a door like the gRPC one: over TLS, a connection must show a certificate of
a role Compute is open to (else it is closed at once); at most `max_connections` connections;
frames of at most `max_message_bytes`; at most `MAX_IN_FLIGHT` calls of one connection at a
time (more: the node stops reading that connection until one ends); batches of at most
`max_batch` requests or release items (more: the call is refused with MALFORMED); a connection
without a call or an answer for `idle_timeout_s` is closed; a frame that is not a ComputeCall
closes its connection; a token of 16 to 64 bytes, at most `MAX_TOKENS` per connection (more
or other sizes: MALFORMED).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cyberstar.listen import PeerLog
from cyberstar.proto import sc_pb2
from cyberstar.sc.client import ReleaseKey, Request, release_batch, rule_batch
from cyberstar.sc.metrics import Counters
from cyberstar.sc.replication import HELLO_TIMEOUT_S, ChainLink
from cyberstar.timeline import mark

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16  # calls of one connection served at once
IDLE_CHECK_S = 5.0
MAX_TOKENS = 16  # answer tokens one connection may listen for
TOKEN_BYTES = (16, 64)
TAIL_RETRY_S = (0.1, 5.0)  # the caller's pause before listening on the tail again: first, most
TAIL_GRACE_S = 2.0  # a former tail's connection is kept this long for answers under way


@dataclass(frozen=True)
class AnswerRoute:
    """Where a Compute's answer goes: the call's id, the token the caller listens for on the
    chain's tail, and its own connection to the head (`send` takes a serialized answer)."""

    call_id: int
    token: bytes
    send: Callable[[bytes], None]


# serve(batch, hops, route): the replies, or None when the answer went into the chain with
# `route` (the tail or, failing it, the node itself sends it later).
Serve = Callable[[sc_pb2.RuleBatch, int, AnswerRoute | None],
                 Awaitable[sc_pb2.RuleReplyBatch | None]]  # fmt: skip
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
        self._listeners: dict[bytes, ChainLink] = {}  # answer token → the caller's connection
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
        link.closed.add_done_callback(lambda _: self._forget(link))
        if self._idle_task is None:
            self._idle_task = asyncio.get_running_loop().create_task(self._close_idle())

    def _forget(self, link: ChainLink) -> None:
        calls = self._links.pop(link, None)
        for token in calls.tokens if calls is not None else ():
            if self._listeners.get(token) is link:
                del self._listeners[token]

    def deliver(self, token: bytes, answer: bytes) -> bool:
        """Send a passed-through answer to the connection listening for `token`; False when
        none is (the head sends it then)."""
        mark("sc.tail_answering")
        link = self._listeners.get(token)
        if link is None or link.transport is None or link.transport.is_closing():
            return False
        link.send(answer)
        calls = self._links.get(link)
        if calls is not None:
            calls.last_activity = time.monotonic()
        return True

    def _listen(self, link: ChainLink, calls: _Calls, call: sc_pb2.ComputeCall) -> None:
        answer = sc_pb2.ComputeAnswer(call_id=call.call_id)
        token = call.listen
        lo, hi = TOKEN_BYTES
        if not lo <= len(token) <= hi or (token not in calls.tokens
                                          and len(calls.tokens) >= MAX_TOKENS):  # fmt: skip
            self._counters.inc("refused_calls")
            answer.error.code = sc_pb2.MALFORMED
            answer.error.message = (f"listen: a token of {len(token)} bytes on a connection "
                                    f"with {len(calls.tokens)}; tokens are {lo} to {hi} "
                                    f"bytes, at most {MAX_TOKENS} per connection")  # fmt: skip
        else:
            calls.tokens.add(token)
            self._listeners[token] = link
        link.send(answer.SerializeToString())

    def _on_oversized(self, link: ChainLink, size: int) -> None:
        self._counters.inc("refused_calls")
        self._refusals.bad_request(link.remote, f"compute link: a frame of {size} bytes (at "
                                   f"most {self.max_frame}); closing")  # fmt: skip

    def _on_frames(self, link: ChainLink, frames: list[bytes]) -> None:
        mark("sc.compute_frames_received")
        calls = self._links.get(link)
        if calls is None:
            return
        calls.last_activity = time.monotonic()
        for frame in frames:
            try:
                call = sc_pb2.ComputeCall.FromString(frame)
            except DecodeError:
                self._counters.inc("refused_calls")
                self._refusals.bad_request(link.remote, f"compute link: {len(frame)} bytes "
                                           "that are not a ComputeCall; closing")  # fmt: skip
                link.close()
                return
            if call.listen:
                self._listen(link, calls, call)
            else:
                calls.waiting.append(call)
                self._counters.inc("link_calls")
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
                route = (AnswerRoute(call.call_id, call.answer_token, link.send)
                         if call.answer_token else None)  # fmt: skip
                batch = await self._serve(call.batch, call.hops, route)
                if batch is None:
                    return  # passed through the chain: answered later, by the tail or by us
                answer.batch.CopyFrom(batch)
        except Exception as exc:  # a bug: this call fails, the link goes on
            log.exception("compute link call %d", call.call_id)
            answer.error.code = sc_pb2.INTERNAL
            answer.error.message = f"the SC node failed to compute: {exc}"
        finally:
            calls.running -= 1
            calls.last_activity = time.monotonic()
            self._pump(link, calls)
        link.send(answer.SerializeToString())

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

    __slots__ = ("last_activity", "paused", "running", "tasks", "tokens", "waiting")

    def __init__(self) -> None:
        self.tokens: set[bytes] = set()  # answer tokens this connection listens for
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
    it closes. After `use_tail(address)` it also listens on the chain's tail (a second
    connection, kept open in the background) and lets the tail answer while it does."""

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
        self.token = os.urandom(16)
        self._tail: _TailListener | None = None
        self._grace: set[_TailListener] = set()  # former tails, closed after TAIL_GRACE_S

    @property
    def tail_address(self) -> str:
        return self._tail.address if self._tail is not None else ""

    def use_tail(self, address: str) -> None:
        """Listen on the chain's tail at compute address `address` ("" = the head answers).
        A former tail's connection stays open `TAIL_GRACE_S` for the answers under way."""
        if address == self.tail_address:
            return
        old, self._tail = self._tail, None
        if old is not None:
            self._grace.add(old)
            asyncio.get_running_loop().call_later(TAIL_GRACE_S, self._retire, old)
        if address:
            self._tail = _TailListener(self, address)

    def _retire(self, listener: _TailListener) -> None:
        self._grace.discard(listener)
        listener.stop()

    @property
    def listening(self) -> bool:
        """Whether the tail knows this client's token: calls let the tail answer."""
        return self._tail is not None and self._tail.live

    async def compute(
        self,
        requests: Iterable[Request | sc_pb2.RuleRequest],
        hops: int = 0,
        packed_layout: int = 0,
    ) -> list[sc_pb2.RuleReply]:
        """One reply per request, in order."""
        batch = rule_batch(requests, packed_layout)
        tail = self._tail if self.listening else None
        call = sc_pb2.ComputeCall(hops=hops, batch=batch, answer_token=self.token if tail else b"")
        answer = await self._call(call, tail)
        return list(answer.batch.replies)

    async def release(
        self, keys: Iterable[ReleaseKey | sc_pb2.ReleaseItem], hops: int = 0
    ) -> sc_pb2.ReleaseReply:
        """Release the keys, as `ScClient.release`."""
        answer = await self._call(sc_pb2.ComputeCall(hops=hops, release=release_batch(keys)))
        return answer.released

    async def _call(
        self, call: sc_pb2.ComputeCall, tail: _TailListener | None = None
    ) -> sc_pb2.ComputeAnswer:
        link = await self._connected()
        call.call_id = call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        answered = self._calls[call_id] = loop.create_future()
        if tail is not None:
            tail.waiting[call_id] = answered
        timer = loop.call_later(self.timeout_s, _fail, answered,
                                ComputeLinkError(f"{self.address}: no answer in "
                                                 f"{self.timeout_s:g} s"))  # fmt: skip
        try:
            link.send(call.SerializeToString())
            answer: sc_pb2.ComputeAnswer = await answered
        finally:
            timer.cancel()
            self._calls.pop(call_id, None)
            if tail is not None:
                tail.waiting.pop(call_id, None)
        if answer.HasField("error"):
            raise ComputeLinkError(f"{self.address}: {answer.error.message}")
        return answer

    async def close(self) -> None:
        for listener in [self._tail, *self._grace]:
            if listener is not None:
                listener.stop()
        self._tail = None
        self._grace.clear()
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
            link = await self._open(self.address)
            link.closed.add_done_callback(lambda _: self._lost(link))
            self._link = link
            return link

    async def _open(self, address: str) -> ChainLink:
        """A connection to an SC node's compute link whose answers go to this client's calls."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(
            lambda: ChainLink(self._on_frames, self._max_frame, on_oversized=self._on_oversized),
            host.strip("[]"),
            int(port),
            ssl=self._ssl,
            ssl_handshake_timeout=HELLO_TIMEOUT_S if self._ssl else None,
        )
        try:
            _, link = await asyncio.wait_for(connecting, self.timeout_s)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            why = str(exc) or f"no connection in {self.timeout_s:g} s"
            raise ComputeLinkUnreachable(f"{address}: cannot connect: {why}") from None
        if self._ssl is not None and (link.peer is None or link.peer.role != "sc"):
            link.close()
            raise ComputeLinkUnreachable(
                f"{address} answers with the certificate of "
                f"{link.peer.role + ':' + link.peer.name if link.peer else 'nobody'}, "
                "not an SC node's"
            )
        return link

    def _on_frames(self, link: ChainLink, frames: list[bytes]) -> None:
        mark("fm.sc_frames_received")
        for frame in frames:
            try:
                answer = sc_pb2.ComputeAnswer.FromString(frame)
            except DecodeError:
                log.warning("compute link to %s: %d bytes that are not a ComputeAnswer; "
                            "closing", link.remote, len(frame))  # fmt: skip
                link.close()
                return
            waiter = self._calls.get(answer.call_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(answer)

    def _on_oversized(self, link: ChainLink, size: int) -> None:
        log.warning("compute link to %s: a frame of %d bytes (at most %d); closing",
                    link.remote, size, self._max_frame)  # fmt: skip

    def _lost(self, link: ChainLink) -> None:
        if self._link is link:
            self._link = None
        for waiter in list(self._calls.values()):
            _fail(waiter, ComputeLinkError(f"{self.address}: the link closed"))


class _TailListener:
    """A client's connection to its chain's tail, registered for the client's token (and
    registered again after it closes, with a growing pause). The calls that named the token
    while it was up fail when it closes: an answer on its way may have been lost with it, and
    the caller's retry is answered from the stored connection."""

    def __init__(self, client: ComputeLinkClient, address: str) -> None:
        self.client = client
        self.address = address
        self.link: ChainLink | None = None  # up and registered
        self.waiting: dict[int, asyncio.Future] = {}
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def live(self) -> bool:
        return self.link is not None and self.link.transport is not None

    def stop(self) -> None:
        self._task.cancel()
        if self.link is not None:
            self.link.close()

    async def _run(self) -> None:
        client = self.client
        pause, most = TAIL_RETRY_S
        while True:
            link = None
            try:
                link = await client._open(self.address)
                call_id = next(client._ids)
                registered = client._calls[call_id] = asyncio.get_running_loop().create_future()
                call = sc_pb2.ComputeCall(call_id=call_id, listen=client.token)
                link.send(call.SerializeToString())
                await asyncio.wait({registered, link.closed}, timeout=client.timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                client._calls.pop(call_id, None)
                if not registered.done() or registered.exception() is not None:
                    raise ComputeLinkError("no answer to listen")
                if registered.result().HasField("error"):
                    raise ComputeLinkError(registered.result().error.message)
                self.link = link
                pause = TAIL_RETRY_S[0]
                await link.closed
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("listening for answers on the SC tail %s: %s", self.address, exc)
            finally:
                if link is not None:
                    link.close()
                if self.link is link and link is not None:
                    self.link = None
                    why = ComputeLinkError(f"{self.address}: the tail's connection closed")
                    for waiter in list(self.waiting.values()):
                        _fail(waiter, why)
            await asyncio.sleep(pause)
            pause = min(pause * 2, most)


def _fail(waiter: asyncio.Future, exc: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(exc)
