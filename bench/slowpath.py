#!/usr/bin/env python3
"""New connections per second through the whole slow path, against Linux nftables SNAT.

Prints one JSON object:
* `cyberstar`: real TCP connections (connect, one request/response, close) from the client
  namespace through the XDP PP node, every first packet punted to FM, computed by an SC group
  of three nodes, written back over P4Runtime and re-injected; connections per second and the
  client's connect() latency percentiles (the first packet's round trip through the slow path);
* `cyberstar_rule_requests`: rule requests per second FM + SC sustain when the PP is fed frames
  of new flows as fast as a sender can (synthetic PacketIns through the real pipeline);
* `nftables`: the same namespaces and client with a Linux router doing `snat` (conntrack) in
  the middle instead of cyberstar — the peer a user would otherwise pick.
Goals: cyberstar's CPS at least nftables'; first-packet P99 under 5 ms.

Run as root from the repository: .venv/bin/python bench/slowpath.py [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from cyberstar import netns, packets
from cyberstar.lab.slowpath import PUBLIC_IP, SERVER_PORT, SERVERS, SlowPathLab
from cyberstar.lab.wait import wait_until


def measure_cps(connect, seconds: float, workers: int) -> dict:
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(_: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                s = connect()
            except OSError:
                with lock:
                    errors[0] += 1
                continue
            dt = time.perf_counter() - t0
            s.close()
            with lock:
                latencies.append(dt)

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, range(workers)))
    elapsed = time.monotonic() - t0
    lat = sorted(latencies)
    pct = (lambda q: round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 2)) if lat else None
    return {
        "connections": len(lat),
        "errors": errors[0],
        "cps": round(len(lat) / elapsed),
        "connect_ms_p50": pct(0.5) if pct else None,
        "connect_ms_p99": pct(0.99) if pct else None,
        "connect_ms_mean": round(statistics.mean(lat) * 1000, 2) if lat else None,
    }


def blast(ns: str, ifname: str, dst_mac: str, seconds: float, sent) -> None:
    """Frames of ever new flows (distinct source ports and addresses) into the PP."""
    with netns.entered(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((ifname, 0))
    src_mac = "02:00:00:00:00:0a"
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        a, b = divmod(n, 60000)
        frame = packets.tcp_frame(src_mac, dst_mac, f"10.1.{(a % 200) + 20}.{(a // 200) % 250 + 1}",
                                  SERVERS[0], 1024 + b, 9)  # fmt: skip
        try:
            s.send(frame)
            n += 1
        except OSError:
            time.sleep(0.0005)
    sent.value = n


def bench_cyberstar(args) -> tuple[dict, dict]:
    with SlowPathLab(scgs=1, nodes_per_scg=3, mode="native") as lab:
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "fm1 to lead")
        lab.connect(SERVERS[0], SERVER_PORT).close()  # warm up
        cps = measure_cps(lambda: lab.connect(SERVERS[0], SERVER_PORT, 5), args.seconds,
                          args.workers)  # fmt: skip
        fm = lab.fm_get("fm1", "/status")
        cps["fm_punt_to_packet_out_ms"] = fm["first_packet_ms"]
        # Where a batch of first packets spends FM's time: asking SC, then Write + PacketOut.
        sc_batches = max(fm["slow_path"].get("sc_batches", 0), 1)
        cps["fm_ms_per_sc_batch"] = {
            phase.removesuffix("_seconds"): round(1000 * s / sc_batches, 2)
            for phase, s in fm["timings_s"].items()
        }
        sc_requests = fm["slow_path"].get("sc_requests", 0)
        cps["fm_packets_per_sc_batch"] = round(sc_requests / sc_batches, 1)
        # Synthetic PacketIns: a sender floods new flows into the PP's client-side port.
        before = fm["slow_path"].get("sc_requests", 0)
        pp_mac = netns.ip("-o", "link", "show", "pp1", ns=lab.ns["pp"]).stdout.split(
            "link/ether ")[1].split()[0]  # fmt: skip
        sent = multiprocessing.Value("q", 0)
        sender = multiprocessing.Process(
            target=blast, args=(lab.ns["client"], "c0", pp_mac, args.seconds, sent)
        )
        t0 = time.monotonic()
        sender.start()
        sender.join()
        time.sleep(1.0)  # let the last batches drain
        after = lab.fm_get("fm1", "/status")["slow_path"]
        elapsed = time.monotonic() - t0
        requests = after.get("sc_requests", 0) - before
        synthetic = {
            "frames_sent": sent.value,
            "rule_requests": requests,
            "rule_requests_per_s": round(requests / elapsed),
        }
        return cps, synthetic


def bench_nftables(args) -> dict:
    assert SERVERS[0] == "10.2.0.2"  # netns.line's server address
    with netns.line("n", ports=("r1", "r2")) as line:
        ns = {"client": line.client, "router": line.middle, "server": line.server}
        netns.ip("addr", "add", f"{PUBLIC_IP}/32", "dev", "r2", ns=ns["router"])
        netns.exec_in(ns["router"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        netns.exec_in(ns["client"], "sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999")
        ruleset = (
            "table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
            f'  oifname "r2" ip saddr 10.1.0.0/24 ip protocol tcp snat to {PUBLIC_IP}:20000-59999\n'
            " }\n}\n"
        )
        subprocess.run(["ip", "netns", "exec", ns["router"], "nft", "-f", "-"], input=ruleset,
                       text=True, check=True)  # fmt: skip
        stop = threading.Event()
        with netns.entered(ns["server"]):
            srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((SERVERS[0], SERVER_PORT))
        srv.listen(1024)
        srv.settimeout(0.2)

        def echo(conn: socket.socket) -> None:
            with conn:
                try:
                    while data := conn.recv(4096):
                        conn.sendall(b"echo:" + data)
                except OSError:
                    pass

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

        def connect() -> socket.socket:
            with netns.entered(ns["client"]):
                s = socket.socket()
            s.settimeout(5)
            s.connect((SERVERS[0], SERVER_PORT))
            s.sendall(b"hello\n")
            if not s.recv(100).startswith(b"echo:"):
                raise OSError("bad echo")
            return s

        result = measure_cps(connect, args.seconds, args.workers)
        stop.set()
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    cyber, synthetic = bench_cyberstar(args)
    nft = bench_nftables(args)
    print(json.dumps({
        "cyberstar": cyber,
        "cyberstar_rule_requests": synthetic,
        "nftables": nft,
        "cps_ratio_cyberstar_over_nftables": round(cyber["cps"] / max(nft["cps"], 1), 2),
        "goals": {"cps_ratio_min": 1.0, "first_packet_p99_ms_max": 5.0},
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
