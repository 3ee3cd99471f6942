"""Chain replication inside an SC group: packet-pass-through (paper §3.2).

The head decides and applies a batch of state operations, gives it the next sequence number
and sends it to its successor, which passes it on and applies it; the tail acknowledges, and
acknowledgements flow back up the chain. The head answers FM only when the batch's sequence
number is acknowledged, i.e. when every node of the chain holds the change — so losing any one
node loses nothing that FM was told.

Each node keeps the updates it sent but that are not yet acknowledged. When the chain changes
(etcd, `coord`), a node reconnects to its new successor; the successor says which sequence
number it applied last, and the node resends what it lacks — or a whole snapshot when the
successor is fresh (a node that joined or restarted) or the gap is no longer in memory.

Transport: one TCP connection per link of the chain (the successor listens on its `chain`
address), carrying frames of a 4-byte big-endian length and a serialized `ChainMessage`
(predecessor → successor) or `ChainAck` (back). Frames are handled in the event loop's read
callback: an update is passed on, applied and acknowledged without a task switch. (A gRPC
stream message costs about three times the CPU in grpc.aio; it bounded a small batch's
latency.)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import struct
from collections import deque
from collections.abc import Callable, Sequence

from cyberstar.proto import sc_pb2
from cyberstar.sc.coord import Chain, ChainNode
from cyberstar.sc.metrics import Counters
from cyberstar.sc.state import NodeState, StateError

log = logging.getLogger(__name__)

FRAME = struct.Struct(">I")
MAX_FRAME = 512 << 20
HELLO_TIMEOUT_S = 10.0

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


def update_frame(seq: int, data: bytes, blobs: Sequence[bytes] = (), snapshot: bool = False):
    update = sc_pb2.ChainUpdate(seq=seq, ops=data, blobs=blobs, snapshot=snapshot)
    return sc_pb2.ChainMessage(update=update).SerializeToString()


class ChainLink(asyncio.Protocol):
    """One TCP connection between neighbours of a chain: length-prefixed protobuf frames,
    delivered to `on_frames` from the loop's read callback."""

    def __init__(self, on_frames: Callable[[ChainLink, list[bytes]], None]) -> None:
        self.on_frames = on_frames
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.acked_sent = -1  # upstream side: the last ack written on this link
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        frames, off, size = [], 0, len(buf)
        with memoryview(buf) as view:
            while size - off >= 4:
                (n,) = FRAME.unpack_from(view, off)
                if n > MAX_FRAME:
                    log.warning("chain link: a frame of %d bytes; closing", n)
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
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
    ) -> None:
        self.node_id = node_id
        self._get_state = get_state
        self._set_state = set_state
        self.counters = counters
        self.chain = Chain("", 0, ())
        self.index: int | None = None
        self.applied = 0
        self.acked = 0
        self.fresh = True
        # (seq, frame) of updates applied here (or being applied) but not acknowledged
        self.pending: deque[tuple[int, bytes]] = deque()
        self._down_acked = 0  # highest ack from the successor (may run ahead of `applied`)
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._tick = itertools.count()
        self._downstream: asyncio.Task | None = None
        self._downstream_to: ChainNode | None = None
        self._down: ChainLink | None = None  # the link to the successor, once it is in sync
        self._upstreams: set[ChainLink] = set()  # links from the predecessor (after its hello)
        self._holding_acks = False  # while frames are handled: acks go out once, at the end

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
        self.chain, self.index = chain, index
        if index is None:
            if was_in:
                log.warning("removed from the chain of %s: dropping state", chain.scg)
                self.reset()
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
            self._on_ack(self.applied)

    def reset(self) -> None:
        self._set_state(NodeState())
        self.applied = self.acked = self._down_acked = 0
        self.fresh = True
        self.pending.clear()
        self._fail_waiters()

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

    # -- the head's side -----------------------------------------------------------------------
    def submit(self, data: bytes, blobs: Sequence[bytes] = ()) -> int:
        """Queue an update the head already applied, send it on; returns its sequence number."""
        self.applied += 1
        seq = self.applied
        frame = update_frame(seq, data, blobs)
        self.pending.append((seq, frame))
        if self._down is not None:
            self._down.send(frame)
        if self.successor is None:
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
        while self.pending and self.pending[0][0] <= seq:
            self.pending.popleft()
        while self._waiters and self._waiters[0][0] <= seq:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(True)
        if not self._holding_acks:
            self._flush_acks()

    def _flush_acks(self) -> None:
        acked = self.acked
        for link in self._upstreams:
            if link.acked_sent != acked:
                link.acked_sent = acked
                link.send(sc_pb2.ChainAck(acked_seq=acked).SerializeToString())

    def _fail_waiters(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(False)

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
            if acked:  # acks are cumulative: the last one says it all
                self._down_acked = max(self._down_acked, acked)
                self._on_ack(acked)

        _, link = await loop.create_connection(
            lambda: ChainLink(on_acks), host.strip("[]"), int(port)
        )
        try:
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
            for seq, frame in self.pending:
                if seq > sent:
                    link.send(frame)
            self._down = link
            if not snapshot:
                # The successor's history is a prefix of ours: what it says reached the tail
                # did (it may have nothing new to acknowledge for a while).
                self._down_acked = max(self._down_acked, ack.acked_seq)
                self._on_ack(ack.acked_seq)
            await link.closed
            log.info("replication link to %s closed", succ.id)
        finally:
            if self._down is link:
                self._down = None
            link.close()

    def _resync(self, link: ChainLink, first: sc_pb2.ChainAck) -> tuple[int, bool]:
        """Bring the successor to our applied sequence: the last sequence it has, and whether
        that took a snapshot."""
        theirs = first.applied_seq
        have_gap = theirs < self.applied and (not self.pending or self.pending[0][0] > theirs + 1)
        if first.fresh or theirs > self.applied or have_gap:
            seq = self.applied
            data, blobs = encode_ops([self._get_state().snapshot()])
            self.counters.inc("snapshots_sent")
            size = len(data) + sum(map(len, blobs))
            log.info("sending a snapshot at seq %d (%d bytes)", seq, size)
            link.send(update_frame(seq, data, blobs, snapshot=True))
            return seq, True
        return theirs, False

    # -- receiving from the predecessor --------------------------------------------------------
    def accept(self) -> ChainLink:
        """Protocol factory of the chain listener (`loop.create_server`)."""
        return ChainLink(self._from_predecessor)

    def _from_predecessor(self, link: ChainLink, frames: list[bytes]) -> None:
        self._holding_acks = True
        try:
            for frame in frames:
                if link.transport is None or link.transport.is_closing():
                    return
                msg = sc_pb2.ChainMessage.FromString(frame)
                if link not in self._upstreams:
                    self._hello(link, msg)
                elif msg.HasField("update"):
                    self._receive(msg.update, frame)
        except StateError as exc:
            log.error("replica diverged (%s): dropping state to rejoin with a snapshot", exc)
            self.reset()
            link.close()
        except Exception:
            log.exception("bad replication frame from the predecessor: closing the link")
            link.close()
        finally:
            self._holding_acks = False
            self._flush_acks()

    def _hello(self, link: ChainLink, msg: sc_pb2.ChainMessage) -> None:
        pred = self.predecessor
        hello = msg.hello
        if (
            not msg.HasField("hello")
            or hello.epoch != self.chain.epoch
            or pred is None
            or pred.id != hello.from_node
        ):
            refused = (
                f"{self.node_id} (epoch {self.chain.epoch}) does not take updates from "
                f"{hello.from_node} (epoch {hello.epoch})"
            )
            link.send(sc_pb2.ChainAck(refused=refused).SerializeToString())
            link.close()
            return
        self._close_upstreams()  # an older link from the predecessor is dead or dying
        self._upstreams.add(link)
        link.closed.add_done_callback(lambda _f: self._upstreams.discard(link))
        link.acked_sent = self.acked
        first = sc_pb2.ChainAck(applied_seq=self.applied, fresh=self.fresh, acked_seq=self.acked)
        link.send(first.SerializeToString())

    def _receive(self, update: sc_pb2.ChainUpdate, frame: bytes) -> None:
        if update.snapshot:
            (snapshot,) = decode_ops(update.ops, update.blobs)
            self._set_state(NodeState.restore(snapshot))
            self.applied = update.seq
            self.acked = min(self.acked, update.seq)
            self.pending.clear()
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
            self.pending.append((update.seq, frame))
            if self._down is not None:
                self._down.send(frame)
            state = self._get_state()
            for op in decode_ops(update.ops, update.blobs):
                state.apply(op)
            self.applied = update.seq
            self.counters.inc("replicated_updates")
        # An ack may have come back while we applied; it counts only from now on.
        self._on_ack(self.applied if self.successor is None else self._down_acked)


def _resolve(fut: asyncio.Future, value: object) -> None:
    if not fut.done():
        fut.set_result(value)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["ChainLink", "Replicator", "decode_ops", "encode_ops"]
