"""A whole SC plane in one process, at the state level: engines of several SCGs, the shard map,
FM's view of live connections, and the scale protocol's steps (`cyberstar.sc.scale`) done by
hand so that requests can be interleaved between them. The property tests drive it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from cyberstar.proto import sc_pb2
from cyberstar.sc.config import ScConfig, parse_config
from cyberstar.sc.engine import Engine
from cyberstar.sc.flows import FlowKey, Packet, ShardId, adjacent, slot_of
from cyberstar.sc.pool import AddressPool
from cyberstar.sc.state import MOVING, deferred_actions

TENANT = 7
CONFIG = f"""
node_id: model
listen: 127.0.0.1:1
plaintext: true
etcd: {{endpoints: [127.0.0.1:2379], plaintext: true}}
scg: a
tenants:
  - id: {TENANT}
    chain: [nat]
    forward_nexthop: 2
    return_nexthop: 1
    nfs:
      nat: {{kind: snat, pool: ["203.0.113.1:1000-1099", "203.0.113.2:1000-1099"]}}
"""


def model_config() -> ScConfig:
    return parse_config(CONFIG, "model.yaml")


@dataclass
class Move:
    op_id: str
    src: str
    dst: str
    moving: ShardId
    coalesce_with: str
    phase: str = "seeded"
    payload: dict | None = None
    sent_bits: dict = field(default_factory=dict)


class World:
    def __init__(self, scgs: tuple[str, ...] = ("a", "b", "c", "d")) -> None:
        config = model_config()
        self.engines = {scg: Engine(config) for scg in scgs}
        first = self.engines[scgs[0]]
        shard = first.initial_shard(TENANT)
        first.state.apply(
            ["create", str(shard.id), {n: p.encode() for n, p in shard.pools.items()}]
        )
        self.universe = {e for p in shard.pools.values() for e in p}
        self.map: dict[ShardId, str] = {shard.id: scgs[0]}
        self.live: dict[FlowKey, tuple[int, list, int | None]] = {}  # FM's cache
        self.held: dict[int, FlowKey] = {}  # element → the live connection holding it
        self.moves: list[Move] = []
        self.ops = 0
        self.exhausted = 0

    # -- FM's side -----------------------------------------------------------------------------
    def owner(self, slot: int) -> str:
        return next(scg for s, scg in self.map.items() if s.holds(slot))

    def compute(self, key: FlowKey):
        scg = self.owner(slot_of(TENANT, key))
        for _ in range(4):
            out = self.engines[scg].compute(Packet(TENANT, 1, 0, key), [])
            if out.proxy_to is None:
                return out
            scg = out.proxy_to
        raise AssertionError(f"request for {key} proxied in a loop")

    def allocate(self, key: FlowKey) -> None:
        out = self.compute(key)
        if out.code == sc_pb2.POOL_EXHAUSTED:
            self.exhausted += 1
            return
        assert out.code == sc_pb2.OK, out.message
        fwd = out.rules[0]
        assert fwd.action == "snat"
        elem = fwd.params[0] << 16 | fwd.params[1]
        if key in self.live:
            assert self.live[key][2] == elem, "a repeated request changed the mapping"
            return
        assert elem not in self.held, f"element {elem:#x} handed out twice"
        self.held[elem] = key
        self.live[key] = (out.slot, [r.key for r in out.rules], elem)

    def release(self, key: FlowKey, directions: int = 2) -> None:
        slot, keys, elem = self.live[key]
        for k in keys[:directions]:
            scg = self.owner(slot)
            for _ in range(4):
                result = self.engines[scg].release(TENANT, k, slot, [])
                if not result.startswith("proxy:"):
                    break
                scg = result[6:]
        if directions >= len(keys):
            del self.live[key]
            del self.held[elem]

    # -- the scale protocol, step by step ------------------------------------------------------
    def busy(self, sid: ShardId) -> bool:
        return any(m.moving == sid for m in self.moves)

    def start_out(self, sid: ShardId, dst: str) -> None:
        src = self.map[sid]
        lower, upper = sid.halves()
        self.engines[src].state.apply(["split", str(sid)])
        del self.map[sid]
        self.map[lower] = self.map[upper] = src
        self._seed(Move(f"op{self.ops}", src, dst, upper, ""))

    def start_in(self, sid: ShardId) -> bool:
        near = [s for s in self.map if adjacent(s, sid) and self.map[s] != self.map[sid]]
        near = [s for s in near if not self.busy(s)]
        if not near:
            return False
        dst = self.map[near[0]]
        self._seed(Move(f"op{self.ops}", self.map[sid], dst, sid, str(near[0])))
        return True

    def _seed(self, move: Move) -> None:
        self.ops += 1
        seed = self.engines[move.src].state.apply(
            ["seed_out", str(move.moving), move.dst, move.op_id]
        )
        seed = json.loads(json.dumps(seed))
        self.engines[move.dst].state.apply(["seed_in", str(move.moving), move.op_id, seed])
        self.moves.append(move)

    def advance(self, move: Move) -> None:
        src, dst = self.engines[move.src], self.engines[move.dst]
        if move.phase == "seeded":
            leaving = src.state.apply(["freeze", str(move.moving)])
            shard = src.state.get(move.moving)
            payload = {"conns": [c.wire() for c in shard.connections()], "pools": leaving}
            move.sent_bits = {c.forward.key: c.released for c in shard.connections()}
            move.payload = json.loads(json.dumps(payload))
            move.phase = "frozen"
            return
        result = dst.state.apply(
            ["merge_in", str(move.moving), move.op_id, move.payload, move.coalesce_with]
        )
        actions, _ = deferred_actions(src.state.get(move.moving), move.sent_bits, 0)
        for kind, key, slot in actions:
            if kind == "rel":
                dst.release(TENANT, key, slot, [])
            else:
                dst.compute(Packet(TENANT, 0, 0, key), [])
        src.state.apply(["drop", str(move.moving), move.dst])
        del self.map[move.moving]
        if result != str(move.moving):
            del self.map[ShardId.parse(move.coalesce_with)]
        self.map[ShardId.parse(result)] = move.dst
        self.moves.remove(move)

    # -- the invariant -------------------------------------------------------------------------
    def census(self) -> Counter:
        """Every element exactly once: free in a pool, held by a connection, or in transit."""
        counts: Counter = Counter()
        for eng in self.engines.values():
            for shard in eng.state.shards.values():
                for p in shard.pools.values():
                    counts.update(p)
                for c in shard.connections():
                    counts.update(e for _, e in c.holdings)
                if shard.state == MOVING:
                    for p in shard.leaving.values():
                        counts.update(AddressPool.decode(p))
        twice = [e for e, n in counts.items() if n > 1]
        assert not twice, f"elements held twice: {[hex(e) for e in twice[:5]]}"
        missing = self.universe - set(counts)
        assert not missing, f"elements leaked: {[hex(e) for e in list(missing)[:5]]}"
        assert set(counts) == self.universe
        return counts

    def free_total(self) -> int:
        return sum(
            len(p)
            for eng in self.engines.values()
            for shard in eng.state.shards.values()
            for p in shard.pools.values()
        )

    def finish(self) -> None:
        """Complete every move and release every connection: the whole pool must be free."""
        while self.moves:
            self.advance(self.moves[0])
        for key in list(self.live):
            self.release(key)
        self.census()
        assert self.free_total() == len(self.universe)
        for eng in self.engines.values():
            for shard in eng.state.shards.values():
                assert shard.count == 0 and not shard.conns
