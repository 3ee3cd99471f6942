"""Source NAT: per-tenant public address:port pools, one mapping per connection.

```yaml
nat:
  kind: snat
  pool: ["203.0.113.1", "203.0.113.8/30:20000-29999"]  # addr[/len][:lo-hi], ports 1024-65535
  sources: [10.0.0.0/8]      # translate these sources only (default: every source)
  internet_nexthop: 2        # forward direction leaves here (default: the tenant's)
  client_nexthop: 1          # return direction goes back here (default: the tenant's)
```

A mapping is an element of the pool taken for the connection; the return rule matches the
translated 5-tuple, so an element is held by exactly one connection until its rules idle out.
Traffic toward a public address without a mapping is unsolicited and dropped; an empty pool
drops the flow and raises the `pool_exhausted` alarm.
"""

from __future__ import annotations

import itertools

from cyberstar.sc.flows import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from cyberstar.sc.nf.api import Drop, NetworkFunction, NfContext, PacketView
from cyberstar.sc.nf.match import PrefixSet
from cyberstar.sc.nf.values import checked, parse_addr, parse_port_range
from cyberstar.sc.pool import element
from cyberstar.yamlconf import Section

DEFAULT_PORTS = (1024, 65535)
POOL = "ports"


def parse_pool_entry(text: object) -> list[tuple[int, int]]:
    """`addr[/len][:lo-hi]` → element ranges [lo, hi), one per address."""
    spec = str(text).strip()
    addr_part, sep, ports_part = spec.partition(":")
    lo_port, hi_port = parse_port_range(ports_part) if sep else DEFAULT_PORTS
    base_s, slash, plen_s = addr_part.partition("/")
    base = parse_addr(base_s)
    count = 1
    if slash:
        if not plen_s.isdigit() or not 24 <= int(plen_s) <= 32:
            raise ValueError(
                f"pool prefix must be /24../32 (at most 256 addresses), found {spec!r}"
            )
        count = 1 << (32 - int(plen_s))
        if base & (count - 1):
            raise ValueError(f"{base_s}/{plen_s} has host bits set")
    return [(element(a, lo_port), element(a, hi_port) + 1) for a in range(base, base + count)]


class Snat(NetworkFunction):
    kind = "snat"

    def __init__(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        sources: PrefixSet | None,
        internet_nexthop: int | None,
        client_nexthop: int | None,
    ) -> None:
        super().__init__(name)
        self.ranges = ranges
        self.public = frozenset(lo >> 16 for lo, _ in ranges)
        self.sources = sources
        self.internet_nexthop = internet_nexthop
        self.client_nexthop = client_nexthop

    @classmethod
    def from_config(cls, name: str, section: Section) -> Snat:
        entries = section.list("pool")
        if not entries:
            raise section.error("pool", "needs at least one address")
        ranges: list[tuple[int, int]] = []
        for i, entry in enumerate(entries):
            ranges += checked(section, "pool", parse_pool_entry, entry, i)
        ranges.sort()
        for (_, hi), (lo, _) in itertools.pairwise(ranges):
            if lo < hi:
                raise section.error("pool", "pool entries overlap")
        sources = PrefixSet.from_config(section, "sources") if section.has("sources") else None
        internet = section.int("internet_nexthop", None, hi=0xFFFF)
        client = section.int("client_nexthop", None, hi=0xFFFF)
        return cls(name, ranges, sources, internet, client)

    def pools(self) -> dict[str, list[tuple[int, int]]]:
        return {POOL: list(self.ranges)}

    def process(self, pkt: PacketView, ctx: NfContext) -> Drop | None:
        if pkt.dst_addr in self.public:
            return Drop("unsolicited traffic to a public SNAT address")
        if self.sources is not None and not self.sources.contains(pkt.src_addr):
            return None
        if pkt.protocol not in (PROTO_TCP, PROTO_UDP, PROTO_ICMP):
            return Drop(f"snat does not translate IP protocol {pkt.protocol}")
        elem = ctx.take(POOL)
        if elem is None:
            return Drop("snat pool exhausted", exhausted=True)
        pkt.set_source(elem >> 16, elem & 0xFFFF)
        pkt.route(forward=self.internet_nexthop, ret=self.client_nexthop)
        return None
