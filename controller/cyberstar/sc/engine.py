"""One SC node's state machine: compute rules for first packets, release, and move shards.

The engine is synchronous and single-threaded by design: the server calls it from one asyncio
loop, so every decision sees the effects of the previous one, and the operations it returns
are replicated in the order they were applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from cyberstar.proto import sc_pb2
from cyberstar.sc.compose import compose, drop_rule
from cyberstar.sc.config import ScConfig, TenantConfig
from cyberstar.sc.flows import FLOW_WIDTHS, FlowKey, Packet, ShardId, slot_of
from cyberstar.sc.metrics import Counters
from cyberstar.sc.nf.api import NfContext, PacketView
from cyberstar.sc.pool import AddressPool
from cyberstar.sc.state import MOVING, Connection, FlowRule, NodeState, Shard

Code = sc_pb2.Code
# An exhausted pool's drop rule lives this long, so the flow asks again soon.
EXHAUSTED_TIMEOUT_NS = 1_000_000_000


@dataclass
class Outcome:
    code: int
    message: str = ""
    rules: list[FlowRule] = field(default_factory=list)
    tenant_id: int = 0
    timeout_ns: int = 0
    slot: int = 0
    shard: str = ""
    proxy_to: str | None = None  # another SCG must answer (the shard moved or is moving)


class _Ctx(NfContext):
    """The NF context of one chain run: pool elements are chosen here, taken by the op."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.prefix = ""
        self.holdings: list[tuple[str, int]] = []
        self.stateful = False

    def take(self, pool: str) -> int | None:
        name = self.prefix + pool
        free = self.shard.pools.get(name)
        if free is None:
            return None
        chosen = {e for n, e in self.holdings if n == name}
        elem = next((e for e in free if e not in chosen), None)
        if elem is not None:
            self.holdings.append((name, elem))
        return elem

    def keep_state(self) -> None:
        self.stateful = True


def validate_flow(values: dict[str, int]) -> str | None:
    """A message naming the first out-of-range field, or None."""
    for name, width in FLOW_WIDTHS.items():
        v = values[name]
        if v < 0 or v >> width:
            return f"field {name}={v} does not fit in {width} bits"
    return None


def pool_name(nf_name: str, pool: str) -> str:
    return f"{nf_name}/{pool}"


class Engine:
    def __init__(self, config: ScConfig, counters: Counters | None = None) -> None:
        self.config = config
        self.state = NodeState()
        self.counters = counters or Counters()

    # -- shards --------------------------------------------------------------------------------
    def initial_shard(self, tenant_id: int) -> Shard:
        """A whole-tenant shard with the full pools from the configuration (first claim)."""
        tenant = self.config.tenants[tenant_id]
        pools = {}
        for nf in tenant.chain:
            for name, ranges in nf.pools().items():
                pools[pool_name(nf.name, name)] = AddressPool(ranges)
        return Shard(ShardId.whole(tenant_id), pools=pools)

    # -- compute -------------------------------------------------------------------------------
    def compute(self, pkt: Packet, ops: list) -> Outcome:
        """Rules for a first packet; state operations it applied are appended to `ops`."""
        c = self.counters
        c.inc("requests")
        tenant = self.config.tenants.get(pkt.tenant_id)
        if tenant is None:
            c.inc("unknown_tenant")
            return Outcome(Code.UNKNOWN_TENANT, f"tenant {pkt.tenant_id} is not configured")
        key = pkt.key
        slot = slot_of(pkt.tenant_id, key)
        shard = self.state.shard_for(pkt.tenant_id, slot)
        base = Outcome(Code.OK, tenant_id=pkt.tenant_id, slot=slot)
        if shard is None:
            target = self.state.forwarded(pkt.tenant_id, slot)
            c.inc("wrong_shard")
            base.code, base.proxy_to = Code.WRONG_SHARD, target
            base.message = f"slot {slot} of tenant {pkt.tenant_id} is not owned by this SCG" + (
                f" (it moved to {target})" if target else ""
            )
            return base
        base.shard = str(shard.id)
        conn = shard.conns.get(key)
        if conn is not None:
            c.inc("cache_hits")
            if conn.released:
                self._revive(shard, conn, key, ops)
            base.rules, base.timeout_ns = conn.rules(), conn.timeout_ns
            c.inc("rules_ok")
            return base
        if shard.state == MOVING:
            base.code, base.proxy_to = Code.WRONG_SHARD, shard.target
            base.message = f"shard {shard.id} is moving to {shard.target}"
            return base
        return self._run_chain(tenant, pkt, shard, slot, base, ops)

    def _revive(self, shard: Shard, conn: Connection, key: FlowKey, ops: list) -> None:
        if shard.state == MOVING:
            op = ["defer", str(shard.id), "live", list(key), conn.slot]
        else:
            op = ["live", str(shard.id), list(key)]
        self.state.apply(op)
        ops.append(op)

    def _run_chain(
        self, tenant: TenantConfig, pkt: Packet, shard: Shard, slot: int, base: Outcome, ops: list
    ) -> Outcome:
        key = pkt.key
        view = PacketView(
            pkt.tenant_id,
            pkt.ingress_port,
            pkt.vni,
            key.protocol,
            key.src_addr,
            key.dst_addr,
            key.src_port,
            key.dst_port,
        )
        ctx = _Ctx(shard)
        for nf in tenant.chain:
            ctx.prefix = nf.name + "/"
            drop = nf.process(view, ctx)
            if drop is not None:
                base.rules = [drop_rule(key)]
                if drop.exhausted:
                    self.counters.inc("pool_exhausted")
                    base.code, base.timeout_ns = Code.POOL_EXHAUSTED, EXHAUSTED_TIMEOUT_NS
                else:
                    self.counters.inc("denied")
                    self.counters.inc("rules_ok")
                    base.timeout_ns = tenant.idle_timeout_ns
                base.message = f"{nf.name}: {drop.reason}"
                return base
        forward, reverse = compose(key, view, tenant.forward_nexthop, tenant.return_nexthop)
        if reverse is not None and reverse.key in shard.conns:
            # The reply key already belongs to another connection (its forward key): keep that
            # one's rule rather than install a contradicting return rule.
            reverse = None
        base.rules = [forward] if reverse is None else [forward, reverse]
        base.timeout_ns = tenant.idle_timeout_ns
        if ctx.stateful or ctx.holdings:
            conn = Connection(
                pkt.tenant_id, slot, tenant.idle_timeout_ns, forward, reverse, tuple(ctx.holdings)
            )
            # what `state.apply(op)` does, without decoding the wire form we just built
            shard.insert(conn, take=True)
            ops.append(["conn", str(shard.id), conn.wire()])
            self.counters.inc("connections_created")
        self.counters.inc("rules_ok")
        return base

    # -- release -------------------------------------------------------------------------------
    def release(self, tenant_id: int, key: FlowKey, slot: int | None, ops: list) -> str:
        """Release one rule key. Returns released, freed, deferred, unknown or `proxy:<scg>`."""
        self.counters.inc("releases")
        if slot is None:
            slot = slot_of(tenant_id, key)
        shard = self.state.shard_for(tenant_id, slot)
        if shard is None:
            target = self.state.forwarded(tenant_id, slot)
            if target:
                return f"proxy:{target}"
            self.counters.inc("unknown_release")
            return "unknown"
        conn = shard.conns.get(key)
        if shard.state == MOVING:
            if conn is None:
                return f"proxy:{shard.target}"
            op = ["defer", str(shard.id), "rel", list(key), slot]
            self.state.apply(op)
            ops.append(op)
            return "deferred"
        if conn is None or conn.released & conn.bit_of(key):
            self.counters.inc("unknown_release")
            return "unknown"
        op = ["rel", str(shard.id), list(key)]
        self.state.apply(op)
        ops.append(op)
        self.counters.inc("released_keys")
        if shard.conns.get(key) is not conn:
            self.counters.inc("freed_connections")
            return "freed"
        return "released"

    def shards(self) -> Iterator[Shard]:
        return iter(list(self.state.shards.values()))
