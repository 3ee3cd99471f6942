"""L4 load balancer: VIP:port → weighted backends, Maglev hashing, per-connection affinity.

```yaml
web:
  kind: lb
  table_size: 65537          # Maglev table entries (a prime)
  vips:
    - addr: 198.51.100.10
      port: 80
      protocol: tcp
      backends:
        - {to: "10.1.0.5:8080", weight: 2, nexthop: 3}
        - {to: "10.1.0.6:8080"}          # weight 1, the tenant's forward next hop
```

The backend is chosen by the Maglev table from a hash of the flow, and the connection is
remembered: a repeated request for the flow returns the same backend even after the backend
set changed (affinity), and the table change itself moves only about 1/N of new flows.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from cyberstar.sc.nf.api import Drop, NetworkFunction, NfContext, PacketView
from cyberstar.sc.nf.maglev import DEFAULT_TABLE_SIZE, build_table
from cyberstar.sc.nf.values import checked, parse_addr, parse_endpoint, parse_protocol
from cyberstar.yamlconf import Section

_FLOW = struct.Struct(">BIIHH")


@dataclass(frozen=True)
class Backend:
    addr: int
    port: int | None
    weight: int
    nexthop: int | None

    @property
    def name(self) -> str:
        return f"{self.addr}:{self.port}"


@dataclass(frozen=True)
class Vip:
    addr: int
    port: int | None
    protocol: int | None
    backends: tuple[Backend, ...]
    table: tuple[int, ...]


def flow_hash(pkt: PacketView) -> int:
    return zlib.crc32(
        _FLOW.pack(pkt.protocol, pkt.src_addr, pkt.dst_addr, pkt.src_port, pkt.dst_port)
    )


class LoadBalancer(NetworkFunction):
    kind = "lb"

    def __init__(self, name: str, vips: list[Vip]) -> None:
        super().__init__(name)
        self.vips = vips

    @classmethod
    def from_config(cls, name: str, section: Section) -> LoadBalancer:
        size = section.int("table_size", DEFAULT_TABLE_SIZE, lo=7, hi=1 << 20)
        vips = []
        for v in section.sections("vips"):
            backends = []
            for b in v.sections("backends"):
                to_addr, to_port = checked(b, "to", parse_endpoint, b.raw("to"))
                backends.append(
                    Backend(to_addr, to_port, b.int("weight", 1, hi=1000), b.int("nexthop", None))
                )
                b.done()
            if not backends:
                raise v.error("backends", "needs at least one backend")
            table = build_table([(be.name, be.weight) for be in backends], size)
            vips.append(
                Vip(
                    addr=checked(v, "addr", parse_addr, v.raw("addr")),
                    port=v.int("port", None, hi=0xFFFF),
                    protocol=checked(v, "protocol", parse_protocol, v.raw("protocol", "any")),
                    backends=tuple(backends),
                    table=tuple(table),
                )
            )
            v.done()
        return cls(name, vips)

    def process(self, pkt: PacketView, ctx: NfContext) -> Drop | None:
        for vip in self.vips:
            if (
                pkt.dst_addr == vip.addr
                and (vip.port is None or vip.port == pkt.dst_port)
                and (vip.protocol is None or vip.protocol == pkt.protocol)
            ):
                if not vip.table:
                    return Drop("load balancer VIP has no backend with weight > 0")
                backend = vip.backends[vip.table[flow_hash(pkt) % len(vip.table)]]
                port = pkt.dst_port if backend.port is None else backend.port
                pkt.set_destination(backend.addr, port)
                pkt.route(forward=backend.nexthop)
                ctx.keep_state()
                break
        return None
