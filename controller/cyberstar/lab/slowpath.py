"""The slow-path lab: real TCP through an XDP PP node programmed by FM with rules from SC.

    client ns 10.1.0.2 ── c0|pp1 ─[ PP ns: `cyberstar pp serve` ]─ pp2|s0 ── server ns 10.2.0.2
                                                │ P4Runtime                       (and .3)
                               `cyberstar fm serve` ── gRPC ── SC groups (`cyberstar sc serve`)
                                                └────── etcd ──────┘

With `pps=N`, PP node i (0-based) has its own namespace, linked to the client by c<i> and to
the server by s<i>, gateway addresses 10.1.0.<1+10i> and 10.2.0.<1+10i>; client and server
route over all of them (multipath, hashed on ports), as an ECMP group of PP nodes would see.
`pp_kinds` says which nodes are XDP agents and which are bmv2 switches running the generated
P4 (`("xdp", "bmv2")`); FM programs both kinds the same way, over P4Runtime. A bmv2 node's
namespace kernel still answers ARP for its gateway addresses (bmv2 has no host stack; the
frames it would pass reach that kernel through the veth anyway) and forwards nothing.

With `offload={...}` (FM's `offload` settings but the pairs) a DPU stands in front of the one
XDP node, the host (paper §6.1): a bmv2 switch in its own namespace between the host and the
client and server, ports 1 (client side) and 2 (server side) facing the network, 3 and 4 the
host's pp1 and pp2. It holds the host's classification and next hops and a `handoff` table that
passes everything it does not process to the host (1→3, 2→4) and the host's output on (3→1,
4→2); FM offloads elephant flows into it.

    client ── c0|d1 ─[ DPU ns: bmv2 ]─ d2|s0 ── server
                        h1|   |h2
                        pp1   pp2  [ host ns: XDP PP ]

Tenant 7: clients 10.1.0.0/24 reach servers 10.2.0.0/24 through SNAT (pool 203.0.113.9), and
the web VIP 198.51.100.10:80 through a load balancer to 10.2.0.2:8080 and 10.2.0.3:8080.
Everything runs as processes on one machine; `close()` removes it all.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from cyberstar import netns
from cyberstar.lab.pp_process import CYBERSTAR, PpNode, start_pp_node
from cyberstar.lab.procs import free_port
from cyberstar.lab.sc import ScLab
from cyberstar.paths import REPO_ROOT
from cyberstar.subprocs import tied_to_parent

TENANT = 7
CLIENT_NET, SERVER_NET = "10.1.0.0/24", "10.2.0.0/24"
CLIENT_IP, GATEWAY_CLIENT, GATEWAY_SERVER = "10.1.0.2", "10.1.0.1", "10.2.0.1"
SERVERS = ("10.2.0.2", "10.2.0.3")
PUBLIC_IP, VIP, VIP_PORT, SERVER_PORT = "203.0.113.9", "198.51.100.10", 80, 8080
# Tenant 8 reaches one server through a two-port SNAT pool (to exhaust it); tenant 99 is
# classified by the PP but unknown to SC.
SMALL_TENANT, SMALL_SERVER, SMALL_PUBLIC_IP, SMALL_POOL_SIZE = 8, "10.2.0.4", "203.0.113.20", 2
UNKNOWN_TENANT, UNKNOWN_TENANT_SERVER = 99, "10.2.0.5"
FABRIC_VNI, FABRIC_NEXTHOP_BASE = 9000, 1000
ECHO_IDLE_S = 180  # the lab's servers close a connection idle this long
DPU_PORTS = ("d1", "d2", "h1", "h2")  # bmv2 ports 1-4: client side, server side, host's pp1, pp2


def tenant_config(idle_timeout_s: float, snat_pool: str) -> dict:
    return {
        "id": TENANT,
        "chain": ["web", "nat"],
        "forward_nexthop": 2,
        "return_nexthop": 1,
        "home_scg": "scg1",
        "idle_timeout_s": idle_timeout_s,
        "nfs": {
            "web": {
                "kind": "lb",
                "vips": [
                    {
                        "addr": VIP,
                        "port": VIP_PORT,
                        "protocol": "tcp",
                        "backends": [{"to": f"{s}:{SERVER_PORT}", "nexthop": 2} for s in SERVERS],
                    }
                ],
            },
            "nat": {"kind": "snat", "pool": [snat_pool], "sources": [CLIENT_NET]},
        },
    }


def small_tenant_config(idle_timeout_s: float) -> dict:
    return {
        "id": SMALL_TENANT,
        "chain": ["nat"],
        "forward_nexthop": 2,
        "return_nexthop": 1,
        "home_scg": "scg1",
        "idle_timeout_s": idle_timeout_s,
        "nfs": {"nat": {"kind": "snat", "sources": [CLIENT_NET],
                        "pool": [f"{SMALL_PUBLIC_IP}:30000-{30000 + SMALL_POOL_SIZE - 1}"]}},
    }  # fmt: skip


def gateway(first: str, index: int) -> str:
    """PP node `index`'s address on a side whose first PP node has `first` (10.x.0.1)."""
    a, b, c, d = first.split(".")
    return f"{a}.{b}.{c}.{int(d) + 10 * index}"


def mac_of(ifname: str, ns: str) -> str:
    return netns.ip("-o", "link", "show", ifname, ns=ns).stdout.split("link/ether ")[1].split()[0]


class SlowPathLab:
    def __init__(self, scgs: int = 1, nodes_per_scg: int = 3, idle_timeout_s: float = 30,
                 mode: str = "skb", workdir: Path | None = None, pps: int = 1,
                 pp_kinds: Sequence[str] | None = None,
                 offload: dict | None = None, extra_tenants: Sequence[dict] = (),
                 extra_rules: Callable[[SlowPathLab, int], list[dict]] | None = None,
                 public_net: str | None = None, fm_batch: dict | None = None) -> None:  # fmt: skip
        """`fm_batch` is FM's `batch` section (its defaults when None). `extra_tenants` are
        more SC tenant configurations; `extra_rules(lab, i)` gives more static entries for PP
        node i (benchmarks add a tenant behind a VXLAN next hop).
        `public_net` (a prefix outside 203.0.113.16/28) replaces tenant 7's one-address
        SNAT pool, PUBLIC_IP ports 20000-59999, by every address of the prefix, ports
        1024-65535: benchmarks need more than 40 000 connections."""
        self.pp_kinds = list(pp_kinds) if pp_kinds is not None else ["xdp"] * pps
        pps = len(self.pp_kinds)
        if offload is not None and self.pp_kinds != ["xdp"]:
            raise ValueError("a DPU stands in front of exactly one XDP PP node")
        self.offload = offload
        self.fm_batch = fm_batch
        # XDP_REDIRECT into a veth in native mode needs GRO on its peer, and bmv2 would then
        # capture coalesced frames larger than the MTU: the host runs in skb mode.
        mode = "skb" if offload is not None else mode
        self.dpu: PpNode | None = None
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="cyberstar-lab-")
        self.workdir = Path(workdir or self._tmp.name)
        pid = os.getpid()
        self.ns = {"client": f"cs-lc-{pid}", "pp": f"cs-lp-{pid}", "server": f"cs-ls-{pid}"}
        # one namespace per PP node; the first is also ns["pp"]
        self.pp_ns = [self.ns["pp"], *(f"cs-lp{i}-{pid}" for i in range(1, pps))]
        self.ns.update({f"pp{i}": name for i, name in enumerate(self.pp_ns) if i})
        if offload is not None:
            self.ns["dpu"] = f"cs-ld-{pid}"
        self.scgs = scgs
        self.nodes_per_scg = nodes_per_scg
        self.mode = mode
        self.public_net = public_net or f"{PUBLIC_IP}/32"
        pool = f"{public_net}:1024-65535" if public_net else f"{PUBLIC_IP}:20000-59999"
        tenants = [tenant_config(idle_timeout_s, pool), small_tenant_config(idle_timeout_s),
                   *extra_tenants]  # fmt: skip
        self.extra_rules = extra_rules
        self.sc = ScLab(tenants, workdir=self.workdir / "sc")
        self.pps: list[PpNode | None] = [None] * pps
        self.fms: dict[str, subprocess.Popen] = {}
        self.fm_http_ports: dict[str, int] = {}
        self.fm_token = secrets.token_hex(16)  # the admin API's bearer token (every FM)
        self._servers: list[threading.Thread] = []
        self._stop = threading.Event()
        # (client ip:port, source the server saw), one per connection, in arrival order
        self.accepted: list[tuple[str, tuple[str, int]]] = []
        self._lock = threading.Lock()

    # ---- bring-up ---------------------------------------------------------------------------

    def __enter__(self) -> SlowPathLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        (self.workdir / "sc").mkdir(parents=True, exist_ok=True)
        self._topology()
        self.sc.__enter__()
        for i in range(1, self.scgs + 1):
            self.sc.add_scg(f"scg{i}", self.nodes_per_scg)
        for i in range(len(self.pp_ns)):
            self.start_pp(index=i)
        if self.offload is not None:
            self.dpu = start_pp_node(
                "bmv2", self.ns["dpu"], list(DPU_PORTS), certs=self.sc.certs, name="dpu1"
            )
        self.start_fm("fm1")
        self._serve()

    def _topology(self) -> None:
        ns = self.ns
        for name in ns.values():
            netns.create(name)
        for i, pp_ns in enumerate(self.pp_ns):
            if self.offload is not None:
                netns.veth("c0", "d1", ns["client"], ns["dpu"])
                netns.veth("s0", "d2", ns["server"], ns["dpu"])
                netns.veth("h1", "pp1", ns["dpu"], pp_ns)
                netns.veth("h2", "pp2", ns["dpu"], pp_ns)
            else:
                netns.veth(f"c{i}", "pp1", ns["client"], pp_ns)
                netns.veth(f"s{i}", "pp2", ns["server"], pp_ns)
            netns.ip("addr", "add", f"{gateway(GATEWAY_CLIENT, i)}/24", "dev", "pp1", ns=pp_ns)
            netns.ip("addr", "add", f"{gateway(GATEWAY_SERVER, i)}/24", "dev", "pp2", ns=pp_ns)
            netns.exec_in(pp_ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
            for name, dev in ((ns["client"], f"c{i}"), (ns["server"], f"s{i}")):
                # Native XDP_REDIRECT into veth needs GRO on the peer; frames crossing XDP must
                # carry full checksums (see the README's note on veth).
                netns.exec_in(name, "ethtool", "-K", dev, "gro", "on", "tx", "off", check=False)
        netns.ip("addr", "add", f"{CLIENT_IP}/24", "dev", "c0", ns=ns["client"])
        for addr in (*SERVERS, SMALL_SERVER, UNKNOWN_TENANT_SERVER):
            netns.ip("addr", "add", f"{addr}/24", "dev", "s0", ns=ns["server"])
        for name in (ns["client"], ns["server"]):
            # Replies may come back through another PP node than the one a flow left by.
            netns.exec_in(name, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                          "net.ipv4.fib_multipath_hash_policy=1")  # fmt: skip
        self.route_via(range(len(self.pp_ns)))
        netns.exec_in(ns["client"], "sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999")

    def route_via(self, pps: range | list[int], side: str = "both") -> None:
        """Route the client's (and/or the server's) traffic over these PP nodes (0-based):
        one of them is a plain default route, several an ECMP multipath route."""
        sides = {"client": ("c", GATEWAY_CLIENT), "server": ("s", GATEWAY_SERVER)}
        for name in sides if side == "both" else (side,):
            prefix, gw = sides[name]
            hops = [("nexthop", "via", gateway(gw, i), "dev", f"{prefix}{i}", "onlink")
                    for i in pps]  # fmt: skip
            args = hops[0][1:] if len(hops) == 1 else [a for hop in hops for a in hop]
            netns.ip("route", "replace", "default", *args, ns=self.ns[name])

    def static_rules(self, index: int = 0) -> list[dict]:
        """PP node `index`'s classification and next hops (its own ports' MACs)."""
        ns, pp_ns = self.ns, self.pp_ns[index]
        pp1, pp2 = mac_of("pp1", pp_ns), mac_of("pp2", pp_ns)
        c0, s0 = mac_of(f"c{index}", ns["client"]), mac_of(f"s{index}", ns["server"])

        def classify(port: int, prefix: str, tenant: int = TENANT) -> dict:
            return {"table": "tenant_classify", "action": "set_tenant",
                    "match": {"ingress_port": port, "vni": 0, "dst_addr": prefix},
                    "params": {"tenant_id": tenant}}  # fmt: skip

        return [
            classify(1, SERVER_NET),
            classify(1, f"{VIP}/32"),
            classify(2, self.public_net),
            classify(1, f"{SMALL_SERVER}/32", SMALL_TENANT),
            classify(2, f"{SMALL_PUBLIC_IP}/32", SMALL_TENANT),
            classify(1, f"{UNKNOWN_TENANT_SERVER}/32", UNKNOWN_TENANT),
            {"table": "next_hop", "match": {"nexthop_id": 1}, "action": "set_next_hop",
             "params": {"port": 1, "smac": pp1, "dmac": c0}},
            {"table": "next_hop", "match": {"nexthop_id": 2}, "action": "set_next_hop",
             "params": {"port": 2, "smac": pp2, "dmac": s0}},
            *(self.extra_rules(self, index) if self.extra_rules else []),
        ]  # fmt: skip

    def dpu_rules(self) -> list[dict]:
        """The DPU's: the host's classification and next hops (its network ports have the
        host's numbers), and the hand-off of everything else to the host and back."""
        pairs = ((1, 3), (2, 4), (3, 1), (4, 2))
        handoff = [{"table": "handoff", "match": {"ingress_port": a}, "action": "hand_off",
                    "params": {"port": b}} for a, b in pairs]  # fmt: skip
        return self.static_rules(0) + handoff

    @property
    def pp(self) -> PpNode | None:
        """The first PP node."""
        return self.pps[0]

    def start_pp(self, address: str | None = None, index: int = 0) -> None:
        self.pps[index] = start_pp_node(self.pp_kinds[index], self.pp_ns[index], ["pp1", "pp2"],
                                        mode=self.mode, address=address, certs=self.sc.certs,
                                        name=f"pp{index + 1}")  # fmt: skip

    def restart_pp(self, index: int = 0) -> None:
        """Stop a PP node (its tables go with it) and start a new one at the same address."""
        node = self.pps[index]
        assert node is not None
        node.stop()
        self.start_pp(node.address, index)

    def fm_config(self, fm_id: str) -> Path:
        assert self.sc.etcd is not None
        nodes = []
        for i, node in enumerate(self.pps):
            assert node is not None
            rules = self.workdir / f"pp{i + 1}-rules.json"
            rules.write_text(json.dumps(self.static_rules(i)))
            nodes.append({"id": f"pp{i + 1}", "address": node.address, "device_id": 1,
                          "rules": rules.name})  # fmt: skip
            if node.device_config:
                config_path = self.workdir / f"pp{i + 1}-device-config.json"
                config_path.write_bytes(node.device_config)
                nodes[-1]["device_config"] = config_path.name
        token = self.workdir / "fm-admin.token"
        token.write_text(self.fm_token + "\n")
        token.chmod(0o600)
        config = {
            "fm_id": fm_id,
            "tls": self.sc.certs.section("fm", fm_id),
            "etcd": self.sc.etcd.section("fm", fm_id),
            "lease_ttl_s": 2,
            "http": {
                "listen": f"127.0.0.1:{self.fm_http_ports.setdefault(fm_id, free_port())}",
                "token_file": token.name,
            },
            "pp_nodes": nodes,
        }
        if self.fm_batch:
            config["batch"] = dict(self.fm_batch)
        if len(self.pps) > 1:
            config["fabric"] = self.fabric()
        if self.dpu is not None:
            rules = self.workdir / "dpu1-rules.json"
            rules.write_text(json.dumps(self.dpu_rules()))
            device = self.workdir / "dpu1-device-config.json"
            device.write_bytes(self.dpu.device_config)
            nodes.append({"id": "dpu1", "address": self.dpu.address, "device_id": 1,
                          "rules": rules.name, "device_config": device.name})  # fmt: skip
            config["offload"] = {"pairs": [{"host": "pp1", "dpu": "dpu1"}], **self.offload}
        path = self.workdir / f"{fm_id}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def fabric(self) -> dict:
        """VXLAN next hops between the PP nodes (§5.2), over their server-side links as the
        underlay: FM installs next hop FABRIC_NEXTHOP_BASE + j on every node but node j."""
        return {
            "vni": FABRIC_VNI,
            "nexthop_base": FABRIC_NEXTHOP_BASE,
            "nodes": [{"id": f"pp{i + 1}", "port": 2, "mac": mac_of("pp2", pp_ns),
                       "address": gateway(GATEWAY_SERVER, i),
                       "gateway_mac": mac_of(f"s{i}", self.ns["server"])}
                      for i, pp_ns in enumerate(self.pp_ns)],
        }  # fmt: skip

    def start_fm(self, fm_id: str) -> subprocess.Popen:
        log = (self.workdir / f"{fm_id}.log").open("w")
        cmd = [*CYBERSTAR, "-v", "fm", "serve", "--config", str(self.fm_config(fm_id))]
        proc = subprocess.Popen(
            tied_to_parent(cmd),
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )  # fmt: skip
        self.fms[fm_id] = proc
        return proc

    def kill_fm(self, fm_id: str) -> None:
        proc = self.fms.pop(fm_id)
        proc.kill()
        proc.wait(10)

    def fm_request(self, fm_id: str, method: str, path: str, token: str | None = "",
                   timeout: float = 60) -> tuple[int, dict]:  # fmt: skip
        """An FM admin call over HTTPS (the lab CA's): (status, decoded JSON body). `token`:
        the lab's ("" ) or this one (None: no Authorization header)."""
        status, body = self._fm_call(fm_id, method, path, token, timeout)
        return status, json.loads(body or b"{}")

    def fm_metrics(self, fm_id: str, timeout: float = 60) -> str:
        """FM's Prometheus text (`/metrics`, with the lab's token)."""
        status, body = self._fm_call(fm_id, "GET", "/metrics", "", timeout)
        if status != 200:
            raise RuntimeError(f"GET /metrics on {fm_id}: {status} {body!r}")
        return body.decode()

    def _fm_call(self, fm_id: str, method: str, path: str, token: str | None,
                 timeout: float) -> tuple[int, bytes]:  # fmt: skip
        url = f"https://127.0.0.1:{self.fm_http_ports[fm_id]}{path}"
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.fm_token}"
        req = urllib.request.Request(url, method=method, headers=headers)
        context = ssl.create_default_context(cafile=str(self.sc.certs.ca.cert_path))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def fm_get(self, fm_id: str, path: str, timeout: float = 60) -> dict:
        """GET an FM admin path (`/status`; `/metrics` is `fm_metrics`) as JSON."""
        status, body = self.fm_request(fm_id, "GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} on {fm_id}: {status} {body}")
        return body

    def fm_post(self, fm_id: str, path: str, timeout: float = 60) -> dict:
        """POST an FM admin path (`/scale?...`) and decode its JSON."""
        status, body = self.fm_request(fm_id, "POST", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"POST {path} on {fm_id}: {status} {body}")
        return body

    # ---- traffic ----------------------------------------------------------------------------

    def _serve(self) -> None:
        for addr in (*SERVERS, SMALL_SERVER, UNKNOWN_TENANT_SERVER):
            with netns.entered(self.ns["server"]):
                srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((addr, SERVER_PORT))
            srv.listen(1024)
            srv.settimeout(0.2)
            t = threading.Thread(target=self._accept, args=(srv,), daemon=True)
            t.start()
            self._servers.append(t)

    def _accept(self, srv: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._echo, args=(conn, peer), daemon=True).start()
        srv.close()

    def _echo(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:
            # Tests hold connections open across PP restarts, which take tens of seconds on a
            # busy 2-core host (the XDP program is compiled anew); the echo must outlive them.
            conn.settimeout(ECHO_IDLE_S)
            try:
                while data := conn.recv(4096):
                    # The client says who it is; remember what source the server saw for it.
                    if data.startswith(b"hello "):
                        with self._lock:
                            self.accepted.append((data[6:].decode().strip(), peer))
                    conn.sendall(b"echo:" + data)
            except OSError:
                pass

    def client_socket(self) -> socket.socket:
        with netns.entered(self.ns["client"]):
            return socket.socket()

    def connect(self, dst: str, port: int, timeout: float = 10.0) -> socket.socket:
        s = self.client_socket()
        s.settimeout(timeout)
        s.connect((dst, port))
        me = f"{s.getsockname()[0]}:{s.getsockname()[1]}"
        s.sendall(f"hello {me}\n".encode())
        if not s.recv(100).startswith(b"echo:hello"):
            raise ConnectionError(f"bad echo on {me}")
        return s

    def close(self) -> None:
        self._stop.set()
        for proc in self.fms.values():
            with contextlib.suppress(Exception):
                proc.terminate()
                proc.wait(10)
        for node in [*self.pps, self.dpu]:
            if node is not None:
                with contextlib.suppress(Exception):
                    node.stop()
        with contextlib.suppress(Exception):
            self.sc.close()
        for name in self.ns.values():
            netns.delete(name)
        if self._tmp is not None:
            with contextlib.suppress(Exception):
                self._tmp.cleanup()
