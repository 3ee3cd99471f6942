#!/usr/bin/env python3
"""XDP fast path: ns per established-flow packet over many flows, against Katran on this box.

Test runs (BPF_PROG_TEST_RUN, in the kernel, no NIC): a flow driver (bench/xdp_drive.py) makes
every repetition a different flow, visiting N installed flows (1k, 100k, 1M) in random order.
The PP program sees T tenants' VIP prefixes, 0/16/64 ACL entries spread over the tenants with
a few tenant-wide ones (none matching: every packet is permitted after the scan), and SNATs
each flow to one of four next hops. Each figure is the median of `--runs` runs; `floor_ns` is
the driver tail-calling an empty XDP_DROP program over the same flows, and `ns` is what the
program adds to it.

With `--katran PATH` (a checkout of github.com/facebookincubator/katran) the same driver runs
Katran's balancer on the same flows: each a TCP flow to one of T VIPs, established in Katran's
per-CPU LRU connection table, IPIP-encapsulated to one of 16 reals (its established-flow path).

Live (`--live-seconds`, default 3): packets per second through a veth pair in native XDP mode,
the same flows sent by an in-kernel generator (test runs in live-frames mode transmitting on
the sending veth), the receiving veth's NAPI in its own thread pinned to one core; the
receiving core's packets/s for the empty program (the harness's ceiling), the PP program and
Katran. See bench/xdp_live.py.

Prints one JSON object. Run as root from the repository:
    .venv/bin/python bench/xdp_fastpath.py [--katran /path/to/katran]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

from katran_lb import BPF_XDP, KatranLb, build
from xdp_drive import FlowDriver, pack_flow
from xdp_live import LiveVeth, bpf_stats

from cyberstar import netns, packets
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.meters import MeterConfig
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.values import TernaryValue
from cyberstar.xdp.program import XdpProgram
from cyberstar.xdp.testrun import prog_test_run

CLIENT_MAC, PP_MAC, GW_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01", "02:00:00:00:00:02"
NEXT_HOPS = 4
UNREACHED = MeterConfig(cir=10**9, cburst=10**6, pir=10**9, pburst=10**6)
REALS = 16
TCP_ACK = 0x10
BLOCKED_PORTS = (23, 445, 3389, 5900, 11211, 6379, 9200, 27017)


def vip(tenant: int) -> str:
    return f"10.{tenant}.0.5"


def flow_tuple(i: int, tenants: int) -> tuple[str, str, int, int]:
    """Flow i: a distinct client address, to tenant (i mod T)'s VIP port 80."""
    src = 0x0B000000 + i
    return (f"11.{src >> 16 & 255}.{src >> 8 & 255}.{src & 255}", vip(i % tenants),
            1024 + i % 60000, 80)  # fmt: skip


def static_entries(tenants: int) -> list[TableEntry]:
    e = [
        build_entry(PIPELINE, "tenant_classify",
                    {"ingress_port": 1, "vni": 0, "dst_addr": f"10.{t}.0.0/16"},
                    "set_tenant", {"tenant_id": 100 + t})
        for t in range(tenants)
    ]  # fmt: skip
    e += [
        build_entry(PIPELINE, "next_hop", {"nexthop_id": n}, "set_next_hop",
                    {"port": 2, "smac": PP_MAC, "dmac": f"02:00:00:00:01:{n:02x}"})
        for n in range(1, NEXT_HOPS + 1)
    ]  # fmt: skip
    return e


def flow_entries(start: int, stop: int, tenants: int) -> list[TableEntry]:
    out = []
    for i in range(start, stop):
        src, dst, sport, dport = flow_tuple(i, tenants)
        t = i % tenants
        out.append(TableEntry(
            "flow_table",
            {"tenant_id": 100 + t, "src_addr": _ip(src), "dst_addr": _ip(dst), "protocol": 6,
             "src_port": sport, "dst_port": dport},
            "snat",
            {"src_addr": 0xCB007100 + t, "src_port": sport, "nexthop_id": 1 + i % NEXT_HOPS},
        ))  # fmt: skip
    return out


def acl_entries(count: int, tenants: int) -> list[TableEntry]:
    """`count` deny rules, none matching the benchmark's flows: one in eight tenant-wide (a
    blocked TCP port), the others per tenant (a blocked /24 of sources), spread over tenants."""
    full = {"tenant_id": 0xFFFF, "src_addr": 0xFFFFFF00, "dst_port": 0xFFFF, "protocol": 0xFF}
    out = []
    for k in range(count):
        if k % 8 == 7:
            match = {"protocol": 6, "dst_port": BLOCKED_PORTS[k // 8 % len(BLOCKED_PORTS)]}
        else:
            match = {"tenant_id": 100 + k % tenants, "src_addr": 0xC6120000 + (k << 8)}
        out.append(TableEntry(
            "acl", {n: TernaryValue(v, full[n]) for n, v in match.items()}, "acl_deny", {},
            priority=1000 - k,
        ))  # fmt: skip
    return out


def _ip(addr: str) -> int:
    a, b, c, d = (int(x) for x in addr.split("."))
    return a << 24 | b << 16 | c << 8 | d


def empty_program_ns(frame: bytes, repeat: int, runs: int) -> float:
    from bcc import BPF

    b = BPF(text=b"int xdp_drop(struct xdp_md *ctx) { return XDP_DROP; }")
    fd = b.load_func(b"xdp_drop", BPF.XDP).fd
    ns = statistics.median(prog_test_run(fd, frame, repeat).duration_ns for _ in range(runs))
    b.cleanup()
    return ns


def verdict_counts(prog: XdpProgram) -> list[int]:
    return [p for p, _ in prog.counter("verdicts")]


def summary(samples: list[int], floor: list[int]) -> dict[str, float]:
    """ns/packet of a program: the driver's runs minus its floor, by the minimum (what the
    program costs when nothing else interferes) and by the median."""
    return {
        "ns": min(samples) - min(floor),
        "ns_median": statistics.median(samples) - statistics.median(floor),
        "with_driver_ns": statistics.median(samples),
    }


def measure_flows(
    prog: XdpProgram,
    katran: KatranLb | None,
    frame: bytes,
    flows: list[bytes],
    acl_counts: list[int],
    args,
) -> tuple[list[dict], dict | None]:
    """Rounds of runs over `flows`, interleaved so that interference from other load hits every
    program alike: the floor, the PP with each ACL size, Katran. Before each measured run, one
    pass over every flow fills what the programs cache per flow (the PP's ACL results)."""
    n = len(flows)
    repeat = max(args.min_repeat, 2 * n)
    drivers = {"pp": FlowDriver(frame, flows)}
    if katran:
        drivers["katran"] = FlowDriver(frame, flows, attach_type=BPF_XDP)
    floors: dict[str, list[int]] = {k: [] for k in drivers}
    pp: dict[int, list[int]] = {a: [] for a in acl_counts}
    peer: list[int] = []
    metered: list[int] = []
    forwarded = dict.fromkeys(acl_counts, 0)
    verdicts_ok = True
    k_before = katran.counters() if katran else None
    try:
        for _ in range(args.runs):
            for name, d in drivers.items():
                floors[name].append(d.run(d.empty_fd, repeat)[1])
            for a in acl_counts:
                prog.publish_ternary("acl", acl_entries(a, args.tenants))
                before = verdict_counts(prog)
                drivers["pp"].run(prog.fd, n)
                verdict, ns = drivers["pp"].run(prog.fd, repeat)
                after = verdict_counts(prog)
                verdicts_ok &= verdict == "XDP_REDIRECT" and after[1:] == before[1:]
                forwarded[a] += after[0] - before[0] - n - repeat
                pp[a].append(ns)
            for t in range(args.tenants):  # a rate no flow reaches: every packet metered, green
                prog.set_meter("tenant_rate", 100 + t, UNREACHED)
            drivers["pp"].run(prog.fd, n)
            metered.append(drivers["pp"].run(prog.fd, repeat)[1])
            for t in range(args.tenants):
                prog.set_meter("tenant_rate", 100 + t, None)
            if katran:
                drivers["katran"].run(katran.fd, n)
                peer.append(drivers["katran"].run(katran.fd, repeat)[1])
    finally:
        for d in drivers.values():
            d.close()
    cases = [
        {"flows": n, "acl_entries": a, **summary(pp[a], floors["pp"]),
         "floor_ns": min(floors["pp"]),
         "every_packet_forwarded": verdicts_ok and forwarded[a] == 0}
        for a in acl_counts
    ]  # fmt: skip
    cases[-1]["metered"] = summary(metered, floors["pp"])
    cases[-1]["meter_overhead"] = round(
        cases[-1]["metered"]["ns"] / cases[-1]["ns"] - 1, 3
    )  # goal: at most 0.15
    if not katran:
        return cases, None
    moved = {k: v - k_before[k] for k, v in katran.counters().items()}
    return cases, {
        "flows": n, **summary(peer, floors["katran"]), "floor_ns": min(floors["katran"]),
        "counters": moved,
        "every_packet_established": moved["tx"] == args.runs * (n + repeat)
        and moved["lru_miss_non_syn"] == 0,
    }  # fmt: skip


def live(prog: XdpProgram, katran: KatranLb | None, frame: bytes, flows: list[bytes], args) -> dict:
    """Packets/s per receiving core on a veth pair, native XDP (see bench/xdp_live.py)."""
    bench = LiveVeth(frame, flows, args.gen_cpu, args.rx_cpu)
    try:
        prog.set_ingress_port(bench.ifindex["r0"], 1)
        with netns.entered(bench.ns):  # a devmap resolves the ifindex in the caller's netns
            prog.set_egress_port(2, bench.ifindex["t0"])
        prog.publish_ternary("acl", acl_entries(args.live_acl, args.tenants))
        out = {"flows": len(flows), "acl_entries": args.live_acl, "seconds": args.live_seconds,
               "gen_cpu": args.gen_cpu, "rx_cpu": args.rx_cpu}  # fmt: skip
        runs = {
            "ceiling_drop": bench.fds["sink"],
            "ceiling_reflect": bench.fds["reflect"],
            "pp": prog.fd,
            **({"katran": katran.fd} if katran else {}),
        }
        for name, fd in runs.items():
            before = verdict_counts(prog)
            with bpf_stats():
                out[name] = bench.measure(bench.attach_fd(fd), args.live_seconds)
            if name == "pp":
                moved = [a - b for a, b in zip(verdict_counts(prog), before, strict=True)]
                out[name]["verdicts"] = dict(zip(PIPELINE.verdicts, moved, strict=True))
        if katran:
            out["pp_over_katran_pps"] = round(out["pp"]["pps"] / max(out["katran"]["pps"], 1), 2)
        return out
    finally:
        bench.close()


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", default="1000,100000,1000000", help="comma-separated flow counts")
    ap.add_argument("--acl", default="0,16,64", help="comma-separated ACL entry counts")
    ap.add_argument("--tenants", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--min-repeat",
        type=int,
        default=200_000,
        help="repetitions per run (at least twice the flow count)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cpu", type=int, default=os.cpu_count() - 1, help="run the test runs here")
    ap.add_argument("--katran", type=Path, help="a Katran checkout to build and compare with")
    ap.add_argument("--live-seconds", type=float, default=3.0, help="0: no live measurement")
    ap.add_argument("--live-acl", type=int, default=16, help="ACL entries in the live run")
    ap.add_argument("--gen-cpu", type=int, default=0, help="the live generator's core")
    ap.add_argument("--rx-cpu", type=int, default=1, help="the live receiving core")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark loads BPF programs", file=sys.stderr)
        return 2
    flow_counts = sorted(int(x) for x in args.flows.split(","))
    acl_counts = [int(x) for x in args.acl.split(",")]
    if not 1 <= args.tenants <= 256:
        print("--tenants must be 1..256", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {args.cpu})

    first = flow_tuple(0, args.tenants)
    frame = packets.tcp_frame(CLIENT_MAC, PP_MAC, *first, b"x" * 10, flags=TCP_ACK)
    result: dict[str, object] = {
        "frame_bytes": len(frame), "runs": args.runs, "tenants": args.tenants, "cpu": args.cpu,
        "loadavg_before": loadavg(), "kernel": os.uname().release,
    }  # fmt: skip
    result["empty_program_ns"] = empty_program_ns(frame, args.min_repeat, args.runs)

    prog = XdpProgram()
    prog.install_defaults()
    prog.set_ingress_port(1, 1)
    prog.set_egress_port(2, 1)
    prog.install(static_entries(args.tenants))
    katran = None
    tmp = tempfile.TemporaryDirectory(prefix="cyberstar-katran-build-")
    if args.katran:
        katran = KatranLb(build(args.katran, Path(tmp.name)))
        katran.configure(bytes.fromhex(GW_MAC.replace(":", "")),
                         [vip(t) for t in range(args.tenants)],
                         [f"10.200.0.{r}" for r in range(1, REALS + 1)],
                         max(flow_counts) + max(flow_counts) // 4 + 1024)  # fmt: skip
    rng = random.Random(args.seed)
    cases, peer = [], []
    installed = 0
    try:
        for n in flow_counts:
            prog.install(flow_entries(installed, n, args.tenants))
            if katran:
                katran.add_flows([flow_tuple(i, args.tenants) for i in range(installed, n)], REALS)
            installed = n
            order = list(range(n))
            rng.shuffle(order)
            flows = [pack_flow(*flow_tuple(i, args.tenants)) for i in order]
            pp_cases, peer_case = measure_flows(prog, katran, frame, flows, acl_counts, args)
            cases += pp_cases
            if peer_case:
                peer.append(peer_case)
        if args.live_seconds > 0:
            result["live"] = live(prog, katran, frame, flows, args)
    finally:
        prog.close()
        if katran:
            katran.close()
        tmp.cleanup()
    result["pp"] = cases
    if peer:
        result["katran"] = peer
        by_n = {c["flows"]: c["ns"] for c in peer}
        result["pp_over_katran"] = {
            f"{c['flows']}_flows_{c['acl_entries']}_acl": round(c["ns"] / by_n[c["flows"]], 2)
            for c in cases
        }
        result["goal_pp_over_katran_max"] = 0.7
    result["loadavg_after"] = loadavg()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
