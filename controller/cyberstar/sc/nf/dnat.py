"""Destination NAT: static forwards from the configuration (stateless).

```yaml
pub:
  kind: dnat
  forwards:
    - {protocol: tcp, addr: 198.51.100.1, port: 80, to: "10.1.0.5:8080", nexthop: 3}
```

`port` may be omitted (every port) and `to` may omit its port (keep the packet's). The return
rule is composed by the platform; nothing is remembered, so DNAT alone costs no replication.
"""

from __future__ import annotations

from dataclasses import dataclass

from cyberstar.sc.nf.api import Drop, NetworkFunction, NfContext, PacketView
from cyberstar.sc.nf.values import checked, parse_addr, parse_endpoint, parse_protocol
from cyberstar.yamlconf import Section


@dataclass(frozen=True)
class Forward:
    protocol: int | None
    addr: int
    port: int | None
    to_addr: int
    to_port: int | None
    nexthop: int | None


class Dnat(NetworkFunction):
    kind = "dnat"

    def __init__(self, name: str, forwards: list[Forward]) -> None:
        super().__init__(name)
        self.forwards = forwards

    @classmethod
    def from_config(cls, name: str, section: Section) -> Dnat:
        forwards = []
        for f in section.sections("forwards"):
            forwards.append(
                Forward(
                    protocol=checked(f, "protocol", parse_protocol, f.raw("protocol", "any")),
                    addr=checked(f, "addr", parse_addr, f.raw("addr")),
                    port=f.int("port", None, hi=0xFFFF),
                    to_addr=checked(f, "to", parse_endpoint, f.raw("to"))[0],
                    to_port=checked(f, "to", parse_endpoint, f.raw("to"))[1],
                    nexthop=f.int("nexthop", None, hi=0xFFFF),
                )
            )
            f.done()
        return cls(name, forwards)

    def process(self, pkt: PacketView, ctx: NfContext) -> Drop | None:
        for f in self.forwards:
            if (
                pkt.dst_addr == f.addr
                and (f.protocol is None or f.protocol == pkt.protocol)
                and (f.port is None or f.port == pkt.dst_port)
            ):
                port = pkt.dst_port if f.to_port is None else f.to_port
                pkt.set_destination(f.to_addr, port)
                pkt.route(forward=f.nexthop)
                break
        return None
