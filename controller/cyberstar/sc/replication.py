"""Chain replication inside an SC group: packet-pass-through (paper §3.2).

The head decides and applies a batch of state operations, gives it the next sequence number
and sends it to its successor, which passes it on and applies it; the tail acknowledges, and
acknowledgements flow back up the chain. FM is answered only once every node of the chain
has the change — so losing any one node loses nothing that FM was told: by the tail, when FM
listens there (the update carries the answer: `submit(answer=...)`, then the tail sends it on
the compute-link connection FM registered for the answer's token, once it applied the update;
a middle node passes an update on before applying it, so it may still be applying it), else
by the head when the update is acknowledged.

When the tail answers, nobody waits for the acknowledgement any more, so while such updates
keep coming the tail acknowledges them at most every `LAZY_ACK_S`, several at once, in the
wake-up of a later update (`ACK_HOLD_S` after the last when none follows); an update without
an answer — a Release, a scale step — is acknowledged at once, and so are all before it.
An answer the tail may not have delivered goes up the chain as `undelivered` in the
acknowledgement: the tail had no connection for the token, or a node resent the update to a
new successor (which may have taken it in a snapshot, or may have had it already); the head
then sends it itself once the update is acknowledged. The caller takes the first answer of
a call and ignores a second.

Each node keeps the updates it sent but that are not yet acknowledged. When the chain changes
(etcd, `coord`), a node reconnects to its new successor; the successor says which sequence
number it applied last, and the node resends what it lacks — or a whole snapshot when the
successor is fresh (a node that joined or restarted) or the gap is no longer in memory.

A node that was taken out of the chain (its lease lapsed under load) keeps its state and
rejoins at the tail: every node keeps a digest of its history (CRC-32 chained over the update
frames, which are byte-identical along the chain) and the last updates it applied
(`RETAIN_BYTES`), so when the rejoiner's sequence number and digest match a point of its new
predecessor's history, only the updates after that point are sent, not a snapshot.

Transport: one TCP connection per link of the chain (the successor listens on its `chain`
address), mutual TLS unless the configuration asks for plaintext, carrying frames of a 4-byte
big-endian length and a serialized `ChainMessage` (predecessor → successor) or `ChainAck`
(back). Frames are handled in the event loop's read callback: an update is passed on, applied
and acknowledged without a task switch. (A gRPC stream message costs about three times the CPU
in grpc.aio; it bounded a small batch's latency.)

Who may send: the first frame must be a `ChainHello` from the node that is this node's
predecessor in the current chain (etcd), and over TLS the peer's certificate must name that
node (role `sc`). Until then a connection may send one small frame within `HELLO_TIMEOUT_S`,
and only `limits.chain_connections` such connections are held at once; a refusal says no
more than that (no epoch). After the hello, frames are capped at `limits.chain_frame_bytes`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import ssl
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError

from cyberstar.proto import sc_pb2
from cyberstar.sc.coord import Chain, ChainNode
from cyberstar.sc.metrics import Counters
from cyberstar.sc.state import NodeState, StateError
from cyberstar.timeline import mark
from cyberstar.tls import Peer, ssl_peer

log = logging.getLogger(__name__)

FRAME = struct.Struct(">I")
HELLO_MAX_FRAME = 4096  # a ChainHello, or its answer, is a few dozen bytes
HELLO_TIMEOUT_S = 10.0
RETAIN_BYTES = 64 << 20  # acknowledged updates kept to catch a rejoining successor up
# The tail acknowledges answered updates at most every LAZY_ACK_S while more keep coming (in
# the wake-up of a later update), and ACK_HOLD_S after the last one when none follows.
LAZY_ACK_S = 0.005
ACK_HOLD_S = 0.02
UNDELIVERED_PER_ACK = 256  # seqs named in one ChainAck (a link reads 4 KB acks at most)

# What became of an update's answer (`submit(settled=...)`, called once, on the head):
DELIVERED = "delivered"  # the tail sent it
UNDELIVERED = "undelivered"  # acknowledged, but the tail may not have sent it: send it now
FAILED = "failed"  # not acknowledged in time, or the node left the chain: not committed

_blobs: list[bytes] = []


def _blob(value: object) -> dict:
    if isinstance(value, (bytes, bytearray, memoryview)):
        _blobs.append(bytes(value))
        return {"$blob": len(_blobs) - 1}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_blob)


def encode_ops(ops: list) -> tuple[bytes, list[bytes]]:
    """State operations as the chain carries them: JSON, with every bytes value (packed
    connections) replaced by {"$blob": i} and sent as blobs[i] next to it."""
    _blobs.clear()
    data = _ENCODER.encode(ops).encode()
    if not _blobs:
        return data, []
    blobs = list(_blobs)
    _blobs.clear()
    return data, blobs


def decode_ops(data: bytes, blobs: Sequence[bytes]) -> list:
    if not blobs:
        return json.loads(data)

    def hook(d: dict) -> object:
        return blobs[d["$blob"]] if len(d) == 1 and "$blob" in d else d

    return json.loads(data, object_hook=hook)


def update_frame(
    seq: int,
    data: bytes,
    blobs: Sequence[bytes] = (),
    snapshot: bool = False,
    digest: int = 0,
    answer: bytes = b"",
    answer_token: bytes = b"",
) -> bytes:
    update = sc_pb2.ChainUpdate(seq=seq, ops=data, blobs=blobs, snapshot=snapshot, digest=digest,
                                answer=answer, answer_token=answer_token)  # fmt: skip
    return sc_pb2.ChainMessage(update=update).SerializeToString()


class ChainLink(asyncio.Protocol):
    """One TCP connection between neighbours of a chain: length-prefixed protobuf frames,
    delivered to `on_frames` from the loop's read callback. A frame over `max_frame` bytes
    closes the link before its bytes are buffered (and is reported to `on_oversized`, or
    logged). The compute link (`compute_link.py`) speaks the same frames."""

    def __init__(
        self,
        on_frames: Callable[[ChainLink, list[bytes]], None],
        max_frame: int = HELLO_MAX_FRAME,
        on_open: Callable[[ChainLink], None] | None = None,
        on_oversized: Callable[[ChainLink, int], None] | None = None,
    ) -> None:
        self.on_frames = on_frames
        self.max_frame = max_frame
        self.on_open = on_open
        self.on_oversized = on_oversized
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.acked_sent = -1  # upstream side: the last ack written on this link
        self.peer: Peer | None = None  # the certificate's node (None on a plaintext link)
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = ssl_peer(transport.get_extra_info("peercert"))
        if self.on_open is not None:
            self.on_open(self)

    @property
    def remote(self) -> str:
        where = self.transport.get_extra_info("peername") if self.transport else None
        return f"{where[0]}:{where[1]}" if isinstance(where, tuple) else "?"

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        frames, off, size = [], 0, len(buf)
        with memoryview(buf) as view:
            while size - off >= 4:
                (n,) = FRAME.unpack_from(view, off)
                if n > self.max_frame:
                    if self.on_oversized is not None:
                        self.on_oversized(self, n)
                    else:
                        log.warning("chain link from %s: a frame of %d bytes (at most %d here); "
                                    "closing", self.remote, n, self.max_frame)  # fmt: skip
                    self.close()
                    return
                if size - off - 4 < n:
                    break
                frames.append(bytes(view[off + 4 : off + 4 + n]))
                off += 4 + n
        if off:
            del buf[:off]
        if frames:
            self.on_frames(self, frames)

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(FRAME.pack(len(frame)) + frame)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._buf = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._buf = bytearray()
        if not self.closed.done():
            self.closed.set_result(None)


class Replicator:
    """The chain-replication state of one node: sequence numbers, unacked updates, links."""

    def __init__(
        self,
        node_id: str,
        get_state: Callable[[], NodeState],
        set_state: Callable[[NodeState], None],
        counters: Counters,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        max_frame: int = 512 << 20,
        max_unauthenticated: int = 8,
        deliver: Callable[[bytes, bytes], bool] | None = None,
        answer_timeout_s: float = 5.0,
    ) -> None:
        self.node_id = node_id
        # The tail's way to FM: deliver(token, answer) sends it, False when it cannot.
        self.deliver = deliver
        self.answer_timeout_s = answer_timeout_s
        self._get_state = get_state
        self._set_state = set_state
        self.counters = counters
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self.max_frame = max_frame
        self.max_unauthenticated = max_unauthenticated
        self.chain = Chain("", 0, ())
        self.index: int | None = None
        self.applied = 0
        self.acked = 0
        self.fresh = True
        self.digest = 0  # CRC-32 chained over the frames of every update applied
        # (seq, frame, digest before it) of updates applied here but not acknowledged ...
        self.pending: deque[tuple[int, bytes, int]] = deque()
        # ... and of acknowledged ones, kept (up to RETAIN_BYTES) for a rejoining successor
        self.retained: deque[tuple[int, bytes, int]] = deque()
        self._retained_bytes = 0
        self._unauthenticated: set[ChainLink] = set()
        self._down_acked = 0  # highest ack from the successor (may run ahead of `applied`)
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._tick = itertools.count()
        self._downstream: asyncio.Task | None = None
        self._downstream_to: ChainNode | None = None
        self._down: ChainLink | None = None  # the link to the successor, once it is in sync
        self._upstreams: set[ChainLink] = set()  # links from the predecessor (after its hello)
        self._holding_acks = False  # while frames are handled: acks go out once, at the end
        # The head's answers in the chain: seq → (settled callback, its timeout), in seq order.
        self._answers: dict[int, tuple[Callable[[str], None], asyncio.TimerHandle]] = {}
        self._uncertain: set[int] = set()  # the head's answered seqs the tail may not have sent
        self._undelivered: list[int] = []  # another node's: seqs to name in the next ack up
        self._lazy_read = False  # the tail, in a read: every update so far answered by it
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acks_sent_at = 0.0  # time.monotonic() of the last flush

    # -- roles ---------------------------------------------------------------------------------
    @property
    def is_head(self) -> bool:
        return self.index == 0 and not self.fresh

    @property
    def predecessor(self) -> ChainNode | None:
        if not self.index:
            return None
        return self.chain.nodes[self.index - 1]

    @property
    def successor(self) -> ChainNode | None:
        if self.index is None or self.index + 1 >= len(self.chain.nodes):
            return None
        return self.chain.nodes[self.index + 1]

    def role(self) -> str:
        if self.index is None:
            return "detached"
        if self.fresh:
            return "joining"
        if len(self.chain.nodes) == 1:
            return "single"
        if self.index == 0:
            return "head"
        return "tail" if self.successor is None else "middle"

    def set_chain(self, chain: Chain, incarnation: str) -> None:
        """Adopt a new chain configuration (from etcd)."""
        if chain.epoch < self.chain.epoch:
            return
        old_pred = self.predecessor
        index = next(
            (
                i
                for i, n in enumerate(chain.nodes)
                if n.id == self.node_id and n.incarnation == incarnation
            ),
            None,
        )
        was_in = self.index is not None
        old_role = self.role()
        self.chain, self.index = chain, index
        if index is None:
            if was_in:
                log.warning("%s: out of the chain of %s (epoch %d); keeping state to rejoin",
                            self.node_id, chain.scg, chain.epoch)  # fmt: skip
                self._fail_waiters()
            self._close_upstreams()
            self._stop_downstream()
            return
        if index == 0 and self.fresh:
            # Joiners go to the tail, so a fresh head means no node with state survived: this
            # node's (empty) state is the group's state now.
            self.fresh = False
        if self.predecessor != old_pred:
            self._close_upstreams()
        succ = self.successor
        if succ != self._downstream_to:
            self._stop_downstream()
            if succ is not None:
                self._start_downstream(succ)
        if succ is None:
            # What this node passed on may have died with its old successor, answers too.
            self._answer_uncertain([seq for seq, _, _ in self.pending])
            self._on_ack(self.applied)
            if self._undelivered:
                self._flush_acks()
        if self.role() != old_role:
            order = " → ".join(n.id for n in chain.nodes)
            log.info("%s: %s of %s (epoch %d: %s)", self.node_id, self.role(), chain.scg,
                     chain.epoch, order)  # fmt: skip

    def reset(self) -> None:
        self._set_state(NodeState())
        self.applied = self.acked = self._down_acked = 0
        self.digest = 0
        self.fresh = True
        self.pending.clear()
        self._undelivered.clear()
        self._clear_retained()
        self._fail_waiters()

    def _clear_retained(self) -> None:
        self.retained.clear()
        self._retained_bytes = 0

    def _start_downstream(self, succ: ChainNode) -> None:
        self._downstream_to = succ
        self._downstream = asyncio.get_running_loop().create_task(self._downstream_loop(succ))

    def _stop_downstream(self) -> None:
        if self._downstream is not None:
            self._downstream.cancel()
        if self._down is not None:
            self._down.close()
        self._downstream = None
        self._downstream_to = None
        self._down = None

    def _close_upstreams(self) -> None:
        for link in list(self._upstreams):
            link.close()
        self._upstreams.clear()

    async def close(self) -> None:
        self._stop_downstream()
        self._close_upstreams()
        self._fail_waiters()
        if self._ack_timer is not None:
            self._ack_timer.cancel()

    # -- the head's side -----------------------------------------------------------------------
    def submit(
        self,
        data: bytes,
        blobs: Sequence[bytes] = (),
        answer: bytes = b"",
        answer_token: bytes = b"",
        settled: Callable[[str], None] | None = None,
    ) -> int:
        """Queue an update the head already applied, send it on; returns its sequence number.

        With an `answer` (a serialized ComputeAnswer) for the connection registered for
        `answer_token` on the tail, the tail sends it; `settled` is called once with what
        became of it: DELIVERED, UNDELIVERED (committed, the head must send it) or FAILED (not
        committed within `answer_timeout_s`, or this node left the chain)."""
        self.applied += 1
        seq = self.applied
        frame = update_frame(seq, data, blobs, answer=answer, answer_token=answer_token)
        if settled is not None:
            timer = asyncio.get_running_loop().call_later(
                self.answer_timeout_s, self._answer_timed_out, seq
            )
            self._answers[seq] = (settled, timer)
        self.pending.append((seq, frame, self.digest))
        self.digest = zlib.crc32(frame, self.digest)
        if self._down is not None:
            self._down.send(frame)
        if self.successor is None:
            self._answer_uncertain([seq])  # nobody after this node to answer
            self._on_ack(seq)
        return seq

    async def commit(self, seq: int, timeout: float) -> bool:
        """Wait until update `seq` reached the tail; False on timeout or chain loss."""
        if self.acked >= seq:
            return True
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        heapq.heappush(self._waiters, (seq, next(self._tick), fut))
        timer = loop.call_later(timeout, _resolve, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()

    def _on_ack(self, seq: int) -> None:
        seq = min(seq, self.applied)
        if seq <= self.acked:
            return
        self.acked = seq
        pending, retained = self.pending, self.retained
        while pending and pending[0][0] <= seq:
            entry = pending.popleft()
            retained.append(entry)
            self._retained_bytes += len(entry[1])
        while self._retained_bytes > RETAIN_BYTES:
            self._retained_bytes -= len(retained.popleft()[1])
        while self._waiters and self._waiters[0][0] <= seq:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(True)
        if self._answers:
            self._settle_answers(seq)
        if not self._holding_acks:
            self._flush_acks()

    def _flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._acks_sent_at = time.monotonic()
        acked, undelivered = self.acked, self._undelivered
        for link in self._upstreams:
            if link.acked_sent != acked or undelivered:
                link.acked_sent = acked
                for i in range(0, max(len(undelivered), 1), UNDELIVERED_PER_ACK):
                    ack = sc_pb2.ChainAck(
                        acked_seq=acked, undelivered=undelivered[i : i + UNDELIVERED_PER_ACK]
                    )
                    link.send(ack.SerializeToString())
        # With no link up, the predecessor resends what it lacks and names it itself.
        undelivered.clear()

    def _flush_acks_later(self) -> None:
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_HOLD_S, self._flush_acks)

    def _fail_waiters(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(False)
        for seq in list(self._answers):
            self._settle(seq, FAILED)

    # -- answers passed through the chain (packet-pass-through) ------------------------------
    def _answer_uncertain(self, seqs: Sequence[int]) -> None:
        """The answers of these updates may not have reached the caller: the head sends them
        itself once they are acknowledged; another node says so upstream."""
        if self.index == 0:
            self._uncertain.update(s for s in seqs if s in self._answers)
        else:
            self._undelivered.extend(seqs)

    def _settle_answers(self, acked: int) -> None:
        answers = self._answers
        for seq in list(itertools.takewhile(lambda s: s <= acked, answers)):
            self._settle(seq, UNDELIVERED if seq in self._uncertain else DELIVERED)

    def _settle(self, seq: int, outcome: str) -> None:
        entry = self._answers.pop(seq, None)
        self._uncertain.discard(seq)
        if entry is None:
            return
        settled, timer = entry
        timer.cancel()
        try:
            settled(outcome)
        except Exception:
            log.exception("settling the answer of update %d", seq)

    def _answer_timed_out(self, seq: int) -> None:
        if seq in self._answers and seq > self.acked:
            self._settle(seq, FAILED)

    # -- sending to the successor --------------------------------------------------------------
    async def _downstream_loop(self, succ: ChainNode) -> None:
        backoff = 0.02
        while True:
            try:
                await self._link_to(succ)
                backoff = 0.02
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("replication link to %s ended: %s", succ.id, _brief(exc))
            # Retry pacing while the successor catches up with the new chain epoch.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    async def _link_to(self, succ: ChainNode) -> None:
        host, _, port = succ.chain.rpartition(":")
        if not host or not port.isdigit():
            raise ConnectionError(f"{succ.id} has no chain address ({succ.chain!r})")
        loop = asyncio.get_running_loop()
        first: asyncio.Future = loop.create_future()

        def on_acks(_link: ChainLink, frames: list[bytes]) -> None:
            acked = 0
            for frame in frames:
                ack = sc_pb2.ChainAck.FromString(frame)
                if not first.done():
                    first.set_result(ack)
                    continue
                acked = max(acked, ack.acked_seq)
                if ack.undelivered:
                    self._answer_uncertain(ack.undelivered)
            if acked:  # acks are cumulative: the last one says it all
                self._down_acked = max(self._down_acked, acked)
                self._on_ack(acked)
            if self._undelivered:
                self._flush_acks()

        _, link = await loop.create_connection(
            lambda: ChainLink(on_acks),
            host.strip("[]"),
            int(port),
            ssl=self._client_ssl,
            ssl_handshake_timeout=HELLO_TIMEOUT_S if self._client_ssl else None,
        )
        try:
            if self._client_ssl is not None and (link.peer is None or link.peer.name != succ.id):
                raise ConnectionError(
                    f"the chain address of {succ.id} ({succ.chain}) answers with the "
                    f"certificate of {link.peer.name if link.peer else 'nobody'}"
                )
            hello = sc_pb2.ChainHello(epoch=self.chain.epoch, from_node=self.node_id)
            link.send(sc_pb2.ChainMessage(hello=hello).SerializeToString())
            await asyncio.wait(
                {first, link.closed}, timeout=HELLO_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not first.done():
                raise ConnectionError("successor closed the connection or did not answer")
            ack = first.result()
            if ack.refused:
                raise ConnectionError(ack.refused)
            # From the answer to going live, nothing awaits: no update can slip in between.
            sent, snapshot = self._resync(link, ack)
            for seq, frame, _ in self.pending:
                if seq > sent:
                    link.send(frame)
            # The new successor took these in a snapshot, again, or for the first time: their
            # answers may or may not have reached the caller.
            self._answer_uncertain([seq for seq, _, _ in self.pending])
            self._down = link
            if not snapshot:
                # The successor's history is a prefix of ours: what it says reached the tail
                # did (it may have nothing new to acknowledge for a while).
                self._down_acked = max(self._down_acked, ack.acked_seq)
                self._on_ack(ack.acked_seq)
            if self._undelivered:
                self._flush_acks()
            await link.closed
            log.info("replication link to %s closed", succ.id)
        finally:
            if self._down is link:
                self._down = None
            link.close()

    def _resync(self, link: ChainLink, first: sc_pb2.ChainAck) -> tuple[int, bool]:
        """Bring the successor to our applied sequence: send what it lacks when its history is
        a prefix of ours (same digest at its sequence number) and we still hold the updates
        after it, else a snapshot. Returns the last sequence sent, and whether it took a
        snapshot. Pending updates after the returned sequence are the caller's to send."""
        theirs = first.applied_seq
        if not first.fresh and theirs <= self.applied:
            if theirs == self.applied and first.digest == self.digest:
                return theirs, False
            held = [*self.retained, *self.pending]
            start = next((i for i, e in enumerate(held) if e[0] == theirs + 1), None)
            if start is not None and held[start][2] == first.digest:
                sent = theirs
                for seq, frame, _ in held[start:]:
                    if seq > self.acked:
                        break  # pending: the caller sends those
                    link.send(frame)
                    sent = seq
                if theirs < self.applied:
                    self.counters.inc("resyncs_incremental")
                    log.info("catching the successor up from seq %d to %d without a snapshot",
                             theirs, self.applied)  # fmt: skip
                return sent, False
        seq = self.applied
        data, blobs = encode_ops([self._get_state().snapshot()])
        self.counters.inc("snapshots_sent")
        size = len(data) + sum(map(len, blobs))
        log.info("sending a snapshot at seq %d (%d bytes)", seq, size)
        link.send(update_frame(seq, data, blobs, snapshot=True, digest=self.digest))
        return seq, True

    # -- receiving from the predecessor --------------------------------------------------------
    def accept(self) -> ChainLink:
        """Protocol factory of the chain listener (`loop.create_server`)."""
        return ChainLink(self._from_predecessor, HELLO_MAX_FRAME, self._on_open)

    def _on_open(self, link: ChainLink) -> None:
        """A connection that has not said hello yet: few at once, and not for long."""
        if len(self._unauthenticated) >= self.max_unauthenticated:
            self.counters.inc("chain_refused")
            link.close()
            return
        self._unauthenticated.add(link)
        link.closed.add_done_callback(lambda _f: self._unauthenticated.discard(link))
        timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._hello_late, link)
        link.closed.add_done_callback(lambda _f: timer.cancel())

    def _hello_late(self, link: ChainLink) -> None:
        if link in self._unauthenticated:
            self.counters.inc("chain_refused")
            link.close()

    def _from_predecessor(self, link: ChainLink, frames: list[bytes]) -> None:
        mark("sc.chain_frames_received")
        self._holding_acks = True
        self._lazy_read = True
        try:
            for frame in frames:
                if link.transport is None or link.transport.is_closing():
                    return
                msg = sc_pb2.ChainMessage.FromString(frame)
                if link not in self._upstreams:
                    self._lazy_read = False
                    self._hello(link, msg)
                elif msg.HasField("update"):
                    self._receive(msg.update, frame)
        except StateError as exc:
            log.error("replica diverged (%s): dropping state to rejoin with a snapshot", exc)
            self.reset()
            link.close()
        except DecodeError:
            self.counters.inc("chain_refused")
            log.warning("chain link from %s: a frame that is not a ChainMessage; closing",
                        link.remote)  # fmt: skip
            link.close()
        except Exception:
            log.exception("bad replication frame from the predecessor: closing the link")
            link.close()
        finally:
            self._holding_acks = False
            if (
                self._lazy_read
                and self.successor is None
                and not self._undelivered
                and time.monotonic() - self._acks_sent_at < LAZY_ACK_S
            ):
                self._flush_acks_later()  # nobody waits for these: FM has its answers
            else:
                self._flush_acks()

    def _hello(self, link: ChainLink, msg: sc_pb2.ChainMessage) -> None:
        pred = self.predecessor
        hello = msg.hello
        who = hello.from_node
        if link.peer is not None and (link.peer.name != who or link.peer.role != "sc"):
            reason = f"the certificate names {link.peer.role}:{link.peer.name}"
        elif not msg.HasField("hello") or pred is None or pred.id != who:
            reason = "not its predecessor"
        elif hello.epoch != self.chain.epoch:
            reason = "not its predecessor yet"
        else:
            reason = ""
        if reason:
            # Say no more than that: the epoch or the chain would help an impostor.
            self.counters.inc("chain_refused")
            log.info("chain link from %s (%r): refused, %s", link.remote, who[:64], reason)
            refused = f"{self.node_id} does not take updates from {who[:64]!r}"
            link.send(sc_pb2.ChainAck(refused=refused).SerializeToString())
            link.close()
            return
        self._close_upstreams()  # an older link from the predecessor is dead or dying
        self._unauthenticated.discard(link)
        link.max_frame = self.max_frame
        self._upstreams.add(link)
        link.closed.add_done_callback(lambda _f: self._upstreams.discard(link))
        link.acked_sent = self.acked
        first = sc_pb2.ChainAck(applied_seq=self.applied, fresh=self.fresh, acked_seq=self.acked,
                                digest=self.digest)  # fmt: skip
        link.send(first.SerializeToString())

    def _receive(self, update: sc_pb2.ChainUpdate, frame: bytes) -> None:
        if update.snapshot:
            self._lazy_read = False
            (snapshot,) = decode_ops(update.ops, update.blobs)
            self._set_state(NodeState.restore(snapshot))
            self.applied = update.seq
            self.digest = update.digest
            self.acked = min(self.acked, update.seq)
            self.pending.clear()
            self._clear_retained()
            self.fresh = False
            for link in self._upstreams:
                link.acked_sent = -1  # say where we are, even if `acked` does not move
            if self._downstream_to is not None:
                # Our successor's history is not ours any more: resync it from scratch.
                succ = self._downstream_to
                self._stop_downstream()
                self._start_downstream(succ)
        elif update.seq <= self.applied:
            return
        elif update.seq != self.applied + 1:
            raise StateError(f"update {update.seq} after {self.applied}: a gap in the chain")
        else:
            # Pass the update on before applying it: the successor decodes while we do
            # (pipelining keeps a big update's cost near one node's).
            self.pending.append((update.seq, frame, self.digest))
            if self._down is not None:
                self._down.send(frame)
            state = self._get_state()
            for op in decode_ops(update.ops, update.blobs):
                state.apply(op)
            self.applied = update.seq
            self.digest = zlib.crc32(frame, self.digest)
            self.counters.inc("replicated_updates")
            if not update.answer:
                self._lazy_read = False
            elif self.successor is None:
                self._deliver(update)
        # An ack may have come back while we applied; it counts only from now on.
        self._on_ack(self.applied if self.successor is None else self._down_acked)

    def _deliver(self, update: sc_pb2.ChainUpdate) -> None:
        """The tail: send the update's answer to the caller, or have the head send it."""
        if self.deliver is not None and self.deliver(update.answer_token, update.answer):
            self.counters.inc("answers_delivered")
            return
        self.counters.inc("answers_undelivered")
        self._undelivered.append(update.seq)
        self._lazy_read = False


def _resolve(fut: asyncio.Future, value: object) -> None:
    if not fut.done():
        fut.set_result(value)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = [
    "DELIVERED",
    "FAILED",
    "UNDELIVERED",
    "ChainLink",
    "Replicator",
    "decode_ops",
    "encode_ops",
]
