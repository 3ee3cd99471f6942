"""`FM.yaml`: a Fabric Master's configuration, with errors that name the file and line.

```yaml
fm_id: fm1                      # unique among FMs; the standby has its own id
etcd: [127.0.0.1:2379]
http: 127.0.0.1:9300            # optional: /metrics (Prometheus), /status and /scale (admin)
lease_ttl_s: 3                  # leadership lease: a dead leader is replaced after this long
pp_nodes:                       # PP nodes to program (more join through etcd members/pp/)
  - id: pp1
    address: 127.0.0.1:9559     # P4Runtime (host:port or unix:PATH)
    device_id: 1
    rules: pp1.json             # optional static entries (rules-file format, relative to FM.yaml)
    device_config: pp.json      # optional: the P4 device config FM sets with the pipeline,
                                # p4c-bm2-ss's JSON for a bmv2 node (an XDP agent takes none)
fabric:                         # optional: VXLAN next hops between PP nodes (paper §5.2)
  vni: 9000
  nexthop_base: 1000            # next hop id of peer i is nexthop_base + i (order below)
  nodes:
    - {id: pp1, port: 2, mac: "02:00:00:00:01:02", address: 198.51.100.1,
       gateway_mac: "02:00:00:00:00:fe"}
batch: {max_packets: 256, max_delay_ms: 1.0, max_in_flight: 2}  # SC batches outstanding
```
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import RulesError, load_rules
from cyberstar.pipeline.values import BadValue, parse_scalar
from cyberstar.yamlconf import Section, load_yaml, read_text


@dataclass(frozen=True)
class PpNodeConfig:
    id: str
    address: str
    device_id: int
    static_entries: tuple[TableEntry, ...] = ()
    device_config: bytes = b""


@dataclass(frozen=True)
class FabricNode:
    id: str
    port: int
    mac: int
    address: int
    gateway_mac: int


@dataclass(frozen=True)
class FabricConfig:
    vni: int
    nexthop_base: int
    nodes: tuple[FabricNode, ...]


@dataclass(frozen=True)
class FmConfig:
    fm_id: str
    etcd: tuple[tuple[str, int], ...]
    pp_nodes: tuple[PpNodeConfig, ...]
    http: str | None = None
    lease_ttl_s: int = 3
    fabric: FabricConfig | None = None
    max_batch: int = 256
    max_delay_s: float = 0.001
    max_in_flight: int = 2
    etcd_prefix: str = "/cyberstar"


def load_fm_config(path: Path) -> FmConfig:
    return parse_fm_config(read_text(path), str(path), path.parent)


def parse_fm_config(text: str, name: str = "<fm config>", base: Path = Path(".")) -> FmConfig:
    top = load_yaml(text, name)
    fm_id = top.str("fm_id")
    etcd = top.endpoints("etcd", ["127.0.0.1:2379"])
    http = top.str("http", None)
    lease = top.int("lease_ttl_s", 3, lo=1, hi=600)
    nodes = []
    seen: set[str] = set()
    for sec in top.sections("pp_nodes", []):
        node = _pp_node(sec, base)
        if node.id in seen:
            raise sec.error("id", f"PP node {node.id!r} is listed twice")
        seen.add(node.id)
        nodes.append(node)
    fabric = _fabric(top.section("fabric")) if top.has("fabric") else None
    max_batch, max_delay, in_flight = 256, 0.001, 2
    if top.has("batch"):
        b = top.section("batch")
        max_batch = b.int("max_packets", 256, lo=1, hi=65536)
        max_delay = b.number("max_delay_ms", 1.0) / 1000
        in_flight = b.int("max_in_flight", 2, lo=1, hi=64)
        b.done()
    prefix = top.str("etcd_prefix", "/cyberstar")
    top.done()
    return FmConfig(fm_id, tuple(etcd), tuple(nodes), http, lease, fabric, max_batch,
                    max_delay, in_flight, prefix)  # fmt: skip


def _pp_node(sec: Section, base: Path) -> PpNodeConfig:
    node_id = sec.str("id")
    address = sec.str("address")
    device_id = sec.int("device_id", 1, lo=0, hi=(1 << 64) - 1)
    entries: tuple[TableEntry, ...] = ()
    if sec.has("rules"):
        path = base / sec.str("rules")
        try:
            entries = tuple(load_rules(path, PIPELINE))
        except RulesError as exc:
            raise sec.error("rules", str(exc)) from None
    device_config = b""
    if sec.has("device_config"):
        path = base / sec.str("device_config")
        try:
            device_config = path.read_bytes()
        except OSError as exc:
            raise sec.error("device_config", f"cannot read {path}: {exc.strerror}") from None
    sec.done()
    return PpNodeConfig(node_id, address, device_id, entries, device_config)


def _fabric(sec: Section) -> FabricConfig:
    vni = sec.int("vni", lo=1, hi=(1 << 24) - 1)
    base = sec.int("nexthop_base", 1000, lo=1, hi=0xFFFF)
    nodes = []
    for n in sec.sections("nodes"):
        try:
            nodes.append(
                FabricNode(
                    n.str("id"),
                    n.int("port", lo=0, hi=510),
                    parse_scalar(n.str("mac"), 48),
                    int(ipaddress.IPv4Address(n.str("address"))),
                    parse_scalar(n.str("gateway_mac"), 48),
                )
            )
        except (BadValue, ValueError) as exc:
            raise n.error(None, str(exc)) from None
        n.done()
    if base + len(nodes) > 0xFFFF:
        raise sec.error("nexthop_base", "next hop ids would overflow 16 bits")
    sec.done()
    return FabricConfig(vni, base, tuple(nodes))
