"""`SC.yaml`: one SC node's configuration, with errors that name the file and line.

```yaml
node_id: sc1a                # unique in the cluster; the common name of its certificate
listen: 127.0.0.1:7101       # gRPC address (FM and the other SCGs dial it: no wildcard)
chain_listen: 127.0.0.1:0    # replication link from the predecessor (default: listen's host,
                             # a free port; the address in use is published in etcd)
compute_listen: 127.0.0.1:0  # FM's Compute without gRPC (sc/compute_link.py; same default,
                             # published in etcd; same TLS and limits as gRPC)
metrics: 127.0.0.1:9200      # optional: Prometheus /metrics (counters, shard sizes)
tls: {ca: certs/ca.crt, cert: certs/sc1a.crt, key: certs/sc1a.key}  # or plaintext: true
etcd:
  endpoints: [127.0.0.1:2379]  # the first is used
  tls: {ca: certs/ca.crt, cert: certs/sc1a.crt, key: certs/sc1a.key}  # or plaintext: true
scg: scg1                    # the SC group this node belongs to
idle_timeout_s: 30           # default idle timeout of the rules (per tenant overridable)
lease_ttl_s: 10              # membership lease (refreshed from its own thread)
limits:                      # optional; the defaults below
  max_batch: 1024            # requests in one Compute, items in one Release (at least 256)
  max_message_mb: 64         # one gRPC message
  max_connections: 256       # gRPC connections
  max_calls: 256             # concurrent gRPC calls (more: RESOURCE_EXHAUSTED)
  idle_timeout_s: 300        # a gRPC connection without calls is closed after this
  chain_frame_mb: 512        # one chain-link frame after the hello (a snapshot)
tenants:
  - id: 7
    chain: [fw, nat]         # NF instances below, in the order a first packet crosses them
    forward_nexthop: 2       # next hop toward the services / the internet
    return_nexthop: 1        # next hop toward the tenant's clients
    home_scg: scg1           # the SCG that owns the tenant's state when nothing does yet
    nfs:
      fw: {kind: firewall, sets: {...}, rules: [...], default: deny}
      nat: {kind: snat, pool: ["203.0.113.1:1024-65535"], internet_nexthop: 2}
```

Every SC node of every SCG carries the same `tenants` (any SCG may come to own a shard of
any tenant); only `node_id`, `listen` and `scg` differ. The NF sections are documented with
their classes in `cyberstar.sc.nf` and in docs/sc.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cyberstar.listen import GrpcLimits
from cyberstar.sc import CALL_CHUNK
from cyberstar.sc.coord import EtcdConfig, parse_etcd
from cyberstar.sc.nf import NF_KINDS, NetworkFunction
from cyberstar.sc.pool import split_element
from cyberstar.tls import TlsFiles, is_local, parse_tls
from cyberstar.yamlconf import ConfigError, Section, load_yaml, read_text

__all__ = ["ConfigError", "ScConfig", "load_config", "parse_config"]


# -- the node configuration -------------------------------------------------------------------
@dataclass(frozen=True)
class TenantConfig:
    tenant_id: int
    chain: tuple[NetworkFunction, ...]
    forward_nexthop: int
    return_nexthop: int
    idle_timeout_ns: int
    home_scg: str | None


@dataclass(frozen=True)
class ScLimits:
    max_batch: int = 1024
    grpc: GrpcLimits = field(default_factory=lambda: GrpcLimits(max_message_bytes=64 << 20))
    chain_frame_bytes: int = 512 << 20  # after the hello; before it, a hello's worth
    chain_connections: int = 8  # chain-link connections not yet past their hello


@dataclass(frozen=True)
class ScConfig:
    node_id: str
    listen: str
    etcd: EtcdConfig
    scg: str
    tenants: dict[int, TenantConfig]
    tls: TlsFiles | None = None  # None: plaintext, which the configuration asked for
    lease_ttl_s: int = 10
    commit_timeout_s: float = 5.0
    etcd_prefix: str = "/cyberstar"
    chain_listen: str = ""  # host:port of the replication listener; "" = listen's host, port 0
    limits: ScLimits = field(default_factory=ScLimits)
    metrics: str = ""  # host:port of the Prometheus endpoint (mutual TLS as gRPC); "" = none
    compute_listen: str = ""  # host:port of the compute link; "" = listen's host, port 0

    @property
    def chain_endpoint(self) -> tuple[str, int]:
        return self._endpoint(self.chain_listen)

    @property
    def compute_endpoint(self) -> tuple[str, int]:
        return self._endpoint(self.compute_listen)

    def _endpoint(self, given: str) -> tuple[str, int]:
        host, _, port = (given or self.listen.rpartition(":")[0] + ":0").rpartition(":")
        return host.strip("[]"), int(port)


def load_config(path: Path) -> ScConfig:
    return parse_config(read_text(path), str(path), path.parent)


def parse_config(text: str, name: str = "<config>", base: Path = Path(".")) -> ScConfig:
    top = load_yaml(text, name)
    node_id = top.str("node_id")
    listen = top.str("listen")
    if ":" not in listen:
        raise top.error("listen", f"expected host:port, found {listen!r}")
    chain_listen = top.str("chain_listen", "")
    compute_listen = top.str("compute_listen", "")
    for key, value in (("chain_listen", chain_listen), ("compute_listen", compute_listen)):
        if value and not value.rpartition(":")[2].isdigit():
            raise top.error(key, f"expected host:port, found {value!r}")
    for key, value in (("listen", listen), ("chain_listen", chain_listen),
                       ("compute_listen", compute_listen)):  # fmt: skip
        # All are published in etcd for other nodes to dial: a wildcard cannot be dialled.
        if value.rpartition(":")[0].strip("[]") in ("0.0.0.0", "::"):
            raise top.error(key, f"{value!r} is a wildcard, but other nodes dial this address: "
                                 "give this host's address on the SC network")  # fmt: skip
    metrics = top.str("metrics", "")
    if metrics and not metrics.rpartition(":")[2].isdigit():
        raise top.error("metrics", f"expected host:port, found {metrics!r}")
    tls = parse_tls(top, base, "the SC node's gRPC, chain link and compute link")
    if tls is None:
        served = (("listen", listen), ("chain_listen", chain_listen),
                  ("compute_listen", compute_listen), ("metrics", metrics))  # fmt: skip
        for key, value in served:
            if value and not is_local(value):
                raise top.error(
                    key,
                    f"{value!r} is not a loopback address, and the node is plaintext: "
                    "configure tls, or listen on 127.0.0.1",
                )
    etcd = parse_etcd(top, base)
    scg = top.str("scg")
    default_timeout = top.number("idle_timeout_s", 30.0)
    lease_ttl = top.int("lease_ttl_s", 10, lo=2, hi=600)
    commit_timeout = top.number("commit_timeout_s", 5.0, lo=0.1)
    prefix = top.str("etcd_prefix", "/cyberstar")
    limits = _limits(top.section("limits")) if top.has("limits") else ScLimits()
    tenants: dict[int, TenantConfig] = {}
    pools: list[tuple[int, int, str, Section]] = []  # every NF's pool ranges, for overlaps
    for t in top.sections("tenants", []):
        tid = t.int("id", lo=0, hi=0xFFFF)
        if tid in tenants:
            raise t.error("id", f"tenant {tid} is configured twice")
        nfs_sec = t.section("nfs", {})
        built = {}
        for nf_name in nfs_sec.data:
            nf_sec = nfs_sec.section(nf_name)
            kind = nf_sec.str("kind")
            cls = NF_KINDS.get(kind)
            if cls is None:
                raise nf_sec.error(
                    "kind", f"unknown NF kind {kind!r}; known: {', '.join(NF_KINDS)}"
                )
            built[nf_name] = nf = cls.from_config(str(nf_name), nf_sec)
            nf_sec.done()
            owner = f"tenant {tid}'s NF {nf_name}"
            pools += [(lo, hi, owner, nf_sec) for r in nf.pools().values() for lo, hi in r]
        nfs_sec.done()
        chain = []
        names = t.list("chain", [])
        for i, nf_name in enumerate(names):
            if nf_name not in built:
                raise t.item_error("chain", i, f"no NF named {nf_name!r} in nfs")
            if nf_name in names[:i]:
                raise t.item_error("chain", i, f"NF {nf_name!r} appears twice in the chain")
            chain.append(built[nf_name])
        timeout = t.number("idle_timeout_s", default_timeout)
        tenants[tid] = TenantConfig(
            tenant_id=tid,
            chain=tuple(chain),
            forward_nexthop=t.int("forward_nexthop", lo=0, hi=0xFFFF),
            return_nexthop=t.int("return_nexthop", lo=0, hi=0xFFFF),
            idle_timeout_ns=int(timeout * 1e9),
            home_scg=t.str("home_scg", None),
        )
        t.done()
    top.done()
    _refuse_overlapping_pools(pools)
    return ScConfig(node_id, listen, etcd, scg, tenants, tls, lease_ttl, commit_timeout, prefix,
                    chain_listen, limits, metrics, compute_listen)  # fmt: skip


def _limits(sec: Section) -> ScLimits:
    mb = 1 << 20
    grpc = GrpcLimits(
        max_message_bytes=sec.int("max_message_mb", 64, lo=1, hi=2047) * mb,
        max_connections=sec.int("max_connections", 256, lo=1, hi=65536),
        max_calls=sec.int("max_calls", 256, lo=1, hi=65536),
        idle_timeout_s=sec.number("idle_timeout_s", 300.0, lo=1.0),
    )
    limits = ScLimits(
        max_batch=sec.int("max_batch", 1024, lo=CALL_CHUNK, hi=1 << 20),
        grpc=grpc,
        chain_frame_bytes=sec.int("chain_frame_mb", 512, lo=1, hi=4095) * mb,
    )
    sec.done()
    return limits


def _refuse_overlapping_pools(pools: list[tuple[int, int, str, Section]]) -> None:
    """A pool element belongs to one NF of one tenant: two owners would hand it out twice."""
    pools.sort(key=lambda p: p[0])
    reach, holder = -1, ""  # the highest end so far, and whose range reaches it
    for lo, hi, owner, sec in pools:
        if lo < reach:
            addr, port = split_element(lo)
            where = f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}:{port}"
            raise sec.error(
                "pool",
                f"overlaps the pool of {holder} (both hold {where}): pools must be disjoint across "
                "tenants and NFs",
            )
        if hi > reach:
            reach, holder = hi, owner
