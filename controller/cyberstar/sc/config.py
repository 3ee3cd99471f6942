"""`SC.yaml`: one SC node's configuration, with errors that name the file and line.

```yaml
node_id: sc1a                # unique in the cluster
listen: 127.0.0.1:7101       # gRPC address (FM and the other SCGs dial it: no wildcard)
chain_listen: 127.0.0.1:0    # replication link from the predecessor (default: listen's host,
                             # a free port; the address in use is published in etcd)
etcd: [127.0.0.1:2379]       # endpoints; the first that answers is used
scg: scg1                    # the SC group this node belongs to
idle_timeout_s: 30           # default idle timeout of the rules (per tenant overridable)
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

from dataclasses import dataclass
from pathlib import Path

from cyberstar.sc.nf import NF_KINDS, NetworkFunction
from cyberstar.yamlconf import ConfigError, load_yaml, read_text

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
class ScConfig:
    node_id: str
    listen: str
    etcd: tuple[tuple[str, int], ...]
    scg: str
    tenants: dict[int, TenantConfig]
    lease_ttl_s: int = 3
    commit_timeout_s: float = 5.0
    etcd_prefix: str = "/cyberstar"
    chain_listen: str = ""  # host:port of the replication listener; "" = listen's host, port 0

    @property
    def chain_endpoint(self) -> tuple[str, int]:
        host, _, port = (self.chain_listen or self.listen.rpartition(":")[0] + ":0").rpartition(":")
        return host.strip("[]"), int(port)


def load_config(path: Path) -> ScConfig:
    return parse_config(read_text(path), str(path))


def parse_config(text: str, name: str = "<config>") -> ScConfig:
    top = load_yaml(text, name)
    node_id = top.str("node_id")
    listen = top.str("listen")
    if ":" not in listen:
        raise top.error("listen", f"expected host:port, found {listen!r}")
    chain_listen = top.str("chain_listen", "")
    if chain_listen and not chain_listen.rpartition(":")[2].isdigit():
        raise top.error("chain_listen", f"expected host:port, found {chain_listen!r}")
    for key, value in (("listen", listen), ("chain_listen", chain_listen)):
        # Both are published in etcd for other nodes to dial: a wildcard cannot be dialled.
        if value.rpartition(":")[0].strip("[]") in ("0.0.0.0", "::"):
            raise top.error(key, f"{value!r} is a wildcard, but other nodes dial this address: "
                                 "give this host's address on the SC network")  # fmt: skip
    etcd = top.endpoints("etcd", ["127.0.0.1:2379"])
    scg = top.str("scg")
    default_timeout = top.number("idle_timeout_s", 30.0)
    lease_ttl = top.int("lease_ttl_s", 3, lo=1, hi=600)
    commit_timeout = top.number("commit_timeout_s", 5.0, lo=0.1)
    prefix = top.str("etcd_prefix", "/cyberstar")
    tenants: dict[int, TenantConfig] = {}
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
            built[nf_name] = cls.from_config(str(nf_name), nf_sec)
            nf_sec.done()
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
    return ScConfig(
        node_id, listen, tuple(etcd), scg, tenants, lease_ttl, commit_timeout, prefix, chain_listen
    )
