#!/usr/bin/env python3
"""New TCP connections per second through cyberstar's slow path, against Linux nftables SNAT
and plain routing, with the same endpoints in the same script.

Endpoints: nginx (one worker per `--server-cpus` CPU, pinned) answers `200 ok` and closes; the
load generator is `bench/cps_client.c` (built with gcc, pinned to `--client-cpus`), `--threads`
threads, each connection from a source address and port never used before in the run (128
client addresses x a port range per run), so every connection is a new 5-tuple: cyberstar
punts its first packet, asks SC, writes rules and re-injects it.

Three middles between the same client and server namespaces:
* `routing`: a Linux router, no NAT: the ceiling of this harness on this machine;
* `nftables`: the router with an nftables `snat` rule (conntrack) to the same public pool;
* `cyberstar`: the XDP PP node, FM and an SC group of three (SNAT to the same pool).
For each: connections per second at saturation, the client's connect() latency (SYN sent to
SYN-ACK received) and whole-connection latency, CPU per connection of every process involved,
from /proc (the machine's busy time too, softirq included), and the connect() latency of a
lone connection (`lone`: one client thread at `LONE_CPS`, so no connection waits for another:
the path's own latency). For cyberstar also: SC requests counted by the SC head and by FM
(asserted equal to the connections the client made, so no connection was answered from a
cache), FM's PacketIn-arrival → PacketOut-sent latency and where a batch's time goes (each run,
the lone one included, whose CPU per connection above the daemons' idle rate is what one batch
costs whatever its size), a paced run at half the saturating rate (first-packet latency there),
and the rule requests per second FM + SC sustain when a flood of new flows from the SNAT NF's
own sources hits the PP. With two thread counts or more, `batch_cost` splits a batch's CPU
over PP + FM + SC into a fixed part and a part per first packet (a least-squares line over the
saturating runs, `cyberstar/lab/batch_cost.py`) and prints the fixed part per batch the 300 µs
floor on a connection's whole life would allow at each run's batch size.

A connection's slow-path work does not end with its first packet: its rules idle out
(`IDLE_TIMEOUT_S`, SC's default 30 s), the PP notifies FM, FM deletes them and releases the
connection in SC. After each saturating run the bench waits until FM has expired and released
every rule the run wrote, and prints the daemons' CPU over that wait above their idle rate
(measured before any traffic) as `teardown`, and creation + teardown as
`cpu_us_per_connection_lifecycle_pp_fm_sc`. Every run (and the half-load run) is drained
before the next begins, so none is charged with an earlier run's teardown.

With `--repeat N`, every saturating run is made N times in a row and the run with the median
rate is reported, with every run's rate beside it (`cps_runs`): on a small VM the spread
between runs is larger than many changes.

With `--timeline` the daemons write a timestamp at each hop of a first packet
(`cyberstar/timeline.py`: the PP agent reading the punt and queueing the PacketIn, FM receiving
it, starting the batch, asking SC, the SC head receiving the call, the middle and the tail
receiving the chain update, the tail answering, FM receiving the answer, queueing the
StreamWrite, the PP receiving it, applying the Write, sending the packet, FM receiving the
result), and `lone.timeline` gives each event's P50 and P90 after the punt was read over the
lone run's connections (`lab/hops.py`): where a first packet's latency goes; each saturating
run and the half-load run get `install_timeline`, the steps of FM's StreamWrites (to the PP,
the Write applied, the packets sent, the result back to FM): where a batch's install goes. The
marks cost the daemons a formatted line each (buffered), so leave the flag off for the rates.

Goals (issue 9): cyberstar's cps >= nftables' (floor 0.25x); <= 300 µs of CPU per new
connection over PP agent + FM + SC group; connect P99 < 5 ms at half the saturating load.

Run as root from the repository: .venv/bin/python bench/slowpath.py [--seconds S] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cyberstar import netns, packets, timeline
from cyberstar.lab import batch_cost, hops
from cyberstar.lab.cpu import CpuMeter
from cyberstar.lab.endpoints import Nginx, run_client
from cyberstar.lab.profile import Profiler
from cyberstar.lab.slowpath import SERVERS, SlowPathLab, mac_of
from cyberstar.lab.wait import wait_until
from cyberstar.sc.client import ScClient
from cyberstar.tls import TlsFiles

SERVER, HTTP_PORT = SERVERS[0], 80
PUBLIC_NET = "203.0.113.64/26"  # the SNAT pool of both cyberstar and nftables
PUBLIC_RANGE = "203.0.113.64-203.0.113.127"
CLIENT_FIRST, CLIENT_COUNT = "10.1.0.100", 128  # the client's source addresses
PORT_BLOCK = 7000  # source ports per run: runs never reuse a 5-tuple
IDLE_TIMEOUT_S = 30  # the rules' idle timeout in the lab (SC's default)
LIFECYCLE_FLOOR_US = 300  # issue 9: PP + FM + SC CPU over a connection's whole life
# Waiting for a run's rules to expire: the timeout, up to a pass of the PP's idle scan (a
# quarter of it) twice, FM's deletes and SC's releases.
DRAIN_LIMIT_S = IDLE_TIMEOUT_S * 1.5 + 30


class Sources:
    """Disjoint source-port ranges, one per load-generator run."""

    def __init__(self) -> None:
        self.next = 1024

    def take(self) -> tuple[int, int]:
        lo = self.next
        self.next += PORT_BLOCK
        if self.next > 65535:
            raise SystemExit("too many runs for the source port space: fewer runs")
        return lo, lo + PORT_BLOCK - 1


def add_client_addresses(ns: str, dev: str) -> None:
    a, b, c, d = (int(x) for x in CLIENT_FIRST.split("."))
    cmds = "".join(f"addr add {a}.{b}.{c}.{d + i}/24 dev {dev}\n" for i in range(CLIENT_COUNT))
    subprocess.run(["ip", "-n", ns, "-b", "-"], input=cmds, text=True, check=True)


def load(args, ns: str, sources: Sources, threads: int, rate: float = 0,
         seconds: float | None = None) -> dict:  # fmt: skip
    return run_client(ns, args.client_cpus, SERVER, HTTP_PORT, threads,
                      seconds or args.seconds, (CLIENT_FIRST, CLIENT_COUNT), sources.take(),
                      rate)  # fmt: skip


def summary(run: dict, cpu: CpuMeter) -> dict:
    per_conn = cpu.per_unit(run["connections"])
    return {
        "cps": round(run["cps"]),
        "connections": run["connections"],
        "failed": run["attempts"] - run["connections"],
        "connect_us": run["connect_us"],
        "total_us": run["total_us"],
        "client_threads": run["threads"],
        "cpu_us_per_connection": {
            **per_conn,
            "client": round(run["cpu_s"] * 1e6 / max(run["connections"], 1), 1),
        },
        "cores_busy": cpu.utilisation(),
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median rate (the lower middle of an even count), with every run's."""
    chosen = dict(sorted(runs, key=lambda r: r["cps"])[(len(runs) - 1) // 2])
    chosen["cps_runs"] = [r["cps"] for r in runs]
    return chosen


def server_cpus(args) -> list[int]:
    return [int(c) for c in args.server_cpus.split(",")]


# ---- the Linux router: plain routing and nftables SNAT -------------------------------------


def bench_router(args, nat: bool) -> dict:
    sources = Sources()
    with netns.line("n" if nat else "r", ports=("r1", "r2")) as line:
        netns.exec_in(line.middle, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        add_client_addresses(line.client, "c0")
        if nat:
            ruleset = (
                "table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
                f'  oifname "r2" ip saddr 10.1.0.0/24 ip protocol tcp '
                f"snat to {PUBLIC_RANGE}:1024-65535\n }}\n}}\n"
            )
            subprocess.run(["ip", "netns", "exec", line.middle, "nft", "-f", "-"],
                           input=ruleset, text=True, check=True)  # fmt: skip
        with Nginx(line.server, SERVER, HTTP_PORT, server_cpus(args)) as nginx, \
                conntrack_room(CONNTRACK_MAX if nat else None):  # fmt: skip
            load(args, line.client, sources, threads=1, seconds=0.5)  # warm up (ARP, caches)
            out: dict = {}
            for threads in args.threads:
                runs = []
                for _ in range(args.repeat):
                    if nat:  # every run starts from an empty table, as the first one did
                        netns.exec_in(line.middle, "conntrack", "-F")
                    cpu = CpuMeter({"nginx": nginx.pids()})
                    cpu.start()
                    run = load(args, line.client, sources, threads)
                    cpu.stop()
                    runs.append(summary(run, cpu))
                out[f"threads_{threads}"] = median_run(runs)
            if nat:  # as every run does: the saturating runs' entries are not the lone one's
                netns.exec_in(line.middle, "conntrack", "-F")
            out["lone"] = {"connect_us": lone(args, line.client, sources)["connect_us"]}
            if nat:
                out["conntrack_entries"] = _conntrack_count(line.middle)
            return out


# conntrack must not be the limit: every connection leaves an entry (TIME_WAIT, 120 s), and a
# run of 5 s at 40 000 connections/s leaves 200 000. The limit is the host's (a network
# namespace cannot raise it), 262 144 by default here; a full table drops new connections.
CONNTRACK_MAX = 4_000_000
LONE_CPS = 100  # the lone-connection run: 10 ms apart, far longer than one takes
_CONNTRACK_MAX_PATH = Path("/proc/sys/net/netfilter/nf_conntrack_max")


@contextlib.contextmanager
def conntrack_room(entries: int | None):
    """The host's conntrack limit raised to `entries` while the block runs (None: unchanged)."""
    before = _CONNTRACK_MAX_PATH.read_text().strip() if entries else None
    if entries:
        _CONNTRACK_MAX_PATH.write_text(f"{max(entries, int(before))}\n")
    try:
        yield
    finally:
        if before is not None:
            _CONNTRACK_MAX_PATH.write_text(before + "\n")


def _conntrack_count(ns: str) -> int | None:
    proc = netns.exec_in(ns, "conntrack", "-C", check=False)
    return int(proc.stdout.strip()) if proc.stdout.strip().isdigit() else None


# ---- cyberstar ---------------------------------------------------------------------------


async def sc_requests(address: str, tls: TlsFiles) -> int:
    async with ScClient(address, tls) as client:
        return (await client.inspect()).counters.get("requests", 0)


def sc_head(lab: SlowPathLab) -> str:
    """The address of scg1's chain head (the node FM sends Compute to), as the nodes say."""

    async def role(address: str) -> str:
        async with ScClient(address, lab.sc.client_tls) as client:
            return (await client.inspect()).role

    for node in lab.sc.nodes.values():
        if asyncio.run(role(node.address)) in ("head", "single"):
            return node.address
    raise SystemExit("scg1 has no head")


def blast(ns: str, ifname: str, dst_mac: str, seconds: float, sent) -> None:
    """Frames of ever new flows from inside the SNAT NF's sources (10.1.0.0/24) into the PP."""
    with netns.entered(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((ifname, 0))
    src_mac = "02:00:00:00:00:0a"
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        host, port = divmod(n, 64000)
        frame = packets.tcp_frame(src_mac, dst_mac, f"10.1.0.{2 + host % 250}", SERVER,
                                  1024 + port, 9)  # fmt: skip
        try:
            s.send(frame)
            n += 1
        except OSError:
            time.sleep(0.0005)  # the veth queue is full: let the PP drain it
    sent.value = n


def bench_cyberstar(args) -> dict:
    sources = Sources()
    if args.timeline:
        os.environ[timeline.ENV] = tempfile.mkdtemp(prefix="cyberstar-timeline-")
    asked = {"max_in_flight": args.fm_in_flight, "max_delay_ms": args.fm_max_delay_ms}
    fm_batch = {k: v for k, v in asked.items() if v is not None}
    with SlowPathLab(scgs=1, nodes_per_scg=3, mode="native", public_net=PUBLIC_NET,
                     idle_timeout_s=IDLE_TIMEOUT_S, fm_batch=fm_batch) as lab:  # fmt: skip
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 60, "fm1 to lead")
        add_client_addresses(lab.ns["client"], "c0")
        assert lab.pp is not None and lab.sc.etcd is not None
        daemons = {
            "pp_agent": [lab.pp.proc.pid],
            "fm": [lab.fms["fm1"].pid],
            "sc_group": [n.proc.pid for n in lab.sc.nodes.values() if n.proc is not None],
            "etcd": [lab.sc.etcd.proc.pid],
        }
        out: dict = {"idle_timeout_s": IDLE_TIMEOUT_S, "fm_batch": fm_batch or "FM defaults"}
        # With no rules and no traffic the daemons still use some CPU (timers, leases):
        # subtracted from the teardown windows, which last tens of seconds.
        idle = CpuMeter(daemons)
        idle.start()
        time.sleep(5)
        idle.stop()
        idle_rate = {k: v / idle.wall_s for k, v in idle.used.items()}
        out["idle_cpu_ms_per_s"] = {k: round(v * 1e3, 1) for k, v in idle_rate.items()}
        with Nginx(lab.ns["server"], SERVER, HTTP_PORT, server_cpus(args)) as nginx:
            before = fm_counters(lab)
            warm = load(args, lab.ns["client"], sources, threads=1, seconds=0.5)
            if not warm["connections"]:
                raise SystemExit(f"no connection through cyberstar: {warm}; see {lab.workdir}")
            drained(lab, before)  # no run is charged with an earlier one's teardown
            windows: dict[str, tuple[float, float]] = {}
            for i, threads in enumerate(args.threads):
                runs = []
                started = time.monotonic()
                for r in range(args.repeat):
                    last = i == len(args.threads) - 1 and r == 0
                    profile = args.profile if last else None
                    cpu = CpuMeter({**daemons, "nginx": nginx.pids()})
                    before = fm_counters(lab)
                    run = saturate(args, lab, sources, threads, cpu, profile)
                    run["teardown"] = teardown(lab, daemons, idle_rate, before, run)
                    runs.append(run)
                out[f"threads_{threads}"] = median_run(runs)
                windows[f"threads_{threads}"] = (started, time.monotonic())
            best = max(r["cps"] for k, r in out.items() if k.startswith("threads_"))
            before = fm_counters(lab)
            lone_start = time.monotonic()
            out["lone"] = lone_cyberstar(args, lab, sources, daemons, idle_rate)
            lone_end = time.monotonic()
            out["half_load"] = half_load(args, lab, sources, best)
            windows["half_load"] = (lone_end, time.monotonic())
            drained(lab, before)
            out["batch_cost"] = batch_cost_summary(out)
        out["flood"] = flood(args, lab, CpuMeter(daemons))
    if args.timeline:  # the daemons have stopped: their timeline files are complete
        directory = Path(os.environ.pop(timeline.ENV))
        events = hops.read_events(directory, min(s for s, _ in windows.values()), time.monotonic())
        out["lone"]["timeline"] = hops.timeline(hops.within(events, lone_start, lone_end))
        for key, (start, end) in windows.items():
            out[key]["install_timeline"] = hops.stream_writes(hops.within(events, start, end))
        shutil.rmtree(directory, ignore_errors=True)
    return out


def saturate(args, lab: SlowPathLab, sources: Sources, threads: int, cpu: CpuMeter,
             profile: Path | None) -> dict:  # fmt: skip
    """One closed-loop run of `threads` client threads: cps, latencies, CPU per connection,
    SC requests (asserted one per connection), FM's first-packet latency."""
    head = sc_head(lab)
    sc_before = asyncio.run(sc_requests(head, lab.sc.client_tls))
    before = lab.fm_get("fm1", "/status")
    fm_before = before["slow_path"]
    profiler = None
    if profile:
        assert lab.pp is not None
        profiler = Profiler(profile / f"threads_{threads}", profiled_pids(lab), args.seconds)
        profiler.start()
    cpu.start()
    t0 = time.monotonic()
    run = load(args, lab.ns["client"], sources, threads)
    cpu.stop()
    out = summary(run, cpu)
    if profiler is not None:
        out["profile"] = {"dir": str(profiler.out_dir), "top": profiler.finish()}
    per = out["cpu_us_per_connection"]
    out["cpu_us_per_connection_pp_fm_sc"] = round(per["pp_agent"] + per["fm"] + per["sc_group"], 1)
    time.sleep(0.5)  # a timed-out connection's SC request may still be in flight
    status = lab.fm_get("fm1", f"/status?since={t0}")
    fm = {k: v - fm_before.get(k, 0) for k, v in status["slow_path"].items()}
    out["sc_requests_at_sc_head"] = asyncio.run(sc_requests(head, lab.sc.client_tls)) - sc_before
    out["sc_requests_from_fm"] = fm.get("sc_requests", 0)
    # Every connection a new 5-tuple: one SC request each, none answered from a cache.
    out["every_connection_asked_sc"] = (
        out["sc_requests_at_sc_head"] == run["attempts"] == out["sc_requests_from_fm"]
    )
    out.update(fm_batches(before, status))
    return out


def batch_cost_summary(out: dict) -> dict | None:
    """A batch's CPU over PP + FM + SC split into its fixed part and its part per first packet
    (`batch_cost.fit` over the saturating runs, at least two thread counts), the fit's value
    beside each run's, and the lone run's batch of one beside the fit's value for it (the
    fixed part under load against a batch alone, every hop a wake-up after 10 ms idle); for
    each saturating run, the fixed part per batch the floor on a connection's whole life
    (creation + its teardown) would allow: at the run's batch size, and at one batch holding a
    first packet of every client thread (the largest a closed loop of that many threads can
    form). None with a single thread count; the fit's error where a run formed no batch, so
    the runs' figures are still printed."""
    runs = {k: v for k, v in out.items() if k.startswith("threads_")}
    if len(runs) < 2:
        return None
    points = {k: (r["fm_packets_per_batch"], r["cpu_us_per_connection_pp_fm_sc"])
              for k, r in {**runs, "lone": out["lone"]}.items()}  # fmt: skip
    try:
        cost = batch_cost.fit([points[k] for k in runs])
    except ValueError as e:
        return {"error": str(e)}
    fitted = {k: {"packets_per_batch": b, "cpu_us_per_connection": us,
                  "fitted_cpu_us_per_connection":
                      round(cost.per_connection_us(b), 1) if b > 0 else None}
              for k, (b, us) in points.items()}  # fmt: skip
    allowed = {}
    for key, run in runs.items():
        budget = LIFECYCLE_FLOOR_US - run["teardown"]["cpu_us_per_connection_pp_fm_sc"]
        sizes = {"at_its_batch_size": run["fm_packets_per_batch"],
                 "at_a_batch_of_every_thread": run["client_threads"]}  # fmt: skip
        allowed[key] = {k: round(cost.fixed_allowed_us(budget, b)) for k, b in sizes.items()}
    return {
        "fitted_over": list(runs),
        "fixed_us_per_batch": round(cost.fixed_us),
        "us_per_first_packet": round(cost.per_packet_us, 1),
        "runs": fitted,
        "fixed_us_per_batch_the_floor_allows": allowed,
    }


def profiled_pids(lab: SlowPathLab) -> dict[str, int]:
    assert lab.pp is not None
    sc = {n.node_id: n.proc.pid for n in lab.sc.nodes.values() if n.proc}
    return {"pp_agent": lab.pp.proc.pid, "fm": lab.fms["fm1"].pid, **sc}


def fm_batches(before: dict, after: dict) -> dict:
    """FM's first-packet latency (PacketIn arrival → the PP's answer to the StreamWrite that
    sent its packet), its batches' size and where a batch's time goes between two /status
    snapshots: awaiting SC's answer, then writing the rules and, through a StreamWrite, the PP
    sending the packets."""
    fm = {k: v - before["slow_path"].get(k, 0) for k, v in after["slow_path"].items()}
    sc_batches = max(fm.get("sc_batches", 0), 1)
    return {
        "fm_packet_in_to_packet_out_us": after["first_packet_us"],
        "fm_packets_per_batch": round(
            fm.get("batched_packets", 0) / max(fm.get("batches", 0), 1), 1
        ),
        "fm_ms_per_sc_batch": {
            phase: round((after["timings_s"].get(key, 0) - before["timings_s"].get(key, 0))
                         / sc_batches * 1e3, 2)
            for phase, key in (("sc_round_trip", "sc_seconds"), ("install", "install_seconds"))
        },
    }  # fmt: skip


def fm_counters(lab: SlowPathLab) -> dict[str, int]:
    return lab.fm_get("fm1", "/status")["slow_path"]


def drained(lab: SlowPathLab, before: dict[str, int]) -> dict[str, int]:
    """Wait until FM has deleted every rule written since `before` (idle timeout, the PP's
    notice, FM's Delete) and released it in SC; FM's counters then. Raises SystemExit if
    that takes longer than DRAIN_LIMIT_S or SC did not take a release: a leak, and figures
    that would not be per connection."""
    deadline = time.monotonic() + DRAIN_LIMIT_S
    # Nothing expires sooner; FM's /status is not free, and it is asked only after that.
    time.sleep(IDLE_TIMEOUT_S * 0.9)
    while True:
        now = fm_counters(lab)
        if now.get("sc_releases_failed", 0) > before.get("sc_releases_failed", 0):
            raise SystemExit(f"SC did not take some releases: FM's counters: {now}")
        written = now["rules_written"] - before.get("rules_written", 0)
        done = min(now.get(k, 0) - before.get(k, 0) for k in ("rules_expired", "sc_releases"))
        if done >= written:
            return now
        if time.monotonic() > deadline:
            raise SystemExit(f"{written - done} of {written} rules written since the run "
                             f"began were not expired and released {DRAIN_LIMIT_S:.0f} s "
                             f"later; FM's counters: {now}")  # fmt: skip
        time.sleep(0.5)


def above_idle(cpu: CpuMeter, idle_rate: dict[str, float], connections: int) -> dict:
    """`cpu`'s use beyond the daemons' idle rate over its window, in µs per connection."""
    used = {k: max(v - idle_rate.get(k, 0.0) * cpu.wall_s, 0.0) for k, v in cpu.used.items()}
    return {k: round(v * 1e6 / max(connections, 1), 1) for k, v in used.items()}


def teardown(lab: SlowPathLab, daemons: dict[str, list[int]], idle_rate: dict[str, float],
             before: dict[str, int], run: dict) -> dict:  # fmt: skip
    """The daemons' CPU for `run`'s connections after it (FM's counters `before` it): from
    the end of the load until each of its rules has idled out, been deleted from the PP and
    released in SC, above the daemons' idle rate, per connection; adds creation + teardown
    to `run`."""
    cpu = CpuMeter(daemons)
    cpu.start()
    after = drained(lab, before)
    cpu.stop()
    per = above_idle(cpu, idle_rate, run["connections"])
    pp_fm_sc = round(per["pp_agent"] + per["fm"] + per["sc_group"], 1)
    run["cpu_us_per_connection_lifecycle_pp_fm_sc"] = round(
        run["cpu_us_per_connection_pp_fm_sc"] + pp_fm_sc, 1
    )
    return {
        "seconds": round(cpu.wall_s, 1),
        "rules_expired": after["rules_expired"] - before.get("rules_expired", 0),
        "cpu_us_per_connection": per,
        "cpu_us_per_connection_pp_fm_sc": pp_fm_sc,
    }


def half_load(args, lab: SlowPathLab, sources: Sources, saturating_cps: float) -> dict:
    """A paced run at half the saturating rate: the first packet's latency when FM and SC are
    not queueing."""
    rate = max(saturating_cps / 2, 1)
    before = lab.fm_get("fm1", "/status")
    t0 = time.monotonic()
    run = load(args, lab.ns["client"], sources, args.paced_threads, rate=rate)
    return {
        "offered_cps": round(rate),
        "cps": round(run["cps"]),
        "failed": run["attempts"] - run["connections"],
        "client_threads": args.paced_threads,
        "connect_us": run["connect_us"],
        **fm_batches(before, lab.fm_get("fm1", f"/status?since={t0}")),
    }


def lone(args, ns: str, sources: Sources) -> dict:
    """One client thread paced at LONE_CPS: every connection alone on the path, so its
    latency is the path's own, with no batch or queue to wait for."""
    run = load(args, ns, sources, 1, rate=LONE_CPS)
    return {"offered_cps": LONE_CPS, "connections": run["connections"],
            "connect_us": run["connect_us"],
            "failed": run["attempts"] - run["connections"]}  # fmt: skip


def lone_cyberstar(args, lab: SlowPathLab, sources: Sources, daemons: dict[str, list[int]],
                   idle_rate: dict[str, float]) -> dict:  # fmt: skip
    """`lone` through cyberstar, with FM's view of each connection's batch (one first packet):
    the floor under every other latency figure of the slow path. Its CPU per connection above
    the daemons' idle rate is what one batch costs whatever its size (a batch of one), and
    `--profile` samples the daemons over it (`DIR/lone`)."""
    before = lab.fm_get("fm1", "/status")
    profiler = None
    if args.profile:
        profiler = Profiler(args.profile / "lone", profiled_pids(lab), args.seconds)
        profiler.start()
    cpu = CpuMeter(daemons)
    cpu.start()
    t0 = time.monotonic()
    out = lone(args, lab.ns["client"], sources)
    cpu.stop()
    per = above_idle(cpu, idle_rate, out["connections"])
    out["cpu_us_per_connection_above_idle"] = per
    out["cpu_us_per_connection_pp_fm_sc"] = round(per["pp_agent"] + per["fm"] + per["sc_group"], 1)
    out.update(fm_batches(before, lab.fm_get("fm1", f"/status?since={t0}")))
    if profiler is not None:
        out["profile"] = {"dir": str(profiler.out_dir), "top": profiler.finish()}
    return out


def flood(args, lab: SlowPathLab, cpu: CpuMeter) -> dict:
    """Rule requests per second FM + SC answer while a raw sender floods the PP with first
    packets of new flows from the SNAT NF's sources, and the daemons' CPU per request: with
    batches as large as FM makes them, what is left is the per-packet cost."""
    head = sc_head(lab)
    before = asyncio.run(sc_requests(head, lab.sc.client_tls))
    pin_before = lab.fm_get("fm1", "/status")["slow_path"].get("packet_in", 0)
    sent = multiprocessing.Value("q", 0)
    sender = multiprocessing.Process(
        target=blast, args=(lab.ns["client"], "c0", mac_of("pp1", lab.ns["pp"]), args.seconds,
                            sent),
    )  # fmt: skip
    t0 = time.monotonic()
    cpu.start()
    sender.start()
    sender.join()
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # what was punted before the end is still answered: count it separately
    cpu.stop()
    done = asyncio.run(sc_requests(head, lab.sc.client_tls)) - before
    status = lab.fm_get("fm1", "/status")["slow_path"]
    per = cpu.per_unit(done)
    return {
        "cpu_us_per_request": per,
        "cpu_us_per_request_pp_fm_sc": round(per["pp_agent"] + per["fm"] + per["sc_group"], 1),
        "frames_sent": sent.value,
        "frames_per_s": round(sent.value / elapsed),
        "packet_ins_at_fm": status.get("packet_in", 0) - pin_before,
        "rule_requests": done,
        "rule_requests_per_s": round(done / (elapsed + 1.0)),
    }


def machine_load() -> dict:
    """What else was running: a figure measured on a loaded machine is not publishable."""
    load1, load5, _ = os.getloadavg()
    return {"loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2),
            "cpus": os.cpu_count()}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per measured run")
    ap.add_argument(
        "--threads",
        type=lambda v: [int(t) for t in v.split(",")],
        default=[8, 64],
        help="load-generator threads, one saturating run per count (default 8,64)",
    )
    ap.add_argument(
        "--paced-threads",
        type=int,
        default=32,
        help="threads of the half-load run (paced, so latency is not queueing)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="saturating runs per thread count (median reported)"
    )
    ap.add_argument("--client-cpus", default="0", help="taskset CPU list of the load generator")
    ap.add_argument("--server-cpus", default="1", help="nginx workers, one per CPU")
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy profiles of the daemons: cyberstar's last saturating run, its lone run",
    )
    ap.add_argument(
        "--fm-in-flight",
        type=int,
        metavar="N",
        help="FM's SC batches outstanding at once (default: FM's own default)",
    )
    ap.add_argument(
        "--fm-max-delay-ms",
        type=float,
        metavar="MS",
        help="how long a busy FM waits to fill a batch (default: FM's own default)",
    )
    ap.add_argument(
        "--timeline",
        action="store_true",
        help="the daemons mark each hop of a first packet (cyberstar/timeline.py); printed: "
        "the lone run's hops (lone.timeline) and the steps of FM's installs in each loaded run "
        "(install_timeline)",
    )
    ap.add_argument("--only", choices=("routing", "nftables", "cyberstar"), action="append",
                    help="run only these middles (default: all three)")  # fmt: skip
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat: expected at least 1, found {args.repeat}")
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    only = args.only or ["routing", "nftables", "cyberstar"]
    out: dict = {"machine_before": machine_load(), "pinning": {
        "client_cpus": args.client_cpus, "server_cpus": args.server_cpus,
        "cyberstar_daemons": "unpinned"}}  # fmt: skip
    if "routing" in only:
        out["routing"] = bench_router(args, nat=False)
    if "nftables" in only:
        out["nftables"] = bench_router(args, nat=True)
    if "cyberstar" in only:
        out["cyberstar"] = bench_cyberstar(args)
    for threads in args.threads:
        key = f"threads_{threads}"
        cps = {m: out[m][key]["cps"] for m in ("routing", "nftables", "cyberstar") if m in out}
        if "nftables" in cps and "cyberstar" in cps:
            out.setdefault("cps_ratio_cyberstar_over_nftables", {})[key] = round(
                cps["cyberstar"] / max(cps["nftables"], 1), 3
            )
        if "nftables" in cps and "routing" in cps:
            out.setdefault("cps_ratio_nftables_over_routing", {})[key] = round(
                cps["nftables"] / max(cps["routing"], 1), 3
            )
    out["machine_after"] = machine_load()
    out["goals"] = {"cps_ratio_min": 1.0, "cps_ratio_floor": 0.25,
                    "cpu_us_per_connection_lifecycle_pp_fm_sc_max": LIFECYCLE_FLOOR_US,
                    "half_load_connect_p99_us_max": 5000}  # fmt: skip
    print(json.dumps(out, indent=1))
    runs = [v for k, v in out.get("cyberstar", {}).items() if k.startswith("threads_")]
    if not all(r["every_connection_asked_sc"] for r in runs):
        print(
            "a run's SC requests differ from its connections: not every connection was a "
            "new flow through the slow path; its figures do not measure it",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
