#!/usr/bin/env python3
"""Figure 12: a NAT flow and a VXLAN flow on the slow path, an XDP PP node and a bmv2 PP node.

Prints one JSON object:
* `flows` (Figure 12a): for each flow kind — `nat` (UDP, source NAT) and `vxlan` (a VXLAN
  packet decapsulated and sent on in a new tunnel) — and each path, the highest rate the path
  delivers without loss (packets per second) and its one-way latency:
  - `slow_path`: every packet is a new flow, punted by the XDP PP to FM, whose rule comes from
    an SC group of three (the paper's baseline: all packets through the NF slow path);
  - `xdp`: one installed rule on an XDP PP node (`cyberstar pp serve`, native mode);
  - `bmv2`: one installed rule on a bmv2 PP node (`simple_switch_grpc`, the generated P4).
* `table_sizes` (Figure 12b): the NAT rate of the XDP and bmv2 nodes with N installed rules and
  traffic spread over all N flows.
* `harness`: the senders' own ceilings (frames per second each pushes into a bare veth) and
  the one-way latency of a bare veth pair, measured the same way.

Everything crosses real veths. A path's rate is found by offering paced traffic from a raw
socket, from 1 000 frames/s, doubling while at least 97 % arrives (or halving until it does),
then the midpoint between the last good and the first lossy rate; a fast path that takes the
socket's fastest pace (64 000/s) is then flooded by an XDP program run in live-frames mode
(BPF_PROG_TEST_RUN + XDP_TX into the sending veth, as xdp-trafficgen does), which sends as
fast as it can but cannot be paced; if the path takes even that, `limited_by_generator` says
the figure is the generator's, not the path's. Frames walk all installed flows (their UDP
ports). Delivered frames are counted on the receiving veth until 0.3 s after the offer stops.
The slow path gets a new flow in every frame.
Every path's output is checked first: the fast paths' bytes against the reference model, the
slow path's rewritten addresses. Latency: frames sent one at a time from a raw socket, received
with the kernel's receive timestamp (SO_TIMESTAMPNS), minus the clock just before the send.

bmv2 is a software switch (behavioral model), not a DPU: it is orders of magnitude slower than
XDP here. This experiment shows the mechanism and the shape of Figure 12, not a DPU's speed-up.

Run as root from the repository: .venv/bin/python bench/dpu.py [--seconds S] [--plot FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bcc import BPF
from finsy.proto import p4r

from cyberstar import netns, packets
from cyberstar.lab.pp_process import PpNode, start_pp_node
from cyberstar.lab.slowpath import (
    CLIENT_IP,
    GATEWAY_SERVER,
    PUBLIC_IP,
    SERVER_NET,
    SERVERS,
    SlowPathLab,
    mac_of,
)
from cyberstar.lab.wait import wait_until
from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.headers import pack
from cyberstar.pipeline.pp import PIPELINE, UDP, VXLAN
from cyberstar.pipeline.rules import parse_rules
from cyberstar.ref.model import RefModel
from cyberstar.xdp.testrun import prog_test_run

NAT_TENANT, VXLAN_TENANT = 7, 9
VNI_IN, VNI_OUT = 7000, 7001
SERVER = SERVERS[0]
NODE_IP = "10.9.0.1"  # the node's tunnel endpoint, where VXLAN packets are sent
PEER_IP = "10.9.0.2"
GEN_MAC = "02:00:00:00:00:0a"
FLOW_DPORT_BASE, FLOW_SPORT_BASE, PORTS_PER_DPORT = 1024, 1024, 60000
SOCKET_MAX_PPS = 64000  # the paced socket's highest offered rate (it does ~100k/s alone)
MIN_PPS = 30
PAYLOAD_LEN = 22  # a 64-byte UDP frame
GRACE_S = 0.3  # after a trial, how long late frames still count as delivered
SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>; Python's socket module lacks the name
DELIVERED_ENOUGH = 0.97
# Inner UDP header offset of each kind of frame: the generator rewrites the ports there.
L4_OFFSET = {"nat": 14 + 20, "vxlan": 14 + 20 + 8 + 8 + 14 + 20}

GENERATOR_C = r"""
#include <uapi/linux/bpf.h>
struct frame { u8 bytes[FRAME_LEN]; };
BPF_ARRAY(gen_frame, struct frame, 1);
BPF_PERCPU_ARRAY(gen_count, u64, 1);
BPF_ARRAY(gen_flows, u32, 1);
// Live frames are recycled with whatever the receiving node wrote into them: write the whole
// template again, then the UDP ports of the next flow (see flow_ports in bench/dpu.py).
int gen(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if (data + FRAME_LEN > end)
        return XDP_ABORTED;
    u32 zero = 0;
    struct frame *tpl = gen_frame.lookup(&zero);
    u64 *count = gen_count.lookup(&zero);
    u32 *flows = gen_flows.lookup(&zero);
    if (!tpl || !count || !flows || *flows == 0)
        return XDP_ABORTED;
    __builtin_memcpy(data, tpl->bytes, FRAME_LEN);
    u32 i = (u32)(*count % *flows);
    *count += 1;
    u32 sport = SPORT_BASE + i % PORTS_PER_DPORT, dport = DPORT_BASE + i / PORTS_PER_DPORT;
    u8 *l4 = data + L4_OFF;
    l4[0] = sport >> 8;
    l4[1] = sport;
    l4[2] = dport >> 8;
    l4[3] = dport;
    return XDP_TX;
}
"""


def log(message: str) -> None:
    print(f"dpu: {message}", file=sys.stderr, flush=True)


def flow_ports(i: int) -> tuple[int, int]:
    """Flow i's UDP (source, destination) ports, as the generator writes them."""
    return FLOW_SPORT_BASE + i % PORTS_PER_DPORT, FLOW_DPORT_BASE + i // PORTS_PER_DPORT


# ---- frames and rules ---------------------------------------------------------------------


def inner_frame(dst_mac: str, i: int, src: str = CLIENT_IP) -> bytes:
    """Flow i's UDP frame, 64 bytes, its index in the payload (which no path rewrites);
    checksum 0 (none), so that rewriting its ports keeps it valid."""
    sport, dport = flow_ports(i)
    payload = i.to_bytes(8, "big") + b"x" * (PAYLOAD_LEN - 8)
    frame = bytearray(packets.udp_frame(GEN_MAC, dst_mac, src, SERVER, sport, dport, payload))
    frame[40:42] = b"\0\0"
    return bytes(frame)


def vxlan_frame(dst_mac: str, i: int, src: str = PEER_IP, dst: str = NODE_IP) -> bytes:
    inner = inner_frame("02:00:00:00:00:0b", i)
    udp = pack(
        UDP,
        {
            "src_port": 49152,
            "dst_port": 4789,
            "length": UDP.byte_len + VXLAN.byte_len + len(inner),
            "checksum": 0,
        },
    )
    vx = pack(VXLAN, {"flags": 0x08, "reserved": 0, "vni": VNI_IN, "reserved2": 0})
    length = len(udp) + len(vx) + len(inner)
    return (packets.ethernet(GEN_MAC, dst_mac, 0x0800) + packets.ipv4(src, dst, 17, length)
            + udp + vx + inner)  # fmt: skip


def frame_of(kind: str, dst_mac: str, i: int) -> bytes:
    return inner_frame(dst_mac, i) if kind == "nat" else vxlan_frame(dst_mac, i)


def node_rules(pp2_mac: str, peer2_mac: str) -> list[dict]:
    """Classification of both kinds and their next hops: 2 plain, 3 a VXLAN tunnel."""

    def classify(vni: int, tenant: int) -> dict:
        return {"table": "tenant_classify", "action": "set_tenant",
                "match": {"ingress_port": 1, "vni": vni, "dst_addr": SERVER_NET},
                "params": {"tenant_id": tenant}}  # fmt: skip

    return [
        classify(0, NAT_TENANT),
        classify(VNI_IN, VXLAN_TENANT),
        {"table": "next_hop", "match": {"nexthop_id": 2}, "action": "set_next_hop",
         "params": {"port": 2, "smac": pp2_mac, "dmac": peer2_mac}},
        {"table": "next_hop", "match": {"nexthop_id": 3}, "action": "set_next_hop_vxlan",
         "params": {"port": 2, "smac": pp2_mac, "dmac": peer2_mac, "src_addr": GATEWAY_SERVER,
                    "dst_addr": SERVER, "vni": VNI_OUT}},
    ]  # fmt: skip


def flow_entry(kind: str, i: int) -> TableEntry:
    sport, dport = flow_ports(i)
    tenant = NAT_TENANT if kind == "nat" else VXLAN_TENANT
    match = {"tenant_id": tenant, "src_addr": CLIENT_IP, "dst_addr": SERVER, "protocol": 17,
             "src_port": sport, "dst_port": dport}  # fmt: skip
    if kind == "nat":
        params = {"src_addr": PUBLIC_IP, "src_port": 20000 + i % 40000, "nexthop_id": 2}
        return build_entry(PIPELINE, "flow_table", match, "snat", params)
    return build_entry(PIPELINE, "flow_table", match, "forward", {"nexthop_id": 3})


# ---- measuring on veths -------------------------------------------------------------------


def rx_packets(ns: str, dev: str) -> int:
    stats = json.loads(netns.ip("-s", "-j", "link", "show", dev, ns=ns).stdout)[0]["stats64"]
    return int(stats["rx"]["packets"])


def settle(ns: str, dev: str, quiet_s: float = 0.3, timeout: float = 20) -> None:
    """Wait until the previous trial's stragglers stop arriving on `dev`."""
    deadline = time.monotonic() + timeout
    last = rx_packets(ns, dev)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = rx_packets(ns, dev)
        if now == last:
            return
        last = now


def raw_socket(ns: str, dev: str, timestamps: bool = False) -> socket.socket:
    with netns.entered(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((dev, 0))
    if timestamps:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return s


def receive_matching(s: socket.socket, want: Callable[[bytes], bool], timeout: float
                     ) -> tuple[bytes, int] | None:  # fmt: skip
    """The next incoming frame `want` accepts, with its kernel receive time (ns)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, anc, _flags, addr = s.recvmsg(4096, 64)
        except TimeoutError:
            return None
        if addr[2] == socket.PACKET_OUTGOING or not want(data):
            continue
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                return data, sec * 1_000_000_000 + nsec
        return data, time.time_ns()
    return None


def one_way_latency(send: socket.socket, recv: socket.socket, frames: Iterator[bytes],
                    want: Callable[[bytes, bytes], bool], samples: int) -> dict:  # fmt: skip
    """Send frames one at a time; microseconds from just before each send to its arrival."""
    delays, lost = [], 0
    for _ in range(samples):
        frame = next(frames)
        t0 = time.time_ns()
        send.send(frame)
        got = receive_matching(recv, lambda out, f=frame: want(f, out), 1.0)
        if got is None:
            lost += 1
            continue
        delays.append((got[1] - t0) / 1000)
    delays.sort()

    def pct(q: float) -> float:
        return round(delays[min(len(delays) - 1, int(len(delays) * q))], 1)

    if not delays:
        return {"samples": 0, "lost": lost}
    return {"samples": len(delays), "lost": lost, "mean_us": round(statistics.mean(delays), 1),
            "p50_us": pct(0.5), "p99_us": pct(0.99), "p999_us": pct(0.999)}  # fmt: skip


class Generator:
    """The live-frames XDP traffic generator on one veth of a namespace."""

    def __init__(self, ns: str, dev: str, kind: str, frame: bytes) -> None:
        self.ns, self.ifindex, self.frame = ns, netns.ifindex(dev, ns), frame
        cflags = [f"-DL4_OFF={L4_OFFSET[kind]}", f"-DFRAME_LEN={len(frame)}",
                  f"-DSPORT_BASE={FLOW_SPORT_BASE}",
                  f"-DDPORT_BASE={FLOW_DPORT_BASE}",
                  f"-DPORTS_PER_DPORT={PORTS_PER_DPORT}"]  # fmt: skip
        self.bpf = BPF(text=GENERATOR_C, cflags=cflags)
        self.fd = self.bpf.load_func("gen", BPF.XDP).fd
        table = self.bpf["gen_frame"]
        table[0] = table.Leaf.from_buffer_copy(frame)

    def flood(self, flows: int, seconds: float) -> int:
        """Send as fast as it can for `seconds`, walking flows 0..flows-1; frames sent. (Each
        live-frames run costs milliseconds to set up, so it cannot be paced finely.)"""
        self.bpf["gen_flows"][0] = self.bpf["gen_flows"].Leaf(flows)
        sent, start, batch = 0, time.monotonic(), 8192
        with netns.entered(self.ns):
            while time.monotonic() - start < seconds:
                prog_test_run(self.fd, self.frame, repeat=batch, ingress_ifindex=self.ifindex)
                sent += batch
        return sent

    def close(self) -> None:
        self.bpf.cleanup()


class SocketSender:
    """A raw socket sending at a paced rate (finely: a few frames at a time)."""

    def __init__(self, ns: str, dev: str) -> None:
        self.sock = raw_socket(ns, dev)

    def run(self, next_frame: Callable[[], bytes], rate: float, seconds: float) -> int:
        sent, start = 0, time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int(rate * (now - start)) - sent
            if due <= 0:
                time.sleep(0.0005)
                continue
            for _ in range(min(due, 64)):
                self.sock.send(next_frame())
                sent += 1
        return sent

    def close(self) -> None:
        self.sock.close()


Trial = Callable[[float | None], tuple[int, int]]  # offered rate (None: flood) → sent, delivered


def best_rate(run_at: Trial, start: float, seconds: float, flood: bool = True) -> dict:
    """The highest rate delivered with at least 97 % of the offered frames. The paced socket
    starts at `start` and doubles while that holds (or halves until it does), up to
    SOCKET_MAX_PPS; the midpoint between the last good and the first lossy rate is tried
    once. A path that takes the socket's fastest pace is then flooded by the XDP generator
    (`limited_by_generator` if it takes even that: the figure is the generator's)."""
    best, trials = 0.0, []

    def trial(offered: float | None) -> bool:
        nonlocal best
        sent, delivered = run_at(offered)
        trials.append({"offered_pps": round(sent / seconds),
                       "delivered_pps": round(delivered / seconds)})  # fmt: skip
        good = delivered >= DELIVERED_ENOUGH * sent
        if good:
            best = max(best, delivered / seconds)
        return good

    rate, good, lossy = start, None, None
    while True:
        if trial(rate):
            good = rate
            if lossy is not None or rate * 2 > SOCKET_MAX_PPS:
                break
            rate *= 2
        else:
            lossy = rate
            if good is not None or rate / 2 < MIN_PPS:
                break
            rate /= 2
    if good is not None and lossy is not None:
        trial((good + lossy) / 2)
    took_flood = lossy is None and flood and trial(None)
    return {"pps": round(best), "limited_by_generator": took_flood, "trials": trials}


# ---- the fast paths: one PP node between two veths ----------------------------------------


@contextlib.contextmanager
def fast_path_node(kind: str) -> Iterator[tuple[str, PpNode]]:
    ns = f"cs-dpu-{kind}-{os.getpid()}"
    with netns.with_pp_ports(ns):
        # The generator's XDP_TX and a native XDP redirect deliver into a veth's NAPI, which
        # exists where XDP is attached or GRO is on.
        for dev in ("pp1", "peer2"):
            netns.exec_in(ns, "ethtool", "-K", dev, "gro", "on", check=False)
        node = start_pp_node(kind, ns, ["pp1", "pp2"], mode="native")
        try:
            yield ns, node
        finally:
            node.stop()


def program(node: PpNode, ns: str, kind: str, flows: int) -> RefModel:
    """Static rules and `flows` flow entries of `kind` on the node; the same on a reference
    model, which is returned to check the node's output."""
    client = node.primary_with_pipeline(election_id=10, timeout=60)
    static = parse_rules(node_rules(mac_of("pp2", ns), mac_of("peer2", ns)), PIPELINE)
    client.write([update(p4r.Update.INSERT, PIPELINE, e) for e in static])
    for start in range(0, flows, 1000):
        batch = [flow_entry(kind, i) for i in range(start, min(flows, start + 1000))]
        client.write([update(p4r.Update.INSERT, PIPELINE, e) for e in batch])
    ref = RefModel()
    ref.install([*static, flow_entry(kind, 0)])
    return ref


def check_output(ns: str, kind: str, ref: RefModel) -> None:
    frame = frame_of(kind, mac_of("pp1", ns), 0)
    expected = ref.process(frame, 1)
    assert expected.verdict == "forward" and expected.output is not None
    send, recv = raw_socket(ns, "peer1"), raw_socket(ns, "peer2")
    try:
        for _ in range(3):
            send.send(frame)
            got = receive_matching(recv, lambda out: out == expected.output, 2.0)
            if got is not None:
                return
        raise SystemExit(f"{kind}: the node's output differs from the reference model's")
    finally:
        send.close()
        recv.close()


def fast_path(kind: str, path: str, flows: int, args) -> dict:
    with fast_path_node(path) as (ns, node):
        ref = program(node, ns, kind, flows)
        check_output(ns, kind, ref)
        pp1 = mac_of("pp1", ns)
        frames = itertools.cycle([frame_of(kind, pp1, i) for i in range(flows)])
        gen = Generator(ns, "peer1", kind, frame_of(kind, pp1, 0))
        sender = SocketSender(ns, "peer1")

        def run_at(rate: float | None) -> tuple[int, int]:
            settle(ns, "peer2")
            before = rx_packets(ns, "peer2")
            if rate is None:
                sent = gen.flood(flows, args.seconds)
            else:
                sent = sender.run(frames.__next__, rate, args.seconds)
            time.sleep(GRACE_S)  # frames still queued in the node count; later ones do not
            return sent, rx_packets(ns, "peer2") - before

        try:
            result = best_rate(run_at, 1000, args.seconds)
        finally:
            gen.close()
            sender.close()
        if flows == 1:
            settle(ns, "peer2")
            send, recv = raw_socket(ns, "peer1"), raw_socket(ns, "peer2", timestamps=True)
            try:
                result["latency"] = one_way_latency(
                    send, recv, frames, same_payload, args.latency_samples
                )
            finally:
                send.close()
                recv.close()
        return result


# ---- the slow path: every packet a new flow through FM and SC ------------------------------


def vxlan_tenant() -> dict:
    return {"id": VXLAN_TENANT, "chain": ["fw"], "forward_nexthop": 3, "return_nexthop": 1,
            "home_scg": "scg1",
            "nfs": {"fw": {"kind": "firewall", "default": "allow"}}}  # fmt: skip


def vxlan_rules(lab: SlowPathLab, index: int) -> list[dict]:
    pp_ns = lab.pp_ns[index]
    return [
        {"table": "tenant_classify", "action": "set_tenant",
         "match": {"ingress_port": 1, "vni": VNI_IN, "dst_addr": SERVER_NET},
         "params": {"tenant_id": VXLAN_TENANT}},
        {"table": "next_hop", "match": {"nexthop_id": 3}, "action": "set_next_hop_vxlan",
         "params": {"port": 2, "smac": mac_of("pp2", pp_ns),
                    "dmac": mac_of(f"s{index}", lab.ns["server"]),
                    "src_addr": GATEWAY_SERVER, "dst_addr": SERVER, "vni": VNI_OUT}},
    ]  # fmt: skip


def slow_path_output_ok(kind: str, out: bytes) -> bool:
    """A NAT frame leaves with the public source address; a VXLAN one in the new tunnel."""
    if kind == "nat":
        return out[12:14] == b"\x08\x00" and socket.inet_ntoa(out[26:30]) == PUBLIC_IP
    return out[36:38] == b"\x12\xb5" and int.from_bytes(out[46:49], "big") == VNI_OUT


def same_payload(sent: bytes, out: bytes) -> bool:
    """The output carries the sent frame's payload (its flow index): no path rewrites it."""
    return out[-PAYLOAD_LEN:] == sent[-PAYLOAD_LEN:]


def slow_path(kind: str, lab: SlowPathLab, args, counter: Iterator[int]) -> dict:
    ns_c, ns_s = lab.ns["client"], lab.ns["server"]
    pp1 = mac_of("pp1", lab.pp_ns[0])
    frames = (frame_of(kind, pp1, next(counter)) for _ in iter(int, 1))
    send = raw_socket(ns_c, "c0")

    def latency(samples: int) -> dict:
        settle(ns_s, "s0")
        recv = raw_socket(ns_s, "s0", timestamps=True)
        try:
            return one_way_latency(
                send,
                recv,
                frames,
                lambda f, out: slow_path_output_ok(kind, out) and same_payload(f, out),
                samples,
            )
        finally:
            recv.close()  # fmt: skip

    sender = SocketSender(ns_c, "c0")

    def run_at(rate: float | None) -> tuple[int, int]:
        assert rate is not None
        settle(ns_s, "s0")
        before = rx_packets(ns_s, "s0")
        sent = sender.run(frames.__next__, rate, args.seconds)
        time.sleep(GRACE_S)
        return sent, rx_packets(ns_s, "s0") - before

    try:
        if latency(3)["samples"] == 0:
            raise SystemExit(f"slow path {kind}: no correctly rewritten frame reached the server")
        result = best_rate(run_at, 250, args.seconds, flood=False)
        result["latency"] = latency(args.slow_latency_samples)
        return result
    finally:
        send.close()
        sender.close()


# ---- the harness's own ceiling -------------------------------------------------------------


def harness(args) -> dict:
    ns = f"cs-dpu-h-{os.getpid()}"
    with netns.with_pp_ports(ns):
        netns.exec_in(ns, "ethtool", "-K", "pp1", "gro", "on", check=False)
        frame = inner_frame(mac_of("pp1", ns), 0)
        gen = Generator(ns, "peer1", "nat", frame)
        sender = SocketSender(ns, "peer1")
        try:
            before = rx_packets(ns, "pp1")
            flooded = gen.flood(1, args.seconds)
            time.sleep(GRACE_S)
            middle = rx_packets(ns, "pp1")
            paced = sender.run(lambda: frame, 1e9, args.seconds)
            time.sleep(GRACE_S)
            after = rx_packets(ns, "pp1")
        finally:
            gen.close()
            sender.close()
        send, recv = raw_socket(ns, "peer1"), raw_socket(ns, "pp1", timestamps=True)
        try:
            latency = one_way_latency(send, recv, iter(lambda: frame, None),
                                      lambda f, out: out == f, args.latency_samples)  # fmt: skip
        finally:
            send.close()
            recv.close()
    seconds = args.seconds
    return {"generator_pps": round(flooded / seconds),
            "generator_delivered_pps": round((middle - before) / seconds),
            "socket_sender_pps": round(paced / seconds),
            "socket_sender_delivered_pps": round((after - middle) / seconds),
            "bare_veth_latency": latency}  # fmt: skip


# ---- the figure -----------------------------------------------------------------------------


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib (pip install matplotlib) or drop --plot") from exc
    return plt


def plot(result: dict, path: str) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    paths = ["slow_path", "xdp", "bmv2"]
    kinds = list(result["flows"])
    width = 0.25
    for k, p in enumerate(paths):
        cells = [result["flows"][kind][p] for kind in kinds]
        bars = a.bar([x + k * width for x in range(len(kinds))], [c["pps"] for c in cells],
                     width, label=p)  # fmt: skip
        labels = [("≥" if c["limited_by_generator"] else "") + f"{c['pps']:,}" for c in cells]
        a.bar_label(bars, labels, fontsize="x-small", rotation=90, label_type="center")
    ceiling = result["harness"]["generator_pps"]
    a.axhline(ceiling, color="grey", linestyle="--", linewidth=1)
    a.text(len(kinds) - 0.5, ceiling, "generator ceiling", fontsize="x-small", va="bottom",
           ha="right")  # fmt: skip
    a.set_xticks([x + width for x in range(len(kinds))], ["NAT", "VXLAN decap/encap"])
    a.set_yscale("log")
    a.set_ylabel("packets/s delivered (log)")
    a.set_title("(a) one rule, by action")
    a.legend(fontsize="small")
    for p in ("xdp", "bmv2"):
        cells = result["table_sizes"][p]
        sizes = sorted(cells, key=int)
        line = b.plot([int(n) for n in sizes], [cells[n]["pps"] for n in sizes], marker="o",
                      label=p)[0]  # fmt: skip
        capped = [n for n in sizes if cells[n]["limited_by_generator"]]
        b.plot([int(n) for n in capped], [cells[n]["pps"] for n in capped], "o", markersize=10,
               markerfacecolor="none", color=line.get_color())  # fmt: skip
    b.axhline(ceiling, color="grey", linestyle="--", linewidth=1)
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("installed NAT rules (traffic spread over all); ringed: generator-bound")
    b.set_ylabel("packets/s delivered (log)")
    b.set_title("(b) by flow-table size")
    b.legend(fontsize="small")
    fig.suptitle("bmv2 is a software model standing in for a DPU: the mechanism, not its speed;"
                 " ≥: the generator's limit, not the path's", fontsize="small")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measured(measure: Callable[..., dict], *args) -> dict:
    """One cell of the figure; a failure is reported in its place, and the run goes on."""
    try:
        return measure(*args)
    except Exception as exc:
        log(f"failed: {exc!r}")
        return {"error": repr(exc), "pps": 0, "limited_by_generator": False}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per offered rate")
    ap.add_argument("--sizes", default="1,1000,10000,100000", help="flow-table sizes (12b)")
    ap.add_argument("--latency-samples", type=int, default=2000)
    ap.add_argument("--slow-latency-samples", type=int, default=300)
    ap.add_argument("--plot", help="write a Figure-12-like PNG (needs matplotlib)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the benchmark loads BPF programs and creates namespaces",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.plot:
        pyplot()  # fail before the long run, not after it
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.monotonic()
    log("harness ceiling")
    result: dict = {"command": " ".join(["bench/dpu.py", *(argv or sys.argv[1:])]),
                    "harness": harness(args), "flows": {}, "table_sizes": {}}  # fmt: skip
    for kind in ("nat", "vxlan"):
        result["flows"][kind] = {}
        for path in ("xdp", "bmv2"):
            log(f"{kind} on {path}")
            result["flows"][kind][path] = measured(fast_path, kind, path, 1, args)
    log("slow path (FM and an SC group of three)")
    counter = iter(range(1, 1 << 30))
    with SlowPathLab(scgs=1, nodes_per_scg=3, mode="native", extra_tenants=[vxlan_tenant()],
                     extra_rules=vxlan_rules) as lab:  # fmt: skip
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "fm1 to lead")
        for kind in ("nat", "vxlan"):
            log(f"{kind} on the slow path")
            result["flows"][kind]["slow_path"] = measured(slow_path, kind, lab, args, counter)
    for path in ("xdp", "bmv2"):
        result["table_sizes"][path] = {}
        for n in sizes:
            log(f"nat on {path} with {n} rules")
            result["table_sizes"][path][str(n)] = measured(fast_path, "nat", path, n, args)
    result["seconds"] = round(time.monotonic() - started)
    print(json.dumps(result))
    if args.plot:
        plot(result, args.plot)
        log(f"plot written to {Path(args.plot).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
