"""Scale out and in without halting requests (paper §4.1, Figure 3).

FM sends `start` (the Scale RPC) to the head of the SCG owning a shard. Scale-out first splits
the shard in two halves of its slots (connections by slot, free pool elements by value) and
moves the upper half; scale-in moves the whole shard to a target that owns an adjacent one,
which merges the two. A move, driven by the source head:

1. **seed** — half of the moving shard's free elements go to the target, which creates the
   receiving shard. Meanwhile the source keeps answering the shard's requests from the rest.
2. **freeze** — the source stops allocating for the shard: requests for its known connections
   are still answered locally (their rules stay valid), every other request and release for
   its slots is passed to the target, which allocates from the seed. Releases of known
   connections are deferred. The connections go in parts of a few thousand (PART: the
   target's loop never stalls long on one), then the rest of the pool (MERGE).
3. **fin** — deferred releases are passed on, the source drops the shard (later requests for
   its slots are passed on), and one etcd transaction moves the shard to the target in the
   shard map and writes phase `fin` into `scale/<op_id>`. FM routes by the map from then on.

No request waits for a transfer: before the freeze the source answers, after it the target
answers misses. No element is in two places: the seed and the rest leave the source's pools
before they are sent, and a connection's elements travel with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import aetcd
import grpc

from cyberstar.proto import sc_pb2
from cyberstar.sc.client import ScClient, flow_proto
from cyberstar.sc.config import ScConfig
from cyberstar.sc.coord import Keys, read_shard_map
from cyberstar.sc.engine import Engine
from cyberstar.sc.flows import FlowKey, ShardId, adjacent
from cyberstar.sc.metrics import Counters
from cyberstar.sc.state import (
    ACTIVE,
    MOVING,
    RECEIVING,
    MissingParts,
    StateError,
    deferred_actions,
    pack_connections,
)


class ScaleHost(Protocol):
    """What a scale move needs from the SC node that drives or receives it (`ScNode`)."""

    config: ScConfig
    engine: Engine
    counters: Counters
    keys: Keys
    etcd: aetcd.Client | None

    async def submit(
        self, ops: list, then: Callable[[], object] | None = None, wait: bool = True
    ) -> tuple[bool, list]: ...

    def head_address(self, scg: str) -> str | None: ...

    def client_for(self, address: str) -> ScClient: ...


log = logging.getLogger(__name__)
Code = sc_pb2.Code
TRANSFER_DEADLINE_S = 30.0
PART_SIZE = 4000  # connections per PART message
PARTS_IN_FLIGHT = 3
OUT, IN = sc_pb2.ScaleRequest.OUT, sc_pb2.ScaleRequest.IN


@dataclass
class ScaleOp:
    op_id: str
    kind: int
    shard: str
    target: str
    phase: str = "start"
    moving: str = ""
    coalesce_with: str = ""
    shards: list[str] = field(default_factory=list)
    moved: int = 0
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def reach(self, phase: str) -> None:
        self.phase = phase
        self.marks[phase] = round(time.monotonic() - self.started, 4)

    def reply(self) -> sc_pb2.ScaleReply:
        code = Code.INTERNAL if self.phase == "failed" else Code.OK
        return sc_pb2.ScaleReply(
            op_id=self.op_id,
            status=sc_pb2.Status(code=code, message=self.error),
            phase=self.phase,
            shards=self.shards,
            moved_connections=self.moved,
            seconds=self.seconds,
            phase_seconds=self.marks,
        )

    def record(self, source: str) -> bytes:
        return json.dumps(
            {
                "op_id": self.op_id,
                "kind": "out" if self.kind == OUT else "in",
                "shard": self.shard,
                "moving": self.moving,
                "coalesce_with": self.coalesce_with,
                "source": source,
                "target": self.target,
                "phase": self.phase,
                "shards": self.shards,
                "moved_connections": self.moved,
                "seconds": self.seconds,
                "phase_seconds": self.marks,
                "error": self.error,
            }
        ).encode()


class ScaleDriver:
    def __init__(self, node: ScaleHost) -> None:
        self.node = node
        self.ops: dict[str, ScaleOp] = {}

    # -- source side ---------------------------------------------------------------------------
    def start(self, req: sc_pb2.ScaleRequest) -> sc_pb2.ScaleReply:
        node = self.node

        def refuse(code: int, message: str) -> sc_pb2.ScaleReply:
            return sc_pb2.ScaleReply(
                op_id=req.op_id, status=sc_pb2.Status(code=code, message=message), phase="failed"
            )

        if not req.op_id or req.op_id in self.ops:
            return refuse(Code.MALFORMED, f"op_id {req.op_id!r} is empty or already used")
        try:
            sid = ShardId.parse(req.shard)
        except ValueError as exc:
            return refuse(Code.MALFORMED, str(exc))
        shard = node.engine.state.shards.get(sid)
        if shard is None:
            return refuse(Code.NOT_FOUND, f"shard {sid} is not owned by {node.config.scg}")
        if shard.state != ACTIVE or shard.op_id is not None:
            return refuse(Code.BUSY, f"shard {sid} is already moving")
        if req.target_scg == node.config.scg or node.head_address(req.target_scg) is None:
            return refuse(Code.NOT_FOUND, f"target SCG {req.target_scg!r} has no chain head")
        if req.kind == OUT and sid.hi - sid.lo < 2:
            return refuse(Code.MALFORMED, f"shard {sid} holds one slot and cannot be split")
        op = ScaleOp(req.op_id, req.kind, str(sid), req.target_scg)
        self.ops[op.op_id] = op
        node.counters.inc("scale_ops")
        asyncio.get_running_loop().create_task(self._run(op))
        return op.reply()

    async def status(self, op_id: str, wait_s: float) -> sc_pb2.ScaleReply:
        op = self.ops.get(op_id)
        if op is None:
            raw = await self.node.etcd.get(self.node.keys.scale(op_id)) if self.node.etcd else None
            if raw is None:
                return sc_pb2.ScaleReply(
                    op_id=op_id,
                    status=sc_pb2.Status(code=Code.NOT_FOUND, message=f"no scale op {op_id!r}"),
                )
            d = json.loads(raw.value)
            return sc_pb2.ScaleReply(
                op_id=op_id,
                phase=d["phase"],
                shards=d["shards"],
                seconds=d["seconds"],
                moved_connections=d["moved_connections"],
            )
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(op.done.wait(), wait_s)
        return op.reply()

    def resume(self) -> None:
        """On becoming head: carry on the moves the previous head started (replicated state)."""
        for shard in list(self.node.engine.state.shards.values()):
            if shard.op_id is None or shard.state == RECEIVING or shard.op_id in self.ops:
                continue
            op = ScaleOp(shard.op_id, IN, str(shard.id), shard.target or "", moving=str(shard.id))
            op.phase = "frozen" if shard.state == MOVING else "seeded"
            self.ops[op.op_id] = op
            log.info("resuming scale op %s at phase %s", op.op_id, op.phase)
            asyncio.get_running_loop().create_task(self._run(op, resumed=True))

    async def _run(self, op: ScaleOp, resumed: bool = False) -> None:
        node = self.node
        try:
            if resumed:
                raw = await node.etcd.get(node.keys.scale(op.op_id))
                if raw is not None:
                    d = json.loads(raw.value)
                    op.kind = OUT if d["kind"] == "out" else IN
                    op.shard, op.coalesce_with = d["shard"], d["coalesce_with"]
            else:
                await self._prepare(op)
                op.reach("prepared")
            moving = ShardId.parse(op.moving)
            shard = node.engine.state.get(moving)
            if shard.op_id is None:
                await self._submit(["seed_out", op.moving, op.target, op.op_id])
                shard = node.engine.state.get(moving)
            await self._transfer(op, sc_pb2.TransferRequest.SEED, json.dumps(shard.seed).encode())
            op.reach("seeded")

            def snapshot() -> tuple[list, dict, dict]:
                # Taken at the freeze itself: releases noted while it replicates are deferred
                # and sent after the merge; the parts carry the bits of this instant.
                frozen = node.engine.state.get(moving)
                conns = list(frozen.connections())
                bits = {c.forward.key: c.released for c in conns}
                return conns, bits, frozen.leaving

            if shard.state != MOVING:
                conns, sent_bits, leaving = await self._submit(["freeze", op.moving], then=snapshot)
            else:  # resumed after the freeze: the target merges idempotently
                conns, sent_bits, leaving = snapshot()
            op.moved = len(conns)
            op.reach("frozen")
            reply = await self._ship(op, conns, sent_bits, leaving)
            op.reach("merged")
            await self._forward_deferred_and_drop(op, moving, sent_bits)
            op.reach("dropped")
            await self._switch_map(op, reply.shard)
            log.info("scale op %s fin in %.3f s: %s", op.op_id, op.seconds, op.shards)
        except Exception as exc:
            log.exception("scale op %s failed", op.op_id)
            op.phase, op.error = "failed", f"{type(exc).__name__}: {exc}"
            node.counters.inc("scale_failed")
        finally:
            op.seconds = op.seconds or time.monotonic() - op.started
            try:
                await node.etcd.put(node.keys.scale(op.op_id), op.record(node.config.scg))
            except Exception as exc:
                log.warning("cannot record scale op %s in etcd: %s", op.op_id, exc)
            op.done.set()

    async def _prepare(self, op: ScaleOp) -> None:
        node = self.node
        etcd, keys, scg = node.etcd, node.keys, node.config.scg
        sid = ShardId.parse(op.shard)
        if op.kind == OUT:
            lower, upper = sid.halves()
            await self._submit(["split", op.shard])
            await etcd.transaction(
                compare=[],
                success=[
                    etcd.transactions.delete(keys.shard(sid)),
                    etcd.transactions.put(keys.shard(lower), json.dumps({"scg": scg}).encode()),
                    etcd.transactions.put(keys.shard(upper), json.dumps({"scg": scg}).encode()),
                ],
                failure=[],
            )
            op.moving = str(upper)
            op.shards = [str(lower), str(upper)]
        else:
            op.moving = op.shard
            owners = await read_shard_map(etcd, keys)
            near = [s for s, owner in owners.items() if owner == op.target and adjacent(s, sid)]
            op.coalesce_with = str(near[0]) if near else ""
        await etcd.put(keys.scale(op.op_id), op.record(scg))

    async def _submit(self, op: list, then: Callable[[], object] | None = None) -> object:
        ok, results = await self.node.submit([op], then=then)
        if not ok:
            raise StateError(f"could not replicate {op[0]} in the source SCG")
        return results[-1]

    async def _ship(
        self, op: ScaleOp, conns: list, bits: dict[FlowKey, int], leaving: dict
    ) -> sc_pb2.TransferReply:
        """Send the connections in parts (the target's loop never blocks long on one), then
        the rest of the pool; resend the parts if the target lost some (head failover)."""
        parts = (len(conns) + PART_SIZE - 1) // PART_SIZE
        for _attempt in range(3):
            # Parts are independent: keep a few in flight, encoding the next while the target
            # applies the previous one.
            window = asyncio.Semaphore(PARTS_IN_FLIGHT)
            sent: list[asyncio.Task] = []
            for n in range(parts):
                data = pack_connections(conns[n * PART_SIZE : (n + 1) * PART_SIZE], bits)
                await window.acquire()
                task = asyncio.create_task(
                    self._transfer(op, sc_pb2.TransferRequest.PART, data, part=n)
                )
                task.add_done_callback(lambda _t, w=window: w.release())
                sent.append(task)
            await asyncio.gather(*sent)
            last = json.dumps({"conns": [], "pools": leaving, "parts": parts}).encode()
            reply = await self._transfer(op, sc_pb2.TransferRequest.MERGE, last)
            if reply.status.code == Code.OK:
                return reply
            log.warning("scale op %s: %s; sending the parts again", op.op_id, reply.status.message)
        raise StateError(f"target SCG {op.target} kept losing parts of the move")

    async def _transfer(
        self, op: ScaleOp, kind: int, payload: bytes, part: int = 0
    ) -> sc_pb2.TransferReply:
        node = self.node
        req = sc_pb2.TransferRequest(
            op_id=op.op_id,
            kind=kind,
            shard=op.moving,
            payload=payload,
            coalesce_with=op.coalesce_with if kind == sc_pb2.TransferRequest.MERGE else "",
            from_scg=node.config.scg,
            part=part,
        )
        deadline = time.monotonic() + TRANSFER_DEADLINE_S
        last = ""
        while time.monotonic() < deadline:
            address = node.head_address(op.target)
            if address is not None:
                try:
                    reply = await node.client_for(address).stub.Transfer(req, timeout=10)
                    if reply.status.code in (Code.OK, Code.NOT_FOUND):
                        return reply
                    last = reply.status.message
                except grpc.aio.AioRpcError as exc:
                    last = f"{exc.code().name}: {exc.details()}"
            # The target's chain is reconfiguring: try its (new) head again shortly.
            await asyncio.sleep(0.1)
        raise TimeoutError(f"target SCG {op.target} did not take the transfer: {last}")

    async def _forward_deferred_and_drop(
        self, op: ScaleOp, moving: ShardId, sent_bits: dict[FlowKey, int]
    ) -> None:
        node = self.node
        start = 0
        while True:
            shard = node.engine.state.get(moving)
            if start == len(shard.deferred):
                # No await between the check and the drop: nothing can be deferred in between.
                await self._submit(["drop", op.moving, op.target])
                return
            actions, start = deferred_actions(shard, sent_bits, start)
            address = node.head_address(op.target)
            if address is None:
                raise ConnectionError(f"target SCG {op.target} has no head")
            client = node.client_for(address)
            tenant = moving.tenant_id
            for kind, key, slot in actions:
                if kind == "rel":
                    item = sc_pb2.ReleaseItem(flow=flow_proto(tenant, key), slot=slot)
                    await client.release([item], hops=1)
                else:
                    await client.compute([sc_pb2.RuleRequest(flow=flow_proto(tenant, key))], hops=1)

    async def _switch_map(self, op: ScaleOp, result: str) -> None:
        node = self.node
        etcd, keys = node.etcd, node.keys
        target = json.dumps({"scg": op.target}).encode()
        steps = [etcd.transactions.put(keys.shard(ShardId.parse(result)), target)]
        if result != op.moving:
            steps += [
                etcd.transactions.delete(keys.shard(ShardId.parse(op.moving))),
                etcd.transactions.delete(keys.shard(ShardId.parse(op.coalesce_with))),
            ]
        if op.kind == OUT:
            op.shards = [s for s in op.shards if s != op.moving] + [result]
        else:
            op.shards = [result]
        op.reach("fin")
        op.seconds = time.monotonic() - op.started
        steps.append(etcd.transactions.put(keys.scale(op.op_id), op.record(node.config.scg)))
        await etcd.transaction(compare=[], success=steps, failure=[])

    # -- target side ---------------------------------------------------------------------------
    async def receive(self, req: sc_pb2.TransferRequest) -> sc_pb2.TransferReply:
        node = self.node
        try:
            ShardId.parse(req.shard)
        except ValueError as exc:
            return sc_pb2.TransferReply(status=sc_pb2.Status(code=Code.MALFORMED, message=str(exc)))
        try:
            if req.kind == sc_pb2.TransferRequest.SEED:
                op = ["seed_in", req.shard, req.op_id, json.loads(req.payload)]
            elif req.kind == sc_pb2.TransferRequest.PART:
                # The packed connections go down the chain as they came (a blob of the update).
                op = ["merge_part", req.shard, req.op_id, {"part": req.part, "conns": req.payload}]
            else:
                payload = json.loads(req.payload)
                op = ["merge_in", req.shard, req.op_id, payload, req.coalesce_with]
            # A part is acknowledged once applied here: the last message's commit covers them all.
            wait = req.kind != sc_pb2.TransferRequest.PART
            ok, results = await node.submit([op], wait=wait)
        except MissingParts as exc:
            return sc_pb2.TransferReply(status=sc_pb2.Status(code=Code.NOT_FOUND, message=str(exc)))
        except (StateError, ValueError) as exc:
            return sc_pb2.TransferReply(status=sc_pb2.Status(code=Code.INTERNAL, message=str(exc)))
        if not ok:
            return sc_pb2.TransferReply(
                status=sc_pb2.Status(code=Code.UNAVAILABLE, message="could not replicate in time")
            )
        shard = results[0] if isinstance(results[0], str) else req.shard
        return sc_pb2.TransferReply(status=sc_pb2.Status(code=Code.OK), shard=shard)
