"""Stateful firewall: ordered allow/deny rules over address sets; sessions let replies through.

```yaml
fw:
  kind: firewall
  sets: {clients: [10.0.0.0/8], dns: [192.0.2.53]}
  rules:                       # first match wins
    - {action: deny, dst: [192.0.2.66]}
    - {action: allow, src: [clients], protocol: udp, dst: [dns], dst_ports: [53]}
    - {action: allow, src: [clients], protocol: tcp, dst_ports: [80, 443, "8000-8080"]}
  default: deny
```

An allowed connection is remembered (a session): its return direction's rule is returned with
the forward one, and a request for the return direction is answered from the session. A denied
flow gets a drop rule and no state.
"""

from __future__ import annotations

from dataclasses import dataclass

from cyberstar.sc.nf.api import Drop, NetworkFunction, NfContext, PacketView
from cyberstar.sc.nf.match import PortSet, PrefixSet
from cyberstar.sc.nf.values import checked, parse_protocol
from cyberstar.yamlconf import Section

ACTIONS = ("allow", "deny")


@dataclass(frozen=True)
class FwRule:
    allow: bool
    src: PrefixSet | None
    dst: PrefixSet | None
    protocol: int | None
    dst_ports: PortSet | None

    def matches(self, pkt: PacketView) -> bool:
        return (
            (self.protocol is None or self.protocol == pkt.protocol)
            and (self.src is None or self.src.contains(pkt.src_addr))
            and (self.dst is None or self.dst.contains(pkt.dst_addr))
            and (self.dst_ports is None or self.dst_ports.contains(pkt.dst_port))
        )


def _action(section: Section, key: str, default: str | None = None) -> bool:
    value = section.str(key) if default is None else section.str(key, default)
    if value not in ACTIONS:
        raise section.error(key, f"expected allow or deny, found {value!r}")
    return value == "allow"


class Firewall(NetworkFunction):
    kind = "firewall"

    def __init__(self, name: str, rules: list[FwRule], default_allow: bool) -> None:
        super().__init__(name)
        self.rules = rules
        self.default_allow = default_allow

    @classmethod
    def from_config(cls, name: str, section: Section) -> Firewall:
        sets: dict[str, PrefixSet] = {}
        sets_sec = section.section("sets", {})
        for set_name in sets_sec.data:
            sets[str(set_name)] = PrefixSet.from_config(sets_sec, set_name)
        sets_sec.done()
        rules = []
        for r in section.sections("rules", []):
            rules.append(
                FwRule(
                    allow=_action(r, "action"),
                    src=PrefixSet.from_config(r, "src", sets) if r.has("src") else None,
                    dst=PrefixSet.from_config(r, "dst", sets) if r.has("dst") else None,
                    protocol=checked(r, "protocol", parse_protocol, r.raw("protocol", "any")),
                    dst_ports=PortSet.from_config(r, "dst_ports") if r.has("dst_ports") else None,
                )
            )
            r.done()
        return cls(name, rules, _action(section, "default", "deny"))

    def process(self, pkt: PacketView, ctx: NfContext) -> Drop | None:
        allow = next((r.allow for r in self.rules if r.matches(pkt)), self.default_allow)
        if not allow:
            return Drop("denied by firewall")
        ctx.keep_state()
        return None
