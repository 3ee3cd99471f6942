"""What FM needs to route a flow to the SCG that owns its state.

* `slot_of(tenant_id, key)` (from `flows`) — pure: the flow's slot.
* `ShardMap` — a live copy of the etcd shard map and of every SCG's chain: `route(tenant_id,
  key)` → `Route(shard, slot, scg, head address)`; `route_slot` for releases (use the slot from
  the RuleReply); `wait_until(...)` to wait on a condition of the map (tests, scale helpers).
* `ScRouter` — optional convenience on top: sends a mixed batch to the right SCGs in parallel,
  and retries the requests a chain change or a map change bounced (NOT_HEAD, UNAVAILABLE,
  WRONG_SHARD) after the map caught up.

FM may use only `ShardMap` and its own `ScClient`s; the contract is the map and the RPCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aetcd

from cyberstar.proto import sc_pb2
from cyberstar.sc import CALL_CHUNK, coord
from cyberstar.sc.client import ReleaseKey, Request, ScClient, release_proto, request_proto
from cyberstar.sc.compute_link import ComputeLinkClient, ComputeLinkUnreachable
from cyberstar.sc.flows import FlowKey, ShardId, slot_of
from cyberstar.tls import TlsFiles, client_ssl

log = logging.getLogger(__name__)
RETRY_CODES = (sc_pb2.NOT_HEAD, sc_pb2.UNAVAILABLE, sc_pb2.WRONG_SHARD)


@dataclass(frozen=True)
class Route:
    shard: ShardId
    slot: int
    scg: str
    head: str | None  # the chain head's gRPC address (None while the SCG has no live node)


class ShardMap:
    """Watches `shards/` and `scg/` in etcd; all reads are from memory."""

    def __init__(self, etcd: coord.EtcdConfig, prefix: str = "/cyberstar") -> None:
        self.keys = coord.Keys(prefix)
        self._etcd_config = etcd
        self.bad_values = coord.BadValues()
        self.etcd: aetcd.Client | None = None
        self.shards: dict[ShardId, str] = {}
        self.chains: dict[str, coord.Chain] = {}
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self, what: str = "SC shard map") -> None:
        self.etcd = await coord.connect(self._etcd_config, what)
        ready = [asyncio.Event(), asyncio.Event()]

        def loader(fn, event):
            async def run() -> None:
                await fn()
                event.set()

            return run

        self._tasks = [
            asyncio.create_task(
                coord.watch_prefix(
                    self.etcd, self.keys.shards(), loader(self._load_shards, ready[0]), self._stop
                )
            ),
            asyncio.create_task(
                coord.watch_prefix(
                    self.etcd, self.keys.chains(), loader(self._load_chains, ready[1]), self._stop
                )
            ),
        ]
        await asyncio.gather(*(e.wait() for e in ready))

    async def close(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                await self.etcd.close()

    async def _load_shards(self) -> None:
        self.shards = await coord.read_shard_map(self.etcd, self.keys, self.bad_values)
        await self._notify()

    async def _load_chains(self) -> None:
        self.chains = await coord.read_chains(self.etcd, self.keys, self.bad_values)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[ShardMap], bool], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)

    def head(self, scg: str) -> str | None:
        chain = self.chains.get(scg)
        return chain.head.address if chain and chain.head else None

    def compute_address(self, head: str) -> str:
        """The compute link of the chain head whose gRPC address is `head` ("" = none)."""
        for chain in self.chains.values():
            if chain.head is not None and chain.head.address == head:
                return chain.head.compute
        return ""

    def tail_compute_address(self, head: str) -> str:
        """The compute link of the tail of the chain whose head's gRPC address is `head`, where
        FM listens for the answers the chain passes through ("" = none, or the head is alone)."""
        for chain in self.chains.values():
            if chain.head is not None and chain.head.address == head:
                return chain.nodes[-1].compute if len(chain.nodes) > 1 else ""
        return ""

    def route_slot(self, tenant_id: int, slot: int) -> Route | None:
        for sid, scg in self.shards.items():
            if sid.tenant_id == tenant_id and sid.holds(slot):
                return Route(sid, slot, scg, self.head(scg))
        return None

    def route(self, tenant_id: int, key: FlowKey) -> Route | None:
        return self.route_slot(tenant_id, slot_of(tenant_id, key))


@dataclass
class Released:
    """What a release did: the summed replies, and the keys no SC group took (after retries)."""

    reply: sc_pb2.ReleaseReply
    failed: list[ReleaseKey]


class ScRouter:
    """Batches requests per SCG over one `ScClient` per head (Compute on the head's compute
    link when it publishes one, the chain's tail answering: `pass_through`); retries bounced
    requests. With `packed_layout` (a
    `FlowLayout.digest`) it asks for packed rules: replies carry `rules` or `packed_rules`."""

    def __init__(self, shard_map: ShardMap, tls: TlsFiles | None, attempts: int = 40,
                 pause_s: float = 0.05, chunk: int = CALL_CHUNK,
                 packed_layout: int = 0, pass_through: bool = True) -> None:  # fmt: skip
        self.map = shard_map
        self.pass_through = pass_through  # listen on each chain's tail for its answers
        self.packed_layout = packed_layout
        self.tls = tls
        self.attempts = attempts
        self.pause_s = pause_s
        self.chunk = chunk
        self._clients: dict[str, ScClient] = {}
        self._links: dict[str, ComputeLinkClient] = {}
        self._link_ssl = client_ssl(tls) if tls is not None else None
        self._unreachable_logged: dict[str, float] = {}

    def client(self, address: str) -> ScClient:
        c = self._clients.get(address)
        if c is None:
            c = self._clients[address] = ScClient(address, self.tls, timeout_s=10)
        return c

    def compute_client(self, head: str) -> ScClient | ComputeLinkClient:
        """What Compute goes through to the head at gRPC address `head`."""
        address = self.map.compute_address(head)
        if not address:
            return self.client(head)
        c = self._links.get(address)
        if c is None:
            c = self._links[address] = ComputeLinkClient(address, self._link_ssl, timeout_s=10)
        if self.pass_through:
            c.use_tail(self.map.tail_compute_address(head))
        return c

    async def close(self) -> None:
        for c in [*self._clients.values(), *self._links.values()]:
            await c.close()

    async def _release(self, head: str, items: list[sc_pb2.ReleaseItem]) -> sc_pb2.ReleaseReply:
        """Release on the head's compute link, or over gRPC when the link cannot be reached."""
        try:
            return await self.compute_client(head).release(items)
        except ComputeLinkUnreachable as exc:
            self._log_unreachable(head, exc)
            return await self.client(head).release(items)

    def _log_unreachable(self, head: str, exc: ComputeLinkUnreachable) -> None:
        now = time.monotonic()
        if now - self._unreachable_logged.get(head, -1e9) > 60:
            self._unreachable_logged[head] = now
            log.warning("SC compute link %s; using gRPC to %s", exc, head)

    async def _compute(self, head: str, reqs: list[sc_pb2.RuleRequest]) -> list[sc_pb2.RuleReply]:
        """Compute on the head's compute link, or over gRPC when the link cannot be reached
        (a firewall between FM and SC that lets only the gRPC port through, say)."""
        try:
            return await self.compute_client(head).compute(reqs, packed_layout=self.packed_layout)
        except ComputeLinkUnreachable as exc:
            self._log_unreachable(head, exc)
            return await self.client(head).compute(reqs, packed_layout=self.packed_layout)

    async def compute(self, requests: Sequence[Request]) -> list[sc_pb2.RuleReply]:
        """One reply per request, in order; a request is retried while its SCG is in flux."""
        replies: list[sc_pb2.RuleReply | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        for attempt in range(self.attempts):
            groups: dict[str, list[int]] = defaultdict(list)
            for i in todo:
                p = requests[i].packet
                route = self.map.route(p.tenant_id, p.key)
                if route is None or route.head is None:
                    replies[i] = sc_pb2.RuleReply(
                        request_id=requests[i].request_id,
                        status=sc_pb2.Status(
                            code=sc_pb2.WRONG_SHARD, message="no SCG owns this flow's slot"
                        ),
                    )
                    continue
                groups[route.head].append(i)
            if len(groups) == 1:  # the common case: no task per batch
                ((head, idx),) = groups.items()
                results = [await self._send(head, [requests[i] for i in idx])]
            else:
                results = await asyncio.gather(
                    *(self._send(head, [requests[i] for i in idx]) for head, idx in groups.items())
                )
            todo = []
            for (_head, idx), got in zip(groups.items(), results, strict=True):
                for i, rep in zip(idx, got, strict=True):
                    replies[i] = rep
                    if rep.status.code in RETRY_CODES:
                        todo.append(i)
            if not todo or attempt == self.attempts - 1:
                break
            await asyncio.sleep(self.pause_s)  # let the etcd watch bring the new chain or map
        return [r for r in replies if r is not None]

    async def _send(self, head: str, reqs: list[Request]) -> list[sc_pb2.RuleReply]:
        """One reply per request, in order, in calls of at most `chunk` requests at once."""
        if len(reqs) <= self.chunk:
            return await self._send_call(head, reqs)
        parts = await asyncio.gather(*(self._send_call(head, reqs[i : i + self.chunk])
                                       for i in range(0, len(reqs), self.chunk)))  # fmt: skip
        return [rep for part in parts for rep in part]

    async def _send_call(self, head: str, reqs: list[Request]) -> list[sc_pb2.RuleReply]:
        """One reply per request, in order, whatever the node answered: a missing, extra or
        mismatched reply becomes UNAVAILABLE for its request (retried), never a crash."""
        try:
            got = await self._compute(head, [request_proto(r) for r in reqs])
        except Exception as exc:
            st = sc_pb2.Status(code=sc_pb2.UNAVAILABLE, message=f"{head}: {coord.reason_of(exc)}")
            return [sc_pb2.RuleReply(request_id=r.request_id, status=st) for r in reqs]
        if len(got) == len(reqs) and all(
            g.request_id == r.request_id for g, r in zip(got, reqs, strict=True)
        ):
            return got
        by_id = {g.request_id: g for g in got}
        st = sc_pb2.Status(
            code=sc_pb2.UNAVAILABLE,
            message=f"{head} answered {len(got)} replies to {len(reqs)} requests",
        )
        log.warning("SC node %s answered %d replies to %d requests", head, len(got), len(reqs))
        return [by_id.get(r.request_id) or sc_pb2.RuleReply(request_id=r.request_id, status=st)
                for r in reqs]  # fmt: skip

    async def release(self, keys: Sequence[ReleaseKey]) -> Released:
        """Release `keys` in the SC groups owning them, at most `chunk` per call;
        a key whose group is in flux or does not answer is retried."""
        total = sc_pb2.ReleaseReply(status=sc_pb2.Status(code=sc_pb2.OK))
        todo = list(keys)
        for attempt in range(self.attempts):
            groups: dict[str, list[ReleaseKey]] = defaultdict(list)
            pending, todo = todo, []
            for k in pending:
                slot = k.slot if k.slot is not None else slot_of(k.tenant_id, k.key)
                route = self.map.route_slot(k.tenant_id, slot)
                if route is None or route.head is None:
                    todo.append(k)  # no owner with a live head right now: try again
                else:
                    groups[route.head].append(k)
            for head, all_ks in groups.items():
                for i in range(0, len(all_ks), self.chunk):
                    ks = all_ks[i : i + self.chunk]
                    try:
                        got = await self._release(head, [release_proto(k) for k in ks])
                    except Exception:
                        todo += ks
                        continue
                    if got.status.code in RETRY_CODES:
                        todo += ks
                        continue
                    for f in ("released_keys", "freed_connections", "unknown_keys", "forwarded"):
                        setattr(total, f, getattr(total, f) + getattr(got, f))
            if not todo or attempt == self.attempts - 1:
                break
            await asyncio.sleep(self.pause_s)
        if todo:
            total.status.CopyFrom(
                sc_pb2.Status(code=sc_pb2.UNAVAILABLE, message=f"{len(todo)} keys not released")
            )
        return Released(total, todo)
