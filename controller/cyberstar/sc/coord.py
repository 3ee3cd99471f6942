"""Coordination through etcd: the key layout, membership leases, chains, the shard map.

Key layout (all under a prefix, `/cyberstar` by default; values are JSON):

| key | value (writer) |
|---|---|
| `members/sc/<node_id>` | `{"scg", "address", "chain", "incarnation"}` on the node's lease |
| `members/fm/<id>`, `members/pp/<id>` | `{"address", ...}` on a lease (written by FM) |
| `fm/leader` | leader's node id on its lease; create-if-absent election (FM) |
| `scg/<scg>/chain` | `{"epoch", "nodes": [{"id", "address", "chain", "incarnation"}]}` (locker) |
| `scg/<scg>/lock` | etcd lock: whoever holds it may rewrite the chain (SC nodes) |
| `tenants/<tenant>/claimed` | the SCG that created the tenant's first shard (its head) |
| `shards/<tenant>/<lo>-<hi>` | `{"scg"}`: the SCG owning slots [lo, hi) of the tenant (SCG heads) |
| `scale/<op_id>` | `{"phase", "kind", "shard", "source", "target", "shards", "seconds"}` (source) |

A node that dies stops refreshing its lease, its member key vanishes, and the node of its SCG
that takes the lock first rewrites the chain without it (epoch + 1). A node that (re)starts
registers with a new incarnation and is appended at the tail; its predecessor sends it a
snapshot before it counts as a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aetcd

from cyberstar.sc.flows import ShardId

log = logging.getLogger(__name__)


class Keys:
    """The etcd key layout, one place for every process that reads or writes it."""

    def __init__(self, prefix: str = "/cyberstar") -> None:
        self.prefix = prefix.rstrip("/")

    def _k(self, *parts: str) -> bytes:
        return "/".join((self.prefix, *parts)).encode()

    def members(self, kind: str = "sc") -> bytes:
        return self._k("members", kind, "")

    def member(self, node_id: str, kind: str = "sc") -> bytes:
        return self._k("members", kind, node_id)

    def fm_leader(self) -> bytes:
        return self._k("fm", "leader")

    def chains(self) -> bytes:
        return self._k("scg", "")

    def chain(self, scg: str) -> bytes:
        return self._k("scg", scg, "chain")

    def chain_lock(self, scg: str) -> bytes:
        return self._k("scg", scg, "lock")

    def claim(self, tenant_id: int) -> bytes:
        return self._k("tenants", str(tenant_id), "claimed")

    def shards(self, tenant_id: int | None = None) -> bytes:
        return self._k("shards", "") if tenant_id is None else self._k("shards", str(tenant_id), "")

    def shard(self, sid: ShardId) -> bytes:
        return self._k("shards", str(sid.tenant_id), f"{sid.lo}-{sid.hi}")

    def shard_of_key(self, key: bytes) -> ShardId:
        tenant, rng = key.decode().rsplit("/", 2)[-2:]
        return ShardId.parse(f"{tenant}:{rng}")

    def scale(self, op_id: str = "") -> bytes:
        return self._k("scale", op_id)


@dataclass(frozen=True)
class ChainNode:
    id: str
    address: str  # gRPC (FM, other SCGs)
    incarnation: str
    chain: str = ""  # replication listener (its predecessor connects to it)


@dataclass(frozen=True)
class Chain:
    scg: str
    epoch: int
    nodes: tuple[ChainNode, ...]

    @property
    def head(self) -> ChainNode | None:
        return self.nodes[0] if self.nodes else None

    def to_json(self) -> bytes:
        nodes = [
            {"id": n.id, "address": n.address, "chain": n.chain, "incarnation": n.incarnation}
            for n in self.nodes
        ]
        return json.dumps({"epoch": self.epoch, "nodes": nodes}).encode()

    @classmethod
    def from_json(cls, scg: str, raw: bytes | None) -> Chain:
        if not raw:
            return cls(scg, 0, ())
        d = json.loads(raw)
        return cls(scg, d["epoch"], tuple(ChainNode(**n) for n in d["nodes"]))


def connect(endpoints: tuple[tuple[str, int], ...] | list[tuple[str, int]]) -> aetcd.Client:
    """A client for the first endpoint (aetcd speaks to one; list the others for operators)."""
    host, port = endpoints[0]
    return aetcd.Client(host=host, port=port)


async def watch_prefix(
    client: aetcd.Client,
    prefix: bytes,
    on_change: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
) -> None:
    """Call `on_change` once now and after every change under `prefix`, until `stop`."""
    while not stop.is_set():
        try:
            watch = await client.watch_prefix(prefix)
            try:
                await on_change()
                async for _event in watch:
                    await on_change()
                    if stop.is_set():
                        break
            finally:
                with contextlib.suppress(Exception):
                    await watch.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("etcd watch on %s failed (%s); retrying", prefix.decode(), exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def read_chains(client: aetcd.Client, keys: Keys) -> dict[str, Chain]:
    chains = {}
    for kv in await client.get_prefix(keys.chains()):
        parts = kv.key.decode().split("/")
        if parts[-1] == "chain":
            scg = parts[-2]
            chains[scg] = Chain.from_json(scg, kv.value)
    return chains


async def read_shard_map(client: aetcd.Client, keys: Keys) -> dict[ShardId, str]:
    out = {}
    for kv in await client.get_prefix(keys.shards()):
        out[keys.shard_of_key(kv.key)] = json.loads(kv.value)["scg"]
    return out
