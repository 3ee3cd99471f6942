"""`LabNet`: compose a whole cyberstar system in Mininet, start it, scale it, break it.

```
 tenant hosts ─┐                    ┌─ pp1 ─┐                     ┌─ nginx backends
 (per tenant)  ├─ vsw ══ ECMP ══════┼─ pp2 ─┼══════ ECMP ══ svc ──┤
               ┘  (the tenants'     └─ pp3 ─┘   (the services'    └─
                   vSwitch)          PP group    gateway)
 management bridge: ops (the lab), etcd, fm1 fm2, SC groups of three, every PP's eth0
```

Addresses (management 10.255.0.0/16: ops .0.1, etcd .0.2, FM k 10.255.1.k, SC node j
10.255.2.j, PP n 10.255.3.n): PP n's port 1 is 172.16.n.2 (vsw-pn is .1), port 2 172.17.n.2
(svc-pn is .1); tenant k's client j is 10.k.j.2 behind vsw; backend b is 10.200.b.2 behind
svc. Tenant k's service is its VIP 198.51.100.k:80 (an L4 load balancer over its backends)
and its connections leave through SNAT address 203.0.113.k.

Every control channel is mutual TLS, as in a deployment: the lab makes a CA in its work
directory and a certificate per process, valid for its host's management address (etcd, FM,
SC and PP nodes, bmv2's P4Runtime server); the lab itself (`ops`) holds an admin certificate,
with which it scrapes metrics (HTTPS wanting a client certificate), and FM's bearer token, with
which it calls FM's admin API (`GET /status`, `POST /scale`) over HTTPS.

Compose with `add_*` (see docs/lab.md for a full example), then `start()`; `close()` removes
everything (also on errors: use it as a context manager).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cyberstar import netns
from cyberstar.lab.certs import LabCerts
from cyberstar.lab.ecmp import NEXTHOP_GROUP_BASE, EcmpGroup, HealthMonitor, Side
from cyberstar.lab.hosts import (
    Bmv2PpHost,
    DataLink,
    EtcdHost,
    FmHost,
    LabHost,
    NginxHost,
    OpsHost,
    PpHost,
    RouterHost,
    ScHost,
    Spawner,
    TenantHost,
    XdpPpHost,
    new_lab_id,
)
from cyberstar.lab.procs import LabError
from cyberstar.tls import client_ssl

NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
PP_KINDS: dict[str, type[PpHost]] = {"xdp": XdpPpHost, "bmv2": Bmv2PpHost}
SERVICE_PORT = 80


@dataclass
class PpGroup:
    name: str
    nodes: list[PpHost]
    initial: int  # the first `initial` nodes form the group at start; the rest are spares
    bonding: EcmpGroup | None = None

    @property
    def active(self) -> list[PpHost]:
        return list(self.bonding.members) if self.bonding else []

    def spare(self, exclude: list[PpHost] = ()) -> PpHost | None:
        """A node that runs nothing and is neither a member nor draining."""
        assert self.bonding is not None
        busy = {p.name for p in self.bonding.members} | set(self.bonding.draining)
        busy |= {p.name for p in exclude}
        return next((p for p in self.nodes if p.name not in busy and not p.running), None)


@dataclass
class Tenant:
    name: str
    tenant_id: int
    index: int
    group: PpGroup
    backends: list[NginxHost]
    clients: list[TenantHost] = field(default_factory=list)

    @property
    def vip(self) -> str:
        return f"198.51.100.{self.index}"

    @property
    def snat_ip(self) -> str:
        return f"203.0.113.{self.index}"

    @property
    def client_net(self) -> str:
        return f"10.{self.index}.0.0/16"


class LabNet:
    """A cyberstar system in Mininet. See the module doc for the layout."""

    def __init__(
        self,
        workdir: Path | None = None,
        idle_timeout_s: float = 120,
        fm_lease_ttl_s: int = 2,
        sc_lease_ttl_s: int = 5,
    ) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.nodelib import LinuxBridge

        setLogLevel("error")
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="cyberstar-lab-")
        self.workdir = Path(workdir or self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A fresh CA per lab: a certificate left by an earlier lab may name other addresses.
        shutil.rmtree(self.workdir / "certs", ignore_errors=True)
        self.certs = LabCerts(self.workdir / "certs")
        self.admin_tls = self.certs.files("admin", "lab-admin")  # the lab's own certificate
        self._admin_ssl: ssl.SSLContext = client_ssl(self.admin_tls)
        self.fm_token = secrets.token_hex(16)  # the bearer token of FM's admin API
        self.idle_timeout_s = idle_timeout_s
        # FM's lease bounds a failover; an SC group whose leases all lapse at once (a busy
        # host) rejoins empty, so SC gets more slack.
        self.fm_lease_ttl_s, self.sc_lease_ttl_s = fm_lease_ttl_s, sc_lease_ttl_s
        self.lab_id = new_lab_id()
        self.spawner = Spawner()
        self.net = Mininet(topo=None, controller=None, build=False, autoSetMacs=False)
        # The bridge lives in the root namespace: its name (and its ports') carry the lab id.
        self.mgmt = self.net.addSwitch("b" + self.lab_id.removeprefix("csl"), cls=LinuxBridge)
        self.hosts: dict[str, LabHost] = {}
        self.ops = self._host("ops", OpsHost, "10.255.0.1")
        self.vsw = self._host("vsw", RouterHost)
        self.svc = self._host("svc", RouterHost)
        self.etcd: EtcdHost | None = None
        self.fms: dict[str, FmHost] = {}
        self.scgs: dict[str, list[ScHost]] = {}
        self.groups: dict[str, PpGroup] = {}
        self.pps: dict[str, PpHost] = {}
        self.backends: dict[str, NginxHost] = {}
        self.tenants: dict[str, Tenant] = {}
        self.health = HealthMonitor(self._member_died, self._member_back)
        self.removed: list[tuple[float, str, float]] = []  # (monotonic, PP, silent for s)
        self.restored: list[tuple[float, str]] = []  # false alarms: answered again
        self.started = False
        self._sc_count = 0

    # ---- composition ------------------------------------------------------------------------

    def _host(self, name: str, cls: type[LabHost], mgmt_ip: str | None = None) -> LabHost:
        if name in self.hosts:
            raise LabError(f"two hosts named {name!r}")
        host = self.net.addHost(
            name, cls=cls, ip=None, lab_id=self.lab_id, workdir=self.workdir, spawner=self.spawner
        )
        self.hosts[name] = host
        host.certs = self.certs
        if mgmt_ip is not None:
            host.mgmt_ip = mgmt_ip
            port = f"{self.mgmt.name}p{len(self.mgmt.intfList())}"
            self.net.addLink(host, self.mgmt, intfName1=f"{name}-eth0", intfName2=port)
        return host

    def add_etcd(self) -> EtcdHost:
        self.etcd = self._host("etcd", EtcdHost, "10.255.0.2")
        return self.etcd

    def add_fm(self, name: str) -> FmHost:
        """A Fabric Master; the first one started leads, the others are hot standbys."""
        _check_name(name)
        fm = self._host(name, FmHost, f"10.255.1.{len(self.fms) + 1}")
        self.fms[name] = fm
        return fm

    def add_scg(self, name: str, size: int = 3, running: bool = True) -> list[ScHost]:
        """An SC group of `size` nodes (`<name>a`, `<name>b`, ...). `running=False` leaves it
        off until a scale-out starts it."""
        _check_name(name, 7)
        nodes = []
        for i in range(size):
            self._sc_count += 1
            node = self._host(f"{name}{chr(97 + i)}", ScHost, f"10.255.2.{self._sc_count}")
            node.scg, node.autostart = name, running
            nodes.append(node)
        self.scgs[name] = nodes
        return nodes

    def add_pp_group(
        self,
        name: str,
        nodes: int = 2,
        spares: int = 0,
        kind: str = "xdp",
        spare_kind: str | None = None,
        rate_policy: dict | None = None,
    ) -> PpGroup:
        """`nodes` PP nodes in an ECMP group, and `spares` more that scale-out boots; `kind`
        is xdp or bmv2, `spare_kind` the spares' (by default the same): a group of XDP nodes
        that scales out onto bmv2 nodes, say. `rate_policy`: every node runs it (the content of
        `pp serve --rate-policy`'s file; XDP nodes only)."""
        _check_name(name)
        kinds = [kind] * nodes + [spare_kind or kind] * spares
        for k in set(kinds):
            if k not in PP_KINDS:
                raise LabError(f"unknown PP kind {k!r}; known: {', '.join(PP_KINDS)}")
        if rate_policy is not None and set(kinds) != {"xdp"}:
            raise LabError(f"group {name}: a rate policy runs in the XDP agent; its nodes are "
                           f"{', '.join(sorted(set(kinds)))}")  # fmt: skip
        members = []
        for k in kinds:
            n = len(self.pps) + 1
            pp = self._host(f"pp{n}", PP_KINDS[k], f"10.255.3.{n}")
            pp.group, pp.index = name, n
            pp.rate_policy = rate_policy
            for router, net, port in ((self.vsw, "172.16", 1), (self.svc, "172.17", 2)):
                self._link(
                    pp,
                    DataLink(
                        router,
                        f"{router.name}-p{n}",
                        f"{net}.{n}.1/24",
                        f"pp{n}-eth{port}",
                        f"{net}.{n}.2/24",
                    ),
                )
            self.pps[pp.name] = pp
            members.append(pp)
        group = PpGroup(name, members, nodes)
        self.groups[name] = group
        return group

    def add_backend(self, name: str) -> NginxHost:
        _check_name(name)
        b = len(self.backends) + 1
        host = self._host(name, NginxHost)
        host.data_ip = f"10.200.{b}.2"
        self._link(
            host,
            DataLink(
                self.svc, f"svc-b{b}", f"10.200.{b}.1/24", f"{name}-eth1", f"{host.data_ip}/24"
            ),
        )
        self.backends[name] = host
        return host

    def add_tenant(
        self, name: str, tenant_id: int, group: PpGroup, backends: list[NginxHost], clients: int = 1
    ) -> Tenant:
        """A tenant whose `clients` hosts reach its VIP (a load balancer over `backends`)
        through `group`, SNAT'd on the way."""
        if name in self.tenants:
            raise LabError(f"two tenants named {name!r}")
        if any(t.tenant_id == tenant_id for t in self.tenants.values()):
            raise LabError(f"two tenants with id {tenant_id}")
        if not backends:
            raise LabError(f"tenant {name}: needs at least one backend")
        k = len(self.tenants) + 1
        if k > 99:
            raise LabError("at most 99 tenants")
        tenant = Tenant(name, tenant_id, k, group, list(backends))
        for j in range(1, clients + 1):
            host = self._host(f"t{k}c{j}", TenantHost)
            host.tenant, host.data_ip = name, f"10.{k}.{j}.2"
            self._link(
                host,
                DataLink(
                    self.vsw,
                    f"vsw-c{k}x{j}",
                    f"10.{k}.{j}.1/24",
                    f"t{k}c{j}-eth1",
                    f"{host.data_ip}/24",
                ),
            )
            tenant.clients.append(host)
        self.tenants[name] = tenant
        return tenant

    def _link(self, host: LabHost, link: DataLink) -> None:
        self.net.addLink(host, link.router, intfName1=link.intf, intfName2=link.router_intf)
        host.data_links.append(link)

    # ---- bring-up -----------------------------------------------------------------------------

    def __enter__(self) -> LabNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, on_step=lambda msg: None) -> None:
        """Build the network and start every daemon; returns once FM leads and every PP group
        carries its initial members."""
        if self.etcd is None or not self.fms or not self.scgs or not self.groups:
            raise LabError("a lab needs etcd, an FM, an SC group and a PP group")
        self.net.build()
        self.mgmt.start([])
        self._configure()
        self.started = True
        on_step("network built")
        self.etcd.boot()
        self._write_sc_configs()
        _parallel(
            [lambda n=n: n.boot() for nodes in self.scgs.values() for n in nodes if n.autostart]
        )
        on_step(f"SC groups up: {', '.join(g for g, n in self.scgs.items() if n[0].autostart)}")
        first = [p for g in self.groups.values() for p in g.nodes[: g.initial]]
        _parallel([pp.boot for pp in first] + [b.boot for b in self.backends.values()])
        on_step(f"PP nodes up: {', '.join(p.name for p in first)}; nginx backends up")
        self._write_fm_configs()
        fms = list(self.fms.values())
        fms[0].boot()
        self.wait_fm(lambda s: s["leader"], 60, f"{fms[0].name} to lead")
        _parallel([fm.boot for fm in fms[1:]])
        for group in self.groups.values():
            gid = NEXTHOP_GROUP_BASE + list(self.groups).index(group.name) + 1
            group.bonding = EcmpGroup(group.name, self._sides(group), gid)
            for pp in group.nodes[: group.initial]:
                self.join(pp)
        self.health.start([self.vsw, self.svc])
        on_step(
            f"FM {fms[0].name} leads; ECMP groups: "
            + "; ".join(
                f"{g.name} = {', '.join(p.name for p in g.active)}" for g in self.groups.values()
            )
        )

    def _configure(self) -> None:
        for host in self.hosts.values():
            if host.mgmt_ip:
                host.address(f"{host.name}-eth0", f"{host.mgmt_ip}/16")
        for router in (self.vsw, self.svc):
            router.enable_routing(
                {f"{router.name}-p{pp.index}": pp.index for pp in self.pps.values()}
            )
        for host in self.hosts.values():
            for link in host.data_links:
                link.router.address(link.router_intf, link.router_cidr)
                host.address(link.intf, link.cidr)
                # A PP's neighbours receive frames its native XDP redirects: they need GRO.
                link.router.checksums_in_software(link.router_intf, gro=isinstance(host, PpHost))
                host.checksums_in_software(link.intf)
            if isinstance(host, PpHost):
                host.sysctl("net.ipv4.ip_forward=0")  # XDP forwards; the kernel must not
            elif host.data_links:
                host.sh("ip", "route", "add", "default", "via", host.data_links[0].gateway)
        for tenant in self.tenants.values():
            for c in tenant.clients:
                c.sysctl("net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1")
        for b in self.backends.values():
            b.sysctl("net.core.somaxconn=4096", "net.ipv4.tcp_max_syn_backlog=4096")

    def _sides(self, group: PpGroup) -> tuple[Side, Side]:
        tenants = [t for t in self.tenants.values() if t.group is group]
        return (
            Side(self.vsw, "172.16", tuple(f"{t.vip}/32" for t in tenants)),
            Side(self.svc, "172.17", tuple(f"{t.snat_ip}/32" for t in tenants)),
        )

    # ---- configuration files ----------------------------------------------------------------

    def _sc_tenants(self) -> list[dict]:
        home = next(iter(self.scgs))
        return [
            {
                "id": t.tenant_id,
                "chain": ["web", "nat"],
                "forward_nexthop": 2,
                "return_nexthop": 1,
                "home_scg": home,
                "idle_timeout_s": self.idle_timeout_s,
                "nfs": {
                    "web": {
                        "kind": "lb",
                        "vips": [
                            {
                                "addr": t.vip,
                                "port": SERVICE_PORT,
                                "protocol": "tcp",
                                "backends": [
                                    {"to": f"{b.data_ip}:{SERVICE_PORT}", "nexthop": 2}
                                    for b in t.backends
                                ],
                            }
                        ],
                    },
                    "nat": {
                        "kind": "snat",
                        "pool": [f"{t.snat_ip}:1024-65535"],
                        "sources": [t.client_net],
                    },
                },
            }
            for t in self.tenants.values()
        ]

    def _write_sc_configs(self) -> None:
        assert self.etcd is not None
        tenants = self._sc_tenants()
        for scg, nodes in self.scgs.items():
            for node in nodes:
                config = {
                    "node_id": node.name,
                    "listen": node.listen,
                    "scg": scg,
                    "metrics": node.metrics,
                    "tls": self._tls_section(node, "sc"),
                    "etcd": self._etcd_section(node, "sc"),
                    "lease_ttl_s": self.sc_lease_ttl_s,
                    "tenants": tenants,
                }
                node.config_path = node.workdir / "sc.yaml"
                node.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def static_rules(self, pp: PpHost) -> list[dict]:
        """PP `pp`'s tenant classification and its two next hops (its own ports' MACs)."""
        rules = []
        for t in self.tenants.values():
            if t.group.name != pp.group:
                continue
            for port, prefix in ((1, f"{t.vip}/32"), (2, f"{t.snat_ip}/32")):
                rules.append(
                    {
                        "table": "tenant_classify",
                        "action": "set_tenant",
                        "match": {"ingress_port": port, "vni": 0, "dst_addr": prefix},
                        "params": {"tenant_id": t.tenant_id},
                    }
                )
        for port, router in ((1, self.vsw), (2, self.svc)):
            rules.append(
                {
                    "table": "next_hop",
                    "match": {"nexthop_id": port},
                    "action": "set_next_hop",
                    "params": {
                        "port": port,
                        "smac": pp.mac(pp.data_ports[port - 1]),
                        "dmac": router.mac(f"{router.name}-p{pp.index}"),
                    },
                }
            )
        return rules

    def _write_fm_configs(self) -> None:
        assert self.etcd is not None
        nodes = []
        for pp in self.pps.values():
            rules = self.workdir / f"{pp.name}-rules.json"
            rules.write_text(json.dumps(self.static_rules(pp), indent=1))
            node = {"id": pp.name, "address": pp.p4runtime, "device_id": 1, "rules": str(rules)}
            config = pp.device_config()
            if config:
                path = self.workdir / f"{pp.name}-device-config.json"
                path.write_bytes(config)
                node["device_config"] = str(path)
            nodes.append(node)
        token = self.workdir / "fm-admin.token"
        token.write_text(self.fm_token + "\n")
        token.chmod(0o600)
        for fm in self.fms.values():
            config = {
                "fm_id": fm.name,
                "tls": self._tls_section(fm, "fm"),
                "etcd": self._etcd_section(fm, "fm"),
                "lease_ttl_s": self.fm_lease_ttl_s,
                "http": {"listen": fm.http, "token_file": str(token)},
                "pp_nodes": nodes,
            }
            fm.config_path = fm.workdir / "fm.yaml"
            fm.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # ---- the management network -------------------------------------------------------------

    def _tls_section(self, host: LabHost, role: str) -> dict[str, str]:
        f = host.tls(role)
        return {"ca": str(f.ca), "cert": str(f.cert), "key": str(f.key)}

    def _etcd_section(self, host: LabHost, role: str) -> dict:
        assert self.etcd is not None
        return {"endpoints": [self.etcd.endpoint], "tls": self._tls_section(host, role)}

    def https(self, address: str, path: str, timeout: float = 5.0, method: str = "GET",
              token: bool = False) -> bytes:  # fmt: skip
        """A request to https://address/path from the management network, with the lab's
        admin certificate (PP and SC metrics want one) and, with `token`, FM's bearer token
        (every FM route wants it). An answer other than 200 raises, with the server's error."""
        headers = {"Authorization": f"Bearer {self.fm_token}"} if token else {}
        req = urllib.request.Request(f"https://{address}{path}", method=method, headers=headers)
        try:
            with (
                self.ops.entered(),
                urllib.request.urlopen(req, timeout=timeout, context=self._admin_ssl) as resp,
            ):
                return resp.read()
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace").strip()
            raise LabError(f"{method} {path} on {address}: HTTP {err.code} {body}") from None

    def fm_call(self, fm: FmHost, method: str, path: str, timeout: float = 5.0) -> dict:
        """FM's admin API: `GET /status`, `POST /scale?...`; its JSON answer."""
        return json.loads(self.https(fm.http, path, timeout, method, token=True))

    def fm_leader(self) -> FmHost | None:
        for fm in self.fms.values():
            if not fm.running:
                continue
            with contextlib.suppress(Exception):
                if self.fm_call(fm, "GET", "/status", 2)["leader"]:
                    return fm
        return None

    def fm_status(self, fm: FmHost | None = None) -> dict:
        fm = fm or self.fm_leader()
        if fm is None:
            raise LabError("no FM leads")
        return self.fm_call(fm, "GET", "/status")

    def wait_fm(self, predicate, timeout: float, what: str) -> dict:
        """Wait until the leading FM's /status satisfies `predicate`; returns that status."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                status = self.fm_status()
                if predicate(status):
                    return status
            except Exception as exc:
                last = exc
            time.sleep(0.05)
        raise LabError(
            f"timed out after {timeout} s waiting for {what}"
            + (f" (last error: {last})" if last else "")
        )

    # ---- elasticity ---------------------------------------------------------------------------

    def join(self, pp: PpHost, timeout: float = 60, before=lambda: None) -> float:
        """Add a running PP node to its group once FM has programmed it (`before()` runs just
        before it joins); returns the time it joined (monotonic)."""
        self.wait_fm(
            lambda s: s["pp_nodes"].get(pp.name, {}).get("ready"),
            timeout,
            f"FM to program {pp.name}",
        )
        group = self.groups[pp.group]
        assert group.bonding is not None
        self.health.watch(pp, group.bonding.sides)
        before()
        group.bonding.add(pp)
        return time.monotonic()

    def _member_died(self, pp: PpHost, silent_s: float) -> None:
        group = self.groups[pp.group]
        if group.bonding is not None and group.bonding.remove(pp):
            self.removed.append((time.monotonic(), pp.name, silent_s))

    def _member_back(self, pp: PpHost) -> None:
        group = self.groups[pp.group]
        if group.bonding is not None:
            group.bonding.add(pp)
            self.restored.append((time.monotonic(), pp.name))

    def leave(self, pp: PpHost, drain_s: float, on_drained=lambda: None,
              poll_s: float = 0.2) -> dict:  # fmt: skip
        """Scale-in: drain `pp` (no new flows; established ones stay until they end or
        `drain_s` passes; `on_drained()` runs then), then stop it."""
        group = self.groups[pp.group]
        assert group.bonding is not None
        self.health.unwatch(pp)
        t0 = time.monotonic()
        group.bonding.drain(pp)
        pinned = group.bonding.pinned_connections(pp)
        while pinned and time.monotonic() - t0 < drain_s:
            time.sleep(poll_s)
            pinned = group.bonding.pinned_connections(pp)
        on_drained()
        group.bonding.unpin(pp)
        drained = time.monotonic()
        pp.shutdown()
        return {"node": pp.name, "drain_s": round(drained - t0, 3), "left_pinned": pinned}

    # ---- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        self.health.stop()
        order = [
            *(c for t in self.tenants.values() for c in t.clients),
            *self.fms.values(),
            *self.pps.values(),
            *(n for ns in self.scgs.values() for n in ns),
            *self.backends.values(),
            *([self.etcd] if self.etcd else []),
        ]
        _parallel([h.stop_daemons for h in order], raise_errors=False)
        with contextlib.suppress(Exception):
            self.net.stop()
        for host in self.hosts.values():  # what net.stop() did not reach (a failed build)
            with contextlib.suppress(Exception):
                host.terminate()
        self.spawner.close()
        if self._tmp is not None:
            with contextlib.suppress(Exception):
                self._tmp.cleanup()


def _check_name(name: str, length: int = 8) -> None:
    if not NAME.match(name) or len(name) > length:
        raise LabError(
            f"name {name!r}: expected a lower-case letter and up to {length - 1} "
            "more letters or digits (it names hosts and interfaces)"
        )


def _parallel(jobs, raise_errors: bool = True) -> None:
    if not jobs:
        return
    with ThreadPoolExecutor(min(8, len(jobs))) as pool:
        futures = [pool.submit(job) for job in jobs]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors and raise_errors:
        raise errors[0]


def remove_stale_labs() -> int:
    """Delete what labs killed outright left behind: their named namespaces (which hold their
    links) and their management bridges. Only labs whose process is gone are touched."""
    removed = 0
    for line in netns.ip("netns", "list").stdout.splitlines():
        m = re.match(r"^(csl(\d+)x\d+-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            netns.delete(m.group(1))
            removed += 1
    for line in netns.ip("-o", "link", "show", "type", "bridge").stdout.splitlines():
        m = re.match(r"^\d+: (b(\d+)x\d+):", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            netns.ip("link", "del", m.group(1), check=False)
            removed += 1
    return removed


def interactive(build: Callable[[LabNet], None]) -> None:
    """Build a lab with `build(net)`, start it and open Mininet's CLI on it (`exit` ends it):
    `sudo .venv/bin/python topologies/two_groups.py`."""
    from mininet.cli import CLI

    with LabNet() as net:
        build(net)
        net.start(on_step=print)
        for t in net.tenants.values():
            clients = ", ".join(c.name for c in t.clients)
            print(f"tenant {t.name}: {clients} → http://{t.vip}/ through {t.group.name}")
        print(f"logs under {net.workdir}; every host is also `ip netns exec {net.lab_id}-HOST`")
        CLI(net.net)
