"""`FM.yaml`: a Fabric Master's configuration, with errors that name the file and line.

```yaml
fm_id: fm1                      # unique among FMs; the standby has its own id
tls: {ca: certs/ca.crt, cert: certs/fm1.crt, key: certs/fm1.key}   # or plaintext: true
etcd:
  endpoints: [127.0.0.1:2379]
  tls: {ca: certs/ca.crt, cert: certs/fm1.crt, key: certs/fm1.key}  # or plaintext: true
http:                           # optional: GET /metrics, GET /status, POST /scale
  listen: 127.0.0.1:9300        # HTTPS with FM's certificate (plain HTTP when plaintext)
  token_file: fm-admin.token    # every request needs `Authorization: Bearer <its content>`
  max_connections: 64
  timeout_s: 10                 # a request must arrive whole within this
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
queue: {max_packets: 65536, per_tenant: 8192}  # punts waiting; more are dropped and counted
offload:                        # optional: elephant flows move to a DPU in front of a host (§6.1)
  pairs: [{host: pp1, dpu: dpu1}]   # both are pp_nodes; the DPU hands the host what it misses
  min_packets_per_s: 1000       # a flow at or above either rate is an elephant (0: not used)
  min_bytes_per_s: 0
  interval_ms: 500              # how often FM reads the hosts' flow counters
  idle_timeout_s: 2             # offloaded rules leave the DPU after this long without a packet
```

docs/deploy.md documents every key with a working deployment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import RulesError, load_rules
from cyberstar.pipeline.values import BadValue, parse_scalar
from cyberstar.sc.coord import EtcdConfig, parse_etcd
from cyberstar.tls import TlsFiles, is_local, parse_tls
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
class HttpConfig:
    listen: str
    token: str
    max_connections: int = 64
    timeout_s: float = 10.0


@dataclass(frozen=True)
class QueueConfig:
    max_packets: int = 65536  # punts waiting for the slow path, all tenants
    per_tenant: int = 8192  # of which one tenant may hold


@dataclass(frozen=True)
class OffloadConfig:
    pairs: tuple[tuple[str, str], ...]  # (host node id, DPU node id)
    min_packets_per_s: float
    min_bytes_per_s: float
    interval_s: float
    idle_timeout_s: float


@dataclass(frozen=True)
class FmConfig:
    fm_id: str
    etcd: EtcdConfig
    pp_nodes: tuple[PpNodeConfig, ...]
    tls: TlsFiles | None = None  # None: plaintext, which the configuration asked for
    http: HttpConfig | None = None
    lease_ttl_s: int = 3
    fabric: FabricConfig | None = None
    max_batch: int = 256
    max_delay_s: float = 0.001
    max_in_flight: int = 2
    etcd_prefix: str = "/cyberstar"
    queue: QueueConfig = QueueConfig()
    offload: OffloadConfig | None = None


def load_fm_config(path: Path) -> FmConfig:
    return parse_fm_config(read_text(path), str(path), path.parent)


def parse_fm_config(text: str, name: str = "<fm config>", base: Path = Path(".")) -> FmConfig:
    top = load_yaml(text, name)
    fm_id = top.str("fm_id")
    tls = parse_tls(top, base, "FM's P4Runtime, SC and HTTP channels")
    etcd = parse_etcd(top, base)
    http = _http(top.section("http"), base, tls is None) if top.has("http") else None
    lease = top.int("lease_ttl_s", 3, lo=1, hi=600)
    nodes = []
    seen: set[str] = set()
    for sec in top.sections("pp_nodes", []):
        node = _pp_node(sec, base)
        if tls is None and not is_local(node.address):
            raise sec.error(
                "address",
                f"{node.address} is not local, and FM is plaintext: configure tls, or use a "
                "loopback or unix address",
            )
        if node.id in seen:
            raise sec.error("id", f"PP node {node.id!r} is listed twice")
        seen.add(node.id)
        nodes.append(node)
    fabric = _fabric(top.section("fabric")) if top.has("fabric") else None
    max_batch, max_delay, in_flight = 256, 0.001, 2
    if top.has("batch"):
        b = top.section("batch")
        # A PP takes at most 256 PacketOuts in one StreamWrite (`p4rt.batching.MAX_PACKETS`).
        max_batch = b.int("max_packets", 256, lo=1, hi=256)
        max_delay = b.number("max_delay_ms", 1.0) / 1000
        in_flight = b.int("max_in_flight", 2, lo=1, hi=64)
        b.done()
    queue = QueueConfig()
    if top.has("queue"):
        q = top.section("queue")
        total = q.int("max_packets", queue.max_packets, lo=1, hi=1 << 24)
        queue = QueueConfig(
            total, q.int("per_tenant", min(queue.per_tenant, total), lo=1, hi=total)
        )
        q.done()
    prefix = top.str("etcd_prefix", "/cyberstar")
    offload = _offload(top.section("offload"), seen) if top.has("offload") else None
    top.done()
    return FmConfig(
        fm_id,
        etcd,
        tuple(nodes),
        tls,
        http,
        lease,
        fabric,
        max_batch,
        max_delay,
        in_flight,
        prefix,
        queue,
        offload,
    )


def _http(sec: Section, base: Path, plaintext: bool) -> HttpConfig:
    listen = sec.str("listen")
    if ":" not in listen or not listen.rpartition(":")[2].isdigit():
        raise sec.error("listen", f"expected host:port, found {listen!r}")
    if plaintext and not is_local(listen):
        raise sec.error(
            "listen",
            f"{listen} is not local, and FM is plaintext: configure tls (HTTPS), or listen on "
            "127.0.0.1",
        )
    path = base / sec.str("token_file")
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise sec.error("token_file", f"cannot read {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise sec.error(
            "token_file",
            f"{path}: the token must have at least 16 characters (e.g. `openssl rand -hex 16 > "
            "fm-admin.token`)",
        )
    http = HttpConfig(
        listen,
        token,
        sec.int("max_connections", 64, lo=1, hi=65536),
        sec.number("timeout_s", 10.0, lo=0.1),
    )
    sec.done()
    return http


def _offload(sec: Section, node_ids: set[str]) -> OffloadConfig:
    pairs: list[tuple[str, str]] = []
    taken: set[str] = set()
    for i, pair in enumerate(sec.sections("pairs")):
        host, dpu = pair.str("host"), pair.str("dpu")
        pair.done()
        for key, node in (("host", host), ("dpu", dpu)):
            if node not in node_ids:
                raise pair.error(
                    key, f"{node!r} is not one of pp_nodes ({', '.join(sorted(node_ids))})"
                )
            if node in taken:
                raise pair.error(key, f"{node!r} is already in another pair")
            taken.add(node)
        if host == dpu:
            raise sec.item_error("pairs", i, "a node cannot be its own DPU")
        pairs.append((host, dpu))
    if not pairs:
        raise sec.error("pairs", "needs at least one {host, dpu} pair")
    pps = sec.number("min_packets_per_s", 1000.0)
    bps = sec.number("min_bytes_per_s", 0.0)
    if pps == 0 and bps == 0:
        raise sec.error("min_packets_per_s", "this and min_bytes_per_s are both 0: nothing "
                        "would ever be an elephant")  # fmt: skip
    interval = sec.number("interval_ms", 500.0, lo=10.0) / 1000
    idle = sec.number("idle_timeout_s", 2.0, lo=0.1)
    sec.done()
    return OffloadConfig(tuple(pairs), pps, bps, interval, idle)


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
