#!/usr/bin/env python3
"""A PP node's PacketOuts into its pipeline, per batch size: wall and CPU time per packet.

FM re-injects each new connection's first packet once its rules are in: a PacketOut with
`submit_to_ingress`, which the XDP node runs through its pipeline with BPF_PROG_TEST_RUN in
live-frames mode (`XdpProgram.run_live`). Here a real XDP program, loaded and attached to the
two ports of a private namespace, forwards TCP SYNs of one SNAT flow from port 1 to port 2,
whose veth peer takes them into its stack (no listener: they end there, as SYNs to a closed
port). Each batch size sends `--packets` frames in calls of that many; batch 1 is one
live-frames run per packet, what the node did before runs were batched. Times are the calling
thread's wall clock and CPU time (user + system: the run's kernel work is in the system
call, including the peer's receive when it runs there) per packet, the best of `--runs`.
Frames forwarded are counted from the pipeline's own counter and printed: every packet sent
must have been forwarded.

Run as root: .venv/bin/python bench/packet_out.py [--packets N] [--runs R] [--batches 1,8,64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from cyberstar import netns, packets
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import parse_rules
from cyberstar.xdp.program import XdpProgram

TENANT, PP_MAC, GW_MAC = 7, "02:00:00:00:00:01", "02:00:00:00:00:02"
RULES = [
    {"table": "tenant_classify", "action": "set_tenant", "params": {"tenant_id": TENANT},
     "match": {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"}},
    {"table": "next_hop", "match": {"nexthop_id": 3}, "action": "set_next_hop",
     "params": {"port": 2, "smac": PP_MAC, "dmac": GW_MAC}},
    {"table": "flow_table", "action": "snat",
     "match": {"tenant_id": TENANT, "src_addr": "192.168.1.2", "dst_addr": "10.0.0.5",
               "protocol": 6, "src_port": 40001, "dst_port": 80},
     "params": {"src_addr": "203.0.113.9", "src_port": 50000, "nexthop_id": 3}},
]  # fmt: skip
# A SYN as Linux sends it: 20 bytes of TCP options (MSS, SACK, timestamps, window scale)
SYN = packets.tcp_frame("02:00:00:00:00:0a", PP_MAC, "192.168.1.2", "10.0.0.5", 40001, 80,
                        payload=bytes(20))  # fmt: skip


def forwarded(prog: XdpProgram) -> int:
    return prog.counter("verdicts")[PIPELINE.verdicts.index("forward")][0]


def measure(prog: XdpProgram, ifindex: int, batch: int, total: int) -> dict:
    frames = [SYN] * batch
    calls = max(1, total // batch)
    before = forwarded(prog)
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(calls):
        errs = prog.run_live(frames, [ifindex] * batch)
        if any(errs):
            raise RuntimeError(f"run_live failed: {[os.strerror(e) for e in errs if e][:3]}")
    wall, cpu = time.perf_counter_ns() - wall, time.thread_time_ns() - cpu
    sent = calls * batch
    return {"packets": sent, "forwarded": forwarded(prog) - before,
            "wall_us_per_packet": round(wall / sent / 1e3, 2),
            "cpu_us_per_packet": round(cpu / sent / 1e3, 2)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batches", default="1,4,16,64,256")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (loads an XDP program, creates a namespace)", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    with netns.with_pp_ports(f"cs-bench-pout-{os.getpid()}") as ns:
        prog = XdpProgram()
        try:
            prog.install_defaults()
            prog.install(parse_rules(RULES, PIPELINE))
            with netns.entered(ns):
                pp1 = socket.if_nametoindex("pp1")
                prog.set_port(pp1, 1)
                prog.set_port(socket.if_nametoindex("pp2"), 2)
                modes = [prog.attach("pp1"), prog.attach("pp2")]
            # native XDP_REDIRECT into a veth needs GRO on its peer
            netns.exec_in(ns, "ethtool", "-K", "peer2", "gro", "on")
            results = {}
            with netns.entered(ns):
                measure(prog, pp1, 64, 2000)  # warm up: page pools, the peer's stack
                for batch in batches:
                    runs = [measure(prog, pp1, batch, args.packets) for _ in range(args.runs)]
                    best = min(runs, key=lambda r: r["cpu_us_per_packet"])
                    best["cpu_us_per_packet_runs"] = [r["cpu_us_per_packet"] for r in runs]
                    results[str(batch)] = best
                prog.detach_all()
        finally:
            prog.close()
    out = {"xdp_modes": modes, "frame_bytes": len(SYN), "per_batch_size": results}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
