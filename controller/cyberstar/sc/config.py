"""`SC.yaml`: one SC node's configuration, with errors that name the file and line.

```yaml
node_id: sc1a                # unique in the cluster
listen: 127.0.0.1:7101       # gRPC address (FM and the chain peers dial it)
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

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cyberstar.errors import UsageError
from cyberstar.sc.flows import PROTO_ICMP, PROTO_TCP, PROTO_UDP

_REQUIRED = object()
PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP}


class ConfigError(UsageError):
    """A bad SC configuration; the message starts with `file:line:`."""


class _Map(dict):
    line = 0
    key_lines: dict[Any, int]


class _Seq(list):
    line = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember the line of every key and item."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = value_node.start_mark.line + 1
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


class Section:
    """A YAML mapping with typed accessors; every error names file, line and dotted path."""

    def __init__(self, path: str, data: object, where: str, line: int = 0) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:{line}: {where or 'the file'}: expected a mapping")
        self.data = data
        self.line = getattr(data, "line", line)
        self._used: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.line_of(key) if key is not None else self.line
        name = f"{self.where}.{key}" if self.where and key else (key or self.where)
        return ConfigError(f"{self.path}:{line}: {name}: {message}")

    def line_of(self, key: str) -> int:
        return getattr(self.data, "key_lines", {}).get(key, self.line)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: object = _REQUIRED) -> object:
        self._used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(None, f"missing required key {key!r}")
            return default
        return self.data[key]

    def _absent(self, key: str, default: object) -> bool:
        """True when the key is missing and has a default (which the accessor returns as is)."""
        self._used.add(key)
        if key in self.data:
            return False
        if default is _REQUIRED:
            raise self.error(None, f"missing required key {key!r}")
        return True

    def str(self, key: str, default: object = _REQUIRED) -> str:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self.data[key]
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, found {value!r}")
        return value

    def int(self, key: str, default: object = _REQUIRED, lo: int = 0, hi: int = 1 << 32) -> int:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(key, f"expected an integer in {lo}..{hi}, found {value!r}")
        return value

    def number(self, key: str, default: object = _REQUIRED, lo: float = 0.0) -> float:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
            raise self.error(key, f"expected a number >= {lo}, found {value!r}")
        return float(value)

    def list(self, key: str, default: object = _REQUIRED) -> list:
        value = self.raw(key, default)
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, found {value!r}")
        return value

    def item_line(self, key: str, index: int) -> int:
        value = self.data.get(key)
        lines = getattr(value, "item_lines", None)
        return lines[index] if lines and index < len(lines) else self.line_of(key)

    def section(self, key: str, default: object = _REQUIRED) -> Section:
        value = self.raw(key, default)
        return Section(self.path, value, self._sub(key), self.line_of(key))

    def sections(self, key: str, default: object = _REQUIRED) -> list[Section]:
        items = self.list(key, default)
        return [
            Section(self.path, item, f"{self._sub(key)}[{i}]", self.item_line(key, i))
            for i, item in enumerate(items)
        ]

    def item_error(self, key: str, index: int, message: str) -> ConfigError:
        return ConfigError(
            f"{self.path}:{self.item_line(key, index)}: {self._sub(key)}[{index}]: {message}"
        )

    def done(self) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        unknown = [k for k in self.data if k not in self._used]
        if unknown:
            key = unknown[0]
            raise self.error(key, f"unknown key (known here: {', '.join(sorted(self._used))})")

    def _sub(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key


# -- value parsers shared by the NF modules ---------------------------------------------------
def parse_addr(text: object) -> int:
    try:
        return int(ipaddress.IPv4Address(str(text).strip()))
    except ValueError:
        raise ValueError(f"expected an IPv4 address, found {text!r}") from None


def parse_prefix(text: object) -> tuple[int, int]:
    """`10.0.0.0/8` or an address → (network, prefix_len)."""
    try:
        net = ipaddress.IPv4Network(str(text).strip(), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"expected an IPv4 prefix like 10.0.0.0/8, found {text!r} ({exc})"
        ) from None
    return int(net.network_address), net.prefixlen


def parse_port_range(text: object) -> tuple[int, int]:
    """`80` or `"1000-2000"` → inclusive (lo, hi)."""
    if isinstance(text, int) and not isinstance(text, bool):
        lo = hi = text
    else:
        lo_s, sep, hi_s = str(text).partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"expected a port or a range like 1000-2000, found {text!r}") from None
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"port range {text!r} is not within 0..65535 with lo <= hi")
    return lo, hi


def parse_protocol(text: object) -> int | None:
    """tcp, udp, icmp, any (None) or a protocol number."""
    if text is None or text == "any":
        return None
    if isinstance(text, str) and text.lower() in PROTOCOLS:
        return PROTOCOLS[text.lower()]
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text <= 255:
        return text
    raise ValueError(f"expected tcp, udp, icmp, any or a number 0..255, found {text!r}")


def parse_endpoint(text: object) -> tuple[int, int | None]:
    """`10.1.0.5:8080` or `10.1.0.5` → (addr, port or None)."""
    addr_s, sep, port_s = str(text).partition(":")
    addr = parse_addr(addr_s)
    if not sep:
        return addr, None
    lo, hi = parse_port_range(port_s)
    if lo != hi:
        raise ValueError(f"expected one port in {text!r}")
    return addr, lo


def checked(section: Section, key: str, parse, value: object, index: int | None = None):
    """Run a value parser; turn its ValueError into a ConfigError at the value's line."""
    try:
        return parse(value)
    except ValueError as exc:
        if index is None:
            raise section.error(key, str(exc)) from None
        raise section.item_error(key, index, str(exc)) from None


# -- the node configuration -------------------------------------------------------------------
@dataclass(frozen=True)
class TenantConfig:
    tenant_id: int
    chain: tuple  # tuple[NetworkFunction, ...]
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


def load_config(path: Path) -> ScConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(path))


def parse_config(text: str, name: str = "<config>") -> ScConfig:
    from cyberstar.sc.nf import NF_KINDS

    loader = _Loader(text)
    loader.name = name
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError(f"{name}:{line}: not valid YAML: {exc.problem}") from None
    finally:
        loader.dispose()
    top = Section(name, data, "", 1)
    node_id = top.str("node_id")
    listen = top.str("listen")
    if ":" not in listen:
        raise top.error("listen", f"expected host:port, found {listen!r}")
    etcd = []
    for i, ep in enumerate(top.list("etcd", ["127.0.0.1:2379"])):
        host, sep, port = str(ep).rpartition(":")
        if not sep or not port.isdigit():
            raise top.item_error("etcd", i, f"expected host:port, found {ep!r}")
        etcd.append((host, int(port)))
    if not etcd:
        raise top.error("etcd", "needs at least one endpoint")
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
    return ScConfig(node_id, listen, tuple(etcd), scg, tenants, lease_ttl, commit_timeout, prefix)
