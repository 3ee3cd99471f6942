"""Chain replication inside an SC group: packet-pass-through (paper §3.2).

The head decides and applies a batch of state operations, gives it the next sequence number
and streams it to its successor, which applies it and streams it on; the tail acknowledges,
and acknowledgements flow back up the chain. The head answers FM only when the batch's
sequence number is acknowledged, i.e. when every node of the chain holds the change — so
losing any one node loses nothing that FM was told.

Each node keeps the updates it sent but that are not yet acknowledged. When the chain changes
(etcd, `coord`), a node reconnects to its new successor; the successor says which sequence
number it applied last, and the node resends what it lacks — or a whole snapshot when the
successor is fresh (a node that joined or restarted) or the gap is no longer in memory.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable

import grpc

from cyberstar.proto import sc_pb2, sc_pb2_grpc
from cyberstar.sc.coord import Chain, ChainNode
from cyberstar.sc.metrics import Counters
from cyberstar.sc.state import NodeState, StateError

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 512 << 20),
    ("grpc.max_receive_message_length", 512 << 20),
]


def encode_ops(ops: list) -> bytes:
    return json.dumps(ops, separators=(",", ":")).encode()


class Replicator:
    """The chain-replication state of one node: sequence numbers, unacked updates, streams."""

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
        self.pending: deque[tuple[int, bytes]] = deque()
        self._down_acked = 0  # highest ack from the successor (may run ahead of `applied`)
        self._forwarded = 0  # last update queued for the successor before it was applied
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._tick = itertools.count()
        self._new_entries = asyncio.Event()
        self._acked_cond = asyncio.Condition()
        self._downstream: asyncio.Task | None = None
        self._downstream_to: ChainNode | None = None
        self._upstreams: set[asyncio.Task] = set()

    # -- roles ---------------------------------------------------------------------------------
    @property
    def in_chain(self) -> bool:
        return self.index is not None

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
            self._stop_downstream()
            return
        if index == 0 and self.fresh:
            # Joiners go to the tail, so a fresh head means no node with state survived: this
            # node's (empty) state is the group's state now.
            self.fresh = False
        if self.predecessor != old_pred:
            for task in list(self._upstreams):
                task.cancel()
        succ = self.successor
        if succ != self._downstream_to:
            self._stop_downstream()
            if succ is not None:
                self._downstream_to = succ
                self._downstream = asyncio.create_task(self._downstream_loop(succ))
        if succ is None:
            self._on_ack(self.applied)

    def reset(self) -> None:
        self._set_state(NodeState())
        self.applied = self.acked = self._down_acked = self._forwarded = 0
        self.fresh = True
        self.pending.clear()
        self._fail_waiters()

    def _stop_downstream(self) -> None:
        if self._downstream is not None:
            self._downstream.cancel()
        self._downstream = None
        self._downstream_to = None

    async def close(self) -> None:
        self._stop_downstream()
        for task in list(self._upstreams):
            task.cancel()
        self._fail_waiters()

    # -- the head's side -----------------------------------------------------------------------
    def submit(self, data: bytes) -> int:
        """Queue an update the head already applied; returns its sequence number."""
        self.applied += 1
        seq = self.applied
        self.pending.append((seq, data))
        self._new_entries.set()
        if self.successor is None:
            self._on_ack(seq)
        return seq

    async def commit(self, seq: int, timeout: float) -> bool:
        """Wait until update `seq` reached the tail; False on timeout or chain loss."""
        if self.acked >= seq:
            return True
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._tick), fut))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return False

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
        asyncio.get_running_loop().create_task(self._notify_acked())

    async def _notify_acked(self) -> None:
        async with self._acked_cond:
            self._acked_cond.notify_all()

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
                await self._stream_to(succ)
                backoff = 0.02
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("replication stream to %s ended: %s", succ.id, _brief(exc))
            # Retry pacing while the successor catches up with the new chain epoch.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    async def _stream_to(self, succ: ChainNode) -> None:
        async with grpc.aio.insecure_channel(succ.address, options=GRPC_OPTIONS) as channel:
            call = sc_pb2_grpc.ServiceComputingStub(channel).Replicate()
            hello = sc_pb2.ChainHello(epoch=self.chain.epoch, from_node=self.node_id)
            await call.write(sc_pb2.ChainMessage(hello=hello))
            first = await call.read()
            if first is grpc.aio.EOF:
                raise ConnectionError("successor closed the stream")
            sent = await self._resync(call, first)
            reader = asyncio.create_task(self._read_acks(call))
            try:
                while True:
                    self._new_entries.clear()
                    if self.pending and self.pending[-1][0] > sent:
                        start = max(sent + 1 - self.pending[0][0], 0)
                        for seq, data in list(itertools.islice(self.pending, start, None)):
                            update = sc_pb2.ChainUpdate(seq=seq, ops=data)
                            await call.write(sc_pb2.ChainMessage(update=update))
                            sent = seq
                        continue
                    waiter = asyncio.create_task(self._new_entries.wait())
                    done, _ = await asyncio.wait(
                        {waiter, reader}, return_when=asyncio.FIRST_COMPLETED
                    )
                    waiter.cancel()
                    if reader in done:
                        reader.result()
                        raise ConnectionError("successor ended the stream")
            finally:
                reader.cancel()
                call.cancel()

    async def _resync(self, call, first: sc_pb2.ChainAck) -> int:
        """Bring the successor to our applied sequence; returns the last sequence it has."""
        theirs = first.applied_seq
        have_gap = theirs < self.applied and (not self.pending or self.pending[0][0] > theirs + 1)
        if first.fresh or theirs > self.applied or have_gap:
            seq = self.applied
            data = encode_ops(self._get_state().snapshot())
            self.counters.inc("snapshots_sent")
            log.info("sending a snapshot at seq %d (%d bytes)", seq, len(data))
            update = sc_pb2.ChainUpdate(seq=seq, ops=data, snapshot=True)
            await call.write(sc_pb2.ChainMessage(update=update))
            return seq
        return theirs

    async def _read_acks(self, call) -> None:
        while True:
            ack = await call.read()
            if ack is grpc.aio.EOF:
                return
            self._down_acked = max(self._down_acked, ack.acked_seq)
            self._on_ack(ack.acked_seq)

    # -- receiving from the predecessor --------------------------------------------------------
    async def serve_upstream(self, context: grpc.aio.ServicerContext) -> None:
        msg = await context.read()
        if msg is grpc.aio.EOF or not msg.HasField("hello"):
            return
        hello = msg.hello
        pred = self.predecessor
        if hello.epoch != self.chain.epoch or pred is None or pred.id != hello.from_node:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.node_id} (epoch {self.chain.epoch}) does not take updates from "
                f"{hello.from_node} (epoch {hello.epoch})",
            )
        task = asyncio.current_task()
        self._upstreams.add(task)
        await context.write(
            sc_pb2.ChainAck(applied_seq=self.applied, fresh=self.fresh, acked_seq=self.acked)
        )
        writer = asyncio.create_task(self._write_acks(context))
        try:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    return
                if self._forward_first(msg.update):
                    # Let the sender pass the update on before we apply it: the successor
                    # decodes while we do (pipelining keeps a big update's cost near one node's).
                    await asyncio.sleep(0)
                self._receive(msg.update)
        except StateError as exc:
            log.error("replica diverged (%s): dropping state to rejoin with a snapshot", exc)
            self.reset()
            await context.abort(grpc.StatusCode.ABORTED, f"replica diverged: {exc}")
        finally:
            writer.cancel()
            self._upstreams.discard(task)

    def _forward_first(self, update: sc_pb2.ChainUpdate) -> bool:
        """Queue an in-order update for the successor before applying it."""
        if update.snapshot or update.seq != self.applied + 1 or self.successor is None:
            return False
        self.pending.append((update.seq, update.ops))
        self._new_entries.set()
        self._forwarded = update.seq
        return True

    def _receive(self, update: sc_pb2.ChainUpdate) -> None:
        if update.snapshot:
            self._set_state(NodeState.restore(json.loads(update.ops)))
            self.applied = update.seq
            self.acked = min(self.acked, update.seq)
            self.pending.clear()
            self.fresh = False
            if self._downstream_to is not None:
                # Our successor's history is not ours any more: resync it from scratch.
                succ = self._downstream_to
                self._stop_downstream()
                self._downstream_to = succ
                self._downstream = asyncio.create_task(self._downstream_loop(succ))
        elif update.seq <= self.applied:
            return
        elif update.seq != self.applied + 1:
            raise StateError(f"update {update.seq} after {self.applied}: a gap in the chain")
        else:
            state = self._get_state()
            for op in json.loads(update.ops):
                state.apply(op)
            self.applied = update.seq
            if self._forwarded != update.seq:
                self.pending.append((update.seq, update.ops))
                self._new_entries.set()
            self.counters.inc("replicated_updates")
        # An ack may have come back while we applied; it counts only from now on.
        self._on_ack(self.applied if self.successor is None else self._down_acked)

    async def _write_acks(self, context: grpc.aio.ServicerContext) -> None:
        sent = -1

        def moved() -> bool:
            return self.acked != sent

        while True:
            async with self._acked_cond:
                await self._acked_cond.wait_for(moved)
                sent = self.acked
            await context.write(sc_pb2.ChainAck(acked_seq=sent))


def _brief(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["GRPC_OPTIONS", "Replicator", "encode_ops"]
