"""Mininet hosts of a cyberstar lab, one class per role.

Every host is a Mininet `Host` (its own network namespace) that is also given a name in
`ip netns` (`<lab id>-<host>`), so `ip -n`, `ip netns exec` and `cyberstar.netns.entered` reach
it. Its daemons are started through `ip netns exec` as children that die with the lab
(`cyberstar.subprocs.tied_to_parent`), from one long-lived thread of the lab (`Spawner`):
the kernel signals a child when the *thread* that started it exits.

Roles: `EtcdHost`, `FmHost`, `ScHost`, `XdpPpHost` (`cyberstar pp serve`), `Bmv2PpHost`
(bmv2 wherever an XDP PP host can go), `NginxHost` (a real web server), `TenantHost` (runs the
load generator), `RouterHost` (the tenants' vSwitch and the services' gateway: ECMP routes to
the PP groups), `OpsHost` (the lab's own seat on the management network). Hosts only run
things; `cyberstar.lab.topo.LabNet` wires them together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from mininet.node import Host

from cyberstar import netns
from cyberstar.lab.certs import LabCerts
from cyberstar.lab.pp_process import CYBERSTAR
from cyberstar.lab.procs import LabError
from cyberstar.p4tools import compile_p4, guard_thrift, require_tools, switch_command
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.subprocs import tied_to_parent
from cyberstar.tls import TlsFiles

# mininet.log makes every logger created after it a MininetLogger, which prints everything
# a second time through a handler of its own: loggers are plain loggers again from here on.
logging.setLoggerClass(logging.Logger)

P4RUNTIME_PORT, PP_METRICS_PORT = 9559, 9100
FM_HTTP_PORT, SC_PORT, SC_METRICS_PORT, ETCD_PORT = 9300, 7100, 9200, 2379
BOOT_NICE = 5


class Spawner:
    """Starts every daemon of a lab from one thread that lives as long as the lab."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lab-spawn")

    def popen(self, cmd: list[str], log: Path) -> subprocess.Popen:
        def start() -> subprocess.Popen:
            with log.open("ab") as out:
                return subprocess.Popen(
                    tied_to_parent(cmd),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=REPO_ROOT,
                    start_new_session=True,
                )

        return self._pool.submit(start).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class Daemon:
    """A process running in a host: stopped with SIGTERM, killed with SIGKILL (a crash)."""

    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.proc.wait()

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def renice(self, nice: int) -> None:
        """Set the priority of every thread of the process (Linux nice values are per thread)."""
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass(frozen=True)
class DataLink:
    """A link from this host to a router: each end's interface and address (CIDR)."""

    router: LabHost
    router_intf: str
    router_cidr: str
    intf: str
    cidr: str

    @property
    def gateway(self) -> str:
        return self.router_cidr.split("/")[0]


class LabHost(Host):
    """A Mininet host with an `ip netns` name, a work directory and daemons."""

    def __init__(
        self,
        name: str,
        lab_id: str = "cslab",
        workdir: Path = Path("."),
        spawner: Spawner | None = None,
        **params,
    ) -> None:
        self.lab_id = lab_id
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawner = spawner or Spawner()
        self.daemons: dict[str, Daemon] = {}
        self.mgmt_ip: str | None = None
        self.certs: LabCerts | None = None  # the lab CA (`LabNet` sets it)
        self.data_links: list[DataLink] = []
        self.autostart = True  # booted by `LabNet.start()`
        super().__init__(name, **params)
        self.ns = f"{lab_id}-{name}"
        netns.delete(self.ns)
        subprocess.run(
            ["ip", "netns", "attach", self.ns, str(self.pid)], check=True, capture_output=True
        )

    # ---- configuration ------------------------------------------------------------------------

    def tls(self, role: str) -> TlsFiles:
        """This host's certificate from the lab CA, valid for its management address."""
        assert self.certs is not None and self.mgmt_ip is not None
        return self.certs.files(role, self.name, (self.mgmt_ip,))

    def tls_flags(self, role: str) -> list[str]:
        """`--tls-ca/--tls-cert/--tls-key` of this host's certificate."""
        f = self.tls(role)
        return ["--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key)]

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command in this host and wait for it (thread-safe, unlike Mininet's `cmd`)."""
        return netns.exec_in(self.ns, *cmd, check=check)

    def address(self, intf: str, cidr: str) -> None:
        self.sh("ip", "addr", "add", cidr, "dev", intf)
        self.sh("ip", "link", "set", intf, "up")

    def mac(self, intf: str) -> str:
        out = netns.ip("-o", "link", "show", intf, ns=self.ns).stdout
        return out.split("link/ether ")[1].split()[0]

    def sysctl(self, *settings: str) -> None:
        self.sh("sysctl", "-qw", *settings)

    def checksums_in_software(self, *intfs: str, gro: bool = False) -> None:
        """Full checksums on frames this host sends: a frame that crosses XDP loses the
        kernel's "checksum to be completed" mark (see the README on veth). GRO lets the
        interface receive frames redirected by native XDP on its peer."""
        for intf in intfs:
            args = ["tx", "off"] + (["gro", "on"] if gro else [])
            self.sh("ethtool", "-K", intf, *args, check=False)

    # ---- daemons ------------------------------------------------------------------------------

    def spawn(self, name: str, cmd: list[str], nice: int = 0,
              in_namespace: bool = False) -> Daemon:  # fmt: skip
        """Start `cmd` in this host (`in_namespace`: it enters the namespace itself); `nice`
        > 0 starts it at a lower priority (see `boot_daemon`)."""
        log = self.workdir / f"{name}.log"
        prefix = ["nice", "-n", str(nice)] if nice else []
        netns_exec = [] if in_namespace else ["ip", "netns", "exec", self.ns]
        proc = self.spawner.popen([*prefix, *netns_exec, *cmd], log)
        daemon = Daemon(name, proc, log)
        self.daemons[name] = daemon
        return daemon

    def boot_daemon(self, name: str, cmd: list[str], port: int, timeout: float,
                    in_namespace: bool = False) -> Daemon:  # fmt: skip
        """Start a daemon and wait until it listens on `port`. It starts at a lower priority
        and gets the normal one back once it listens: a machine that boots does not take CPU
        from the ones already serving (here they share two cores), as separate machines
        would not."""
        daemon = self.spawn(name, cmd, nice=BOOT_NICE, in_namespace=in_namespace)
        self.wait_listening(daemon, port, timeout)
        daemon.renice(0)
        return daemon

    def wait_listening(
        self, daemon: Daemon, port: int, timeout: float = 60.0, host: str | None = None
    ) -> None:
        """Wait until `daemon` accepts TCP connections on `host:port` (this host's management
        address by default), or fail with the end of its log."""
        host = host or self.mgmt_ip or "127.0.0.1"
        deadline = time.monotonic() + timeout
        while True:
            if not daemon.alive:
                raise LabError(
                    f"{self.name}: {daemon.name} exited with "
                    f"{daemon.proc.returncode}: {daemon.tail()}"
                )
            with netns.entered(self.ns):
                s = socket.socket()
            with s:
                s.settimeout(0.5)
                if s.connect_ex((host, port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise LabError(
                    f"{self.name}: {daemon.name} did not listen on {host}:{port} "
                    f"within {timeout} s; log {daemon.log}"
                )
            time.sleep(0.05)  # polling a port that is about to open

    def stop_daemons(self) -> None:
        for daemon in self.daemons.values():
            with contextlib.suppress(Exception):
                daemon.stop()

    def crash(self) -> None:
        """The machine dies: every daemon is killed outright, every interface goes down."""
        for daemon in self.daemons.values():
            with contextlib.suppress(Exception):
                daemon.kill()
        for intf in self.intfNames():
            if intf != "lo":
                self.sh("ip", "link", "set", intf, "down", check=False)

    def terminate(self) -> None:
        self.stop_daemons()
        netns.delete(self.ns)
        super().terminate()


class OpsHost(LabHost):
    """The lab's seat on the management network: the runner's threads enter this namespace
    to scrape metrics and call the FM admin API."""

    @contextlib.contextmanager
    def entered(self):
        with netns.entered(self.ns):
            yield


class EtcdHost(LabHost):
    """etcd, its data in memory: a disk busy with other work delays its writes by seconds,
    and every lease in the lab (SC membership, the FM leader) would expire. Clients and its
    peer port speak mutual TLS with the lab CA's certificates."""

    def boot(self) -> None:
        url = f"https://{self.mgmt_ip}:{ETCD_PORT}"
        peer = f"https://{self.mgmt_ip}:2380"
        tls = self.tls("etcd")
        shm = Path("/dev/shm")
        self.data_dir = (shm if shm.is_dir() else self.workdir) / f"{self.ns}-etcd"
        cmd = [
            "etcd",
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--log-level",
            "warn",
            *("--cert-file", str(tls.cert), "--key-file", str(tls.key)),
            *("--trusted-ca-file", str(tls.ca), "--client-cert-auth"),
            *("--peer-cert-file", str(tls.cert), "--peer-key-file", str(tls.key)),
            *("--peer-trusted-ca-file", str(tls.ca), "--peer-client-cert-auth"),
        ]
        self.wait_listening(self.spawn("etcd", cmd), ETCD_PORT, 30)

    @property
    def endpoint(self) -> str:
        return f"{self.mgmt_ip}:{ETCD_PORT}"

    def terminate(self) -> None:
        super().terminate()
        if getattr(self, "data_dir", None) is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class FmHost(LabHost):
    """`cyberstar fm serve` with the configuration the lab writes (`config`)."""

    config_path: Path | None = None

    def boot(self) -> None:
        assert self.config_path is not None
        cmd = [*CYBERSTAR, "-v", "fm", "serve", "--config", str(self.config_path)]
        self.boot_daemon("fm", cmd, FM_HTTP_PORT, 60)

    @property
    def http(self) -> str:
        return f"{self.mgmt_ip}:{FM_HTTP_PORT}"

    @property
    def running(self) -> bool:
        d = self.daemons.get("fm")
        return d is not None and d.alive


class ScHost(LabHost):
    """One `cyberstar sc serve` node of an SC group."""

    config_path: Path | None = None
    scg: str = ""

    def boot(self) -> None:
        assert self.config_path is not None
        cmd = [*CYBERSTAR, "-v", "sc", "serve", "--config", str(self.config_path)]
        self.boot_daemon("sc", cmd, SC_PORT, 60)

    @property
    def listen(self) -> str:
        return f"{self.mgmt_ip}:{SC_PORT}"

    @property
    def metrics(self) -> str:
        return f"{self.mgmt_ip}:{SC_METRICS_PORT}"

    @property
    def running(self) -> bool:
        d = self.daemons.get("sc")
        return d is not None and d.alive


class PpHost(LabHost):
    """A PP node: port 1 (`<name>-eth1`) faces the tenants' vSwitch, port 2 (`<name>-eth2`)
    the services' gateway; P4Runtime and metrics listen on the management address. FM
    programs it once it runs; the lab adds it to its group's ECMP route after that."""

    kind = ""
    group: str = ""
    index: int = 0  # 1-based, the node's number in the lab (its addresses derive from it)
    rate_policy: dict | None = None  # per-tenant rates (`pp serve --rate-policy`), XDP only

    @property
    def data_ports(self) -> tuple[str, str]:
        return f"{self.name}-eth1", f"{self.name}-eth2"

    @property
    def p4runtime(self) -> str:
        return f"{self.mgmt_ip}:{P4RUNTIME_PORT}"

    @property
    def metrics(self) -> str:
        return f"{self.mgmt_ip}:{PP_METRICS_PORT}"

    @property
    def running(self) -> bool:
        d = self.daemons.get("pp")
        return d is not None and d.alive

    def device_config(self) -> bytes:
        """What SetForwardingPipelineConfig carries for this kind of node."""
        return b""

    def boot(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """A clean stop (the agent detaches its programs)."""
        d = self.daemons.get("pp")
        if d is not None:
            d.stop()


class XdpPpHost(PpHost):
    """`cyberstar pp serve`: the generated XDP program on both ports, native mode."""

    kind = "xdp"
    mode = "native"

    def boot(self) -> None:
        for intf in self.data_ports:  # a crashed node comes back with its links down
            self.sh("ip", "link", "set", intf, "up")
        cmd = [
            *CYBERSTAR,
            "-v",
            "pp",
            "serve",
            "--iface",
            self.data_ports[0],
            "--iface",
            self.data_ports[1],
            "--grpc",
            self.p4runtime,
            "--metrics",
            self.metrics,
            "--device-id",
            "1",
            "--mode",
            self.mode,
            *self.tls_flags("pp"),
        ]
        if self.rate_policy is not None:
            path = self.workdir / "rates.yaml"
            path.write_text(yaml.safe_dump(self.rate_policy, sort_keys=False))
            cmd += ["--rate-policy", str(path)]
        self.boot_daemon("pp", cmd, P4RUNTIME_PORT, 120)


class Bmv2PpHost(PpHost):
    """bmv2 (`simple_switch_grpc`) running the generated P4 on both ports: the DPU-like PP
    node, programmed by FM with the same P4Info (and p4c's JSON as the device config). A
    sidecar (`cyberstar.lab.bmv2_metrics`) serves its counters as Prometheus metrics. Its
    host's kernel still answers ARP and the health checks for its addresses (bmv2 passes what
    no tenant claims to it, as the XDP program does)."""

    kind = "bmv2"

    def device_config(self) -> bytes:
        return compile_p4().json_path.read_bytes()

    def boot(self) -> None:
        for intf in self.data_ports:
            self.sh("ip", "link", "set", intf, "up")
        switch, _ = require_tools()
        guard_thrift(self.ns)
        ports = {1: self.data_ports[0], 2: self.data_ports[1]}
        cmd = switch_command(switch, self.ns, ports, self.p4runtime, 1, self.workdir,
                             PIPELINE.constants["CPU_PORT"])  # fmt: skip
        tls = self.tls("pp")
        cmd += ["--grpc-server-ssl", "--grpc-server-with-client-auth",
                "--grpc-server-cacert", str(tls.ca), "--grpc-server-cert", str(tls.cert),
                "--grpc-server-key", str(tls.key)]  # fmt: skip
        self.boot_daemon("pp", cmd, P4RUNTIME_PORT, 60, in_namespace=True)
        exporter = [*CYBERSTAR[:1], "-m", "cyberstar.lab.bmv2_metrics", "--grpc",
                    self.p4runtime, "--listen", self.metrics, *self.tls_flags("pp")]  # fmt: skip
        self.boot_daemon("metrics", exporter, PP_METRICS_PORT, 60)

    def shutdown(self) -> None:
        for d in self.daemons.values():
            d.stop()


NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile 200000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 100000; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_timeout 3600s;
  keepalive_requests 100000000;
  server {{
    listen {addr}:80 backlog=4096;
    location / {{ return 200 "{name}\\n"; }}
  }}
}}
"""


class NginxHost(LabHost):
    """A backend: Debian's nginx answering every request with its own name."""

    data_ip: str = ""

    def boot(self) -> None:
        conf = self.workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.workdir, addr=self.data_ip, name=self.name))
        daemon = self.spawn(
            "nginx",
            [
                "nginx",
                "-c",
                str(conf),
                "-p",
                str(self.workdir),
                "-e",
                str(self.workdir / "error.log"),
            ],
        )
        self.wait_listening(daemon, 80, 30, host=self.data_ip)


class TenantHost(LabHost):
    """A tenant's client machine: it runs the load generator (`cyberstar.lab.loadgen`)."""

    tenant: str = ""
    data_ip: str = ""

    def start_load(self, spec_path: Path) -> Daemon:
        return self.spawn(
            "loadgen", [*CYBERSTAR[:1], "-m", "cyberstar.lab.loadgen", str(spec_path)]
        )


class RouterHost(LabHost):
    """A Linux router: the tenants' vSwitch, or the services' gateway. It forwards, hashes
    multipath routes on the 5-tuple (the paper's ENI bonding over an ECMP group) and keeps
    the PP node each connection last went through in its conntrack mark (`ct mark` = the
    node's number), so that a draining PP keeps its established connections."""

    def enable_routing(self, pp_ports: dict[str, int]) -> None:
        """`pp_ports`: this router's interface to each PP node → the node's number."""
        self.sysctl(
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        )
        marks = "".join(f'    oifname "{intf}" ct mark set {n}\n' for intf, n in pp_ports.items())
        rules = (
            "table ip cyberstar_ecmp {\n"
            "  chain prerouting {\n"
            "    type filter hook prerouting priority mangle; policy accept;\n"
            "    ct state established,related meta mark set ct mark\n"
            "  }\n"
            "  chain postrouting {\n"
            "    type filter hook postrouting priority mangle; policy accept;\n"
            f"{marks}"
            "  }\n"
            "}\n"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise LabError(f"{self.name}: nft: {proc.stderr.strip()}")


_lab_ids = iter(range(1 << 30))
_lab_lock = threading.Lock()


def new_lab_id() -> str:
    """`csl<pid>x<n>`: unique on the machine while this process lives; `stale_labs` finds the
    leftovers of labs whose process is gone."""
    with _lab_lock:
        return f"csl{os.getpid()}x{next(_lab_ids)}"
