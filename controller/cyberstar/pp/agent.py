"""The PP agent: the XDP program on a host's interfaces, served over P4Runtime.

`cyberstar pp serve --iface IF ... --grpc ADDR --device-id N [--mode native|skb]`

Interfaces are ports 1, 2, … in the order given (or `N@IF` to choose). With `--netns NS` the
interfaces live in network namespace NS while gRPC and metrics listen in the agent's own.
On SIGTERM/SIGINT the agent detaches its programs; at start it removes any XDP program a
previous run left on its interfaces, so a restart begins clean.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cyberstar import netns
from cyberstar.errors import RuntimeFailure, UsageError
from cyberstar.metrics import Sample, serve_metrics
from cyberstar.p4rt.server import P4RuntimeServer, PacketIns, serve
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pp import MAX_PUNT_COALESCE_US, PUNT_COALESCE_US
from cyberstar.pp.device import FLOW_TABLE, Port, XdpDevice
from cyberstar.pp.quota import FlowQuota, parse_quotas
from cyberstar.pp.ratemanager import RateManager, RatePolicyFile
from cyberstar.timeline import mark
from cyberstar.tls import TlsFiles, require_local, server_ssl
from cyberstar.verbs import serve_until_signalled
from cyberstar.xdp.program import XdpProgram

log = logging.getLogger(__name__)
ETH_P_ALL = 0x0003
MAX_FLOW_TABLE = 1 << 28  # its 2N + 63 slots are u32-indexed; this is already ~43 GB of them
IDLE_TICK_S = 0.1  # the idle scan walks a slice of the tables this often
IDLE_MIN_SLICE = 8192  # entries, at least, per slice


@dataclass(frozen=True)
class PortSpec:
    number: int
    ifname: str


def parse_ports(specs: list[str]) -> list[PortSpec]:
    """`IF` (numbered 1, 2, … in order) or `N@IF`."""
    out, used = [], set()
    for i, spec in enumerate(specs, start=1):
        number, sep, ifname = spec.partition("@")
        if sep:
            if not number.isdigit():
                raise UsageError(f"--iface {spec!r}: expected IFNAME or PORT@IFNAME")
            port = int(number)
        else:
            port, ifname = i, spec
        if not 0 <= port < 511:
            raise UsageError(f"--iface {spec!r}: port must be 0..510")
        if port in used:
            raise UsageError(f"--iface {spec!r}: port {port} given twice")
        used.add(port)
        out.append(PortSpec(port, ifname))
    return out


class PpAgent:
    def __init__(
        self,
        ports: list[PortSpec],
        grpc_address: str,
        device_id: int,
        mode: str | None = None,
        ns: str | None = None,
        quota: FlowQuota | None = None,
        rate_policy: RatePolicyFile | None = None,
        tls: TlsFiles | None = None,
        flow_table_size: int | None = None,
        punt_coalesce_us: int = PUNT_COALESCE_US,
    ) -> None:
        self.ns = ns
        self.punt_coalesce_s = punt_coalesce_us / 1e6
        self.mode = mode
        sizes = {FLOW_TABLE: flow_table_size} if flow_table_size else {}
        self.prog = XdpProgram(table_sizes=sizes)
        self.prog.install_defaults()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._punted = PacketIns()  # PacketIns of the current perf-buffer poll
        self.modes: dict[str, str] = {}
        try:
            self.ports = self._open_ports(ports)
            self.device = XdpDevice(self.prog, self.ports, quota)
            self.server = P4RuntimeServer(self.device, device_id)
            self.device.run_in_namespace = self.in_namespace
            self.prog.open_punts(self._on_punt)
            self._punt_fds = self.prog.punt_fds()
            self.grpc = serve(self.server, grpc_address, tls)
            self.grpc.loop.call_soon_threadsafe(self._watch_punts)
        except BaseException:
            self.close()
            raise
        self._spawn(self._idle_loop, "idle-timeouts")
        self.rates: RateManager | None = None
        if rate_policy is not None:
            meter = self.prog.pipeline.meters[0]
            self.rates = RateManager(
                self.prog, rate_policy.policy, meter, set_meter=self.device.set_meter_cell
            )
            self.device.rate_policy = rate_policy.policy
            self._spawn(lambda: self._rate_loop(rate_policy.interval), "rate-policy")

    @contextmanager
    def in_namespace(self) -> Iterator[None]:
        if self.ns:
            with netns.entered(self.ns):
                yield
        else:
            yield

    def _open_ports(self, specs: list[PortSpec]) -> list[Port]:
        ports = []
        with self.in_namespace():
            for spec in specs:
                try:
                    ifindex = socket.if_nametoindex(spec.ifname)
                except OSError:
                    raise UsageError(_no_interface(spec.ifname, self.ns)) from None
                self.prog.detach_stale(spec.ifname)
                self.modes[spec.ifname] = self.prog.attach(spec.ifname, self.mode)
                self.prog.set_port(ifindex, spec.number)
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                sock.bind((spec.ifname, 0))
                ports.append(Port(spec.number, spec.ifname, ifindex, sock))
                log.info(
                    "port %d = %s (ifindex %d, XDP %s mode)",
                    spec.number,
                    spec.ifname,
                    ifindex,
                    self.modes[spec.ifname],
                )
        return ports

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _on_punt(self, punted) -> None:
        self._punted.append(self.device.packet_in(punted))

    def _watch_punts(self) -> None:
        """Read the punt buffer from the server's event loop whenever it is readable (and once
        now, for punts that came while it was not watched)."""
        for fd in self._punt_fds:
            self.grpc.loop.add_reader(fd, self._read_punts)
        self._read_punts()

    def _read_punts(self) -> None:
        """Every punt the buffer holds goes to the primary as one item: its stream sends them
        in PacketInBatch messages if its controller asked, else one by one. Read on the loop
        that sends them, a punt costs one wake-up of the agent, not a thread's and then the
        loop's.

        A read that found several punts (the node is busy: they queued while the last ones
        were sent) stops the watch for `punt_coalesce_s`, so that under load punts leave in
        fewer, larger messages: fewer wake-ups of the server's loop and the controller, each
        of which costs more than a punt's own work. A lone punt (a quiet node) is sent at once
        and does not delay the next one."""
        self.prog.read_punts()
        punted = self._punted
        if not punted:
            return
        mark("pp.punts_read")
        self._punted = PacketIns()
        self.server.publish(punted)
        mark("pp.packet_ins_queued")
        if len(punted) > 1 and self.punt_coalesce_s:
            loop = self.grpc.loop
            for fd in self._punt_fds:
                loop.remove_reader(fd)
            loop.call_later(self.punt_coalesce_s, self._watch_punts)

    def _idle_loop(self) -> None:
        """Walk the tables for idle entries a slice at a time, so that a full pass takes the
        time `idle_pass_s` allows; the walk takes at most half a core (it waits as long as it
        worked), so at millions of entries notifications may come late, never the node down.
        A pass that ends early (a small table) is not followed by the next until `idle_pass_s`
        after it began: the kernel's batch walk visits every bucket of the map, however few
        entries it holds, so back-to-back passes of a mostly empty table cost CPU for nothing."""
        began: float | None = None  # when the current pass began
        finished = False  # the current pass has ended; the next waits for its time
        while not self._stop.wait(IDLE_TICK_S):
            if not self.server.pipeline_set:
                continue
            pass_s = self.device.idle_pass_s()
            if pass_s is None:
                continue
            now = time.monotonic()
            if finished and began is not None and now - began < pass_s:
                continue
            if finished or began is None:
                began, finished = now, False
            budget = max(IDLE_MIN_SLICE, int(self.device.idle_entries() * IDLE_TICK_S / pass_s))
            passes = self.device.idle_stats()["idle_passes"]
            started = time.thread_time()
            try:
                for msg in self.device.idle_scan(budget):
                    self.server.notify(msg)
            except Exception:
                log.exception("idle-timeout scan failed")
            finished = self.device.idle_stats()["idle_passes"] != passes
            spent = time.thread_time() - started
            if spent > IDLE_TICK_S:
                self._stop.wait(spent - IDLE_TICK_S)

    def _rate_loop(self, interval: float) -> None:
        assert self.rates is not None
        while not self._stop.wait(interval):
            try:
                self.rates.tick()
            except Exception:
                log.exception("rate policy step failed")

    def metrics(self) -> list[Sample]:
        samples: list[Sample] = []
        for name, (packets, nbytes) in zip(
            self.prog.pipeline.verdicts, self.prog.counter("verdicts"), strict=True
        ):
            samples.append(("cyberstar_pp_packets_total", {"verdict": name}, packets))
            samples.append(("cyberstar_pp_bytes_total", {"verdict": name}, nbytes))
        for name, (packets, _) in zip(
            self.prog.pipeline.drop_reasons, self.prog.counter("drop_reasons"), strict=True
        ):
            if packets:
                samples.append(("cyberstar_pp_drops_total", {"reason": name}, packets))
        samples += [
            ("cyberstar_pp_packet_in_lost_total", {"where": "perf_buffer"}, self.prog.punts_lost),
            ("cyberstar_pp_packet_in_lost_total", {"where": "kernel"}, self.prog.punt_overflows()),
            ("cyberstar_pp_packet_in_lost_total", {"where": "stream"},
             self.server.stats["packet_in_dropped"]),
            ("cyberstar_pp_write_errors_total", {}, self.server.stats["write_errors"]),
            ("cyberstar_pp_packet_in_total", {}, self.server.stats["packet_in"]),
        ]  # fmt: skip
        samples += [(f"cyberstar_pp_{k}_total", {}, v) for k, v in self.device.stats.items()]
        samples += [(f"cyberstar_pp_{k}_total", {}, v) for k, v in self.device.idle_stats().items()]
        if self.rates is not None:
            for t, s in self.rates.policy.tenants.items():
                labels = {"tenant": str(t), "state": s.state.value}
                samples += [
                    ("cyberstar_pp_tenant_rate", labels, s.rate),
                    ("cyberstar_pp_tenant_credit", labels, s.credit),
                    ("cyberstar_pp_tenant_arrival_rate", labels, s.arrival),
                ]
        return samples + self._tenant_samples()

    def _tenant_samples(self) -> list[Sample]:
        """Packets and bytes per tenant and ingress port: the direct counters of the tenant
        classification entries, summed per tenant (port 1 and 2 tell the directions apart
        where the tenants' side and the services' side are different ports)."""
        per: dict[tuple[int, int], list[int]] = {}
        for entry, packets, nbytes in self.device.direct_counters("tenant_classify"):
            if entry.action != "set_tenant":
                continue
            key = (entry.params["tenant_id"], int(entry.match["ingress_port"]))
            total = per.setdefault(key, [0, 0])
            total[0] += packets
            total[1] += nbytes
        samples: list[Sample] = []
        for (tenant, port), (packets, nbytes) in sorted(per.items()):
            labels = {"tenant": str(tenant), "port": str(port)}
            samples.append(("cyberstar_pp_tenant_packets_total", labels, packets))
            samples.append(("cyberstar_pp_tenant_bytes_total", labels, nbytes))
        return samples

    def wait(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        serve_until_signalled(self._stop)

    def close(self) -> None:
        self._stop.set()
        if getattr(self, "grpc", None) is not None:
            self.grpc.stop(grace=1)
        with self.in_namespace():
            self.prog.detach_all()
        for port in getattr(self, "ports", []):
            if port.sock is not None:
                with contextlib.suppress(OSError):
                    port.sock.close()
        self.prog.close()


def _no_interface(ifname: str, ns: str | None) -> str:
    if ns:
        return f"no interface {ifname} in network namespace {ns} (`ip -n {ns} link` lists its own)"
    holders = [n for n in _namespaces() if _has_interface(n, ifname)]
    hint = (
        f"; it exists in network namespace {', '.join(holders)}: add --netns {holders[0]}"
        if holders
        else "; if it lives in a network namespace, add --netns NS"
    )
    return f"no interface {ifname} in this network namespace{hint}"


def _namespaces() -> list[str]:
    try:
        return sorted(p.name for p in Path("/run/netns").iterdir())
    except OSError:
        return []


def _has_interface(ns: str, ifname: str) -> bool:
    try:
        with netns.entered(ns):
            socket.if_nametoindex(ifname)
    except (OSError, netns.NetnsError):
        return False
    return True


def check_namespace(ns: str) -> None:
    """An unknown namespace is bad input (exit 2), said in words, not as an errno."""
    if not Path(f"/run/netns/{ns}").exists():
        known = ", ".join(_namespaces()) or "none"
        raise UsageError(f"no network namespace {ns!r} (known: {known}; `ip netns add {ns}`)")


def run_agent(
    ifaces: list[str],
    grpc_address: str,
    device_id: int,
    mode: str | None,
    ns: str | None,
    metrics: str | None,
    tls: TlsFiles | None,
    flow_quota: list[str] | None = None,
    rate_policy: RatePolicyFile | None = None,
    flow_table_size: int | None = None,
    punt_coalesce_us: int = PUNT_COALESCE_US,
) -> int:
    ports = parse_ports(ifaces)
    if flow_table_size is not None and not 1 <= flow_table_size <= MAX_FLOW_TABLE:
        raise UsageError(
            f"--flow-table-size {flow_table_size}: expected 1..{MAX_FLOW_TABLE} (the kernel "
            "array takes 160 bytes per entry when the node starts)"
        )
    if not 0 <= punt_coalesce_us <= MAX_PUNT_COALESCE_US:
        raise UsageError(
            f"--punt-coalesce-us {punt_coalesce_us}: expected 0..{MAX_PUNT_COALESCE_US} "
            "(0 sends every poll's punts at once)"
        )
    tenant_bits = PIPELINE.meta_field("tenant_id").width
    quota = parse_quotas(flow_quota or [], (1 << tenant_bits) - 1)
    if ns:
        check_namespace(ns)
    if tls is None:
        require_local(grpc_address, "P4Runtime")
        if metrics:
            require_local(metrics, "the metrics endpoint")
    else:
        tls.read()  # unreadable files are bad input (exit 2), before any program is loaded
    try:
        agent = PpAgent(
            ports, grpc_address, device_id, mode, ns, quota, rate_policy, tls, flow_table_size,
            punt_coalesce_us,
        )  # fmt: skip
    except OSError as exc:
        raise RuntimeFailure(str(exc)) from None
    try:
        if metrics:
            # Over TLS the metrics endpoint is HTTPS and wants a certificate of the CA too.
            serve_metrics(metrics, agent.metrics, server_ssl(tls) if tls else None)
        log.info(
            "PP node %d serving P4Runtime on %s (%s; %s)",
            device_id,
            grpc_address,
            "mutual TLS" if tls else "PLAINTEXT",
            ", ".join(f"{p.number}={p.ifname}/{agent.modes[p.ifname]}" for p in agent.ports),
        )
        agent.wait()
    finally:
        agent.close()
    return 0
