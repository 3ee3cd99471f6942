"""`cyberstar demo`: build the pipeline, install SNAT/LB rules, push flows through ref and xdp.

A short, readable tour of the data plane: each flow's first frame goes through the reference
model and through the generated XDP program in the kernel, and the demo prints what happened to
it on each (verdict, port, rewritten 5-tuple) and whether the targets agree byte for byte.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cyberstar import packets
from cyberstar.codegen import artifacts, write_artifacts
from cyberstar.errors import RuntimeFailure, TargetUnavailable
from cyberstar.paths import REPO_ROOT
from cyberstar.pcap.pcapfile import Packet, write_pcap
from cyberstar.pipeline.frames import Malformed, parse
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import load_rules
from cyberstar.targets import Outcome, Target
from cyberstar.verbs import Verb

DEMO_RULES = REPO_ROOT / "examples" / "demo-rules.json"
CLIENT_MAC, PP_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01"


@dataclass(frozen=True)
class Flow:
    label: str
    ingress_port: int
    frame: bytes


def demo_flows() -> list[Flow]:
    return [
        Flow(
            "client → web VIP, SNAT",
            1,
            packets.tcp_frame(CLIENT_MAC, PP_MAC, "192.168.1.2", "10.0.0.5", 40001, 80, b"GET /"),
        ),
        Flow(
            "web → client, return of SNAT",
            2,
            packets.tcp_frame(PP_MAC, CLIENT_MAC, "10.0.0.5", "203.0.113.9", 80, 50000, b"200 OK"),
        ),
        Flow(
            "client → LB VIP :443, to backend",
            1,
            packets.tcp_frame(CLIENT_MAC, PP_MAC, "192.168.1.3", "10.0.0.100", 40002, 443),
        ),
        Flow(
            "client DNS over UDP, SNAT",
            1,
            packets.udp_frame(CLIENT_MAC, PP_MAC, "192.168.1.2", "10.0.0.53", 40003, 53, b"q"),
        ),
        Flow(
            "new flow, no rule yet",
            1,
            packets.tcp_frame(CLIENT_MAC, PP_MAC, "192.168.1.9", "10.0.0.5", 40009, 80),
        ),
        Flow(
            "client blocked by ACL (telnet)",
            1,
            packets.tcp_frame(CLIENT_MAC, PP_MAC, "192.168.1.2", "10.0.0.5", 40010, 23),
        ),
        Flow("ARP for the VIP", 1, packets.arp_request(CLIENT_MAC, "192.168.1.2", "10.0.0.5")),
        Flow(
            "malformed: total length lies",
            1,
            packets.tcp_frame(CLIENT_MAC, PP_MAC, "192.168.1.2", "10.0.0.5", 40001, 80)[:40],
        ),
    ]


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", type=Path, default=DEMO_RULES, help="rules file to install")
    p.add_argument("--out-dir", type=Path, default=Path("out/demo"), help="where to write pcaps")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--no-lab",
        action="store_true",
        help="skip the second part: real TCP through PP, FM and SC processes",
    )


def describe(outcome: Outcome) -> str:
    if outcome.verdict == "forward" and outcome.output is not None:
        return f"forward port {outcome.port}: {five_tuple(outcome.output)}"
    if outcome.verdict == "drop":
        return f"drop ({outcome.drop_reason})"
    return outcome.verdict


def five_tuple(frame: bytes) -> str:
    try:
        p = parse(frame)
    except Malformed as exc:
        return f"malformed ({exc.reason})"
    prefix = "inner_" if p.has("inner_ipv4") else ""
    if not p.has(f"{prefix}ipv4"):
        return "non-IP"
    ip = p.headers[f"{prefix}ipv4"]
    l4 = p.headers.get(f"{prefix}tcp") or p.headers.get(f"{prefix}udp") or {}
    src = ipaddress.IPv4Address(ip["src_addr"])
    dst = ipaddress.IPv4Address(ip["dst_addr"])
    return f"{src}:{l4.get('src_port', '-')} → {dst}:{l4.get('dst_port', '-')}"


def _targets() -> tuple[list[Target], str | None]:
    from cyberstar.targets.ref import RefTarget

    targets: list[Target] = [RefTarget()]
    note = None
    try:
        from cyberstar.targets.xdp import XdpTarget

        targets.append(XdpTarget())
    except TargetUnavailable as exc:
        note = f"xdp target skipped: {exc}"
    return targets, note


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(PIPELINE, Path(tmp))
        same = all(
            (Path(tmp) / a.path).read_text() == (REPO_ROOT / a.path).read_text()
            for a in artifacts(PIPELINE)
        )
    entries = load_rules(args.rules, PIPELINE)
    flows = demo_flows()
    targets, note = _targets()
    try:
        for t in targets:
            t.install(entries)
        results = [[t.process(f.frame, f.ingress_port) for t in targets] for f in flows]
    finally:
        for t in targets:
            t.close()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_pcap(args.out_dir / "in.pcap", (Packet(f.frame, i) for i, f in enumerate(flows)))
    report = [
        {
            "flow": f.label,
            "ingress_port": f.ingress_port,
            "in": five_tuple(f.frame),
            **{t.name: describe(o) for t, o in zip(targets, outcomes, strict=True)},
            "agree": all(o == outcomes[0] for o in outcomes),
        }
        for f, outcomes in zip(flows, results, strict=True)
    ]
    lab = None if args.no_lab else run_lab()
    if args.json:
        print(json.dumps({"artifacts_match_spec": same, "flows": report, "note": note,
                          "lab": lab}))  # fmt: skip
    else:
        _print_report(report, [t.name for t in targets], same, len(entries), args, note)
        _print_lab(lab)
    ok = all(r["agree"] for r in report) and same
    return 0 if ok else 1


def run_lab() -> dict:
    """Part two: the slow path for real. Returns what happened (or why it was skipped)."""
    import shutil

    if os.geteuid() != 0 or shutil.which("etcd") is None:
        return {"skipped": "needs root and etcd (make install)"}
    from cyberstar.lab.slowpath import (
        SERVER_PORT,
        SERVERS,
        VIP,
        VIP_PORT,
        SlowPathLab,
    )
    from cyberstar.lab.wait import wait_until

    out: dict = {"steps": []}
    with SlowPathLab(scgs=1, nodes_per_scg=3, mode="native") as lab:
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "FM to lead")
        conns = []
        for dst, port, what in ((SERVERS[0], SERVER_PORT, "SNAT"), (VIP, VIP_PORT, "LB")):
            t0 = time.perf_counter()
            s = lab.connect(dst, port)
            client, seen = lab.accepted[-1]
            out["steps"].append(
                f"{what}: client {client} → {dst}:{port} connected in "
                f"{(time.perf_counter() - t0) * 1000:.1f} ms; the server saw {seen[0]}:{seen[1]}"
            )
            conns.append(s)
        status = lab.fm_get("fm1", "/status")
        out["steps"].append(
            f"FM: {status['slow_path'].get('sc_requests', 0)} rule requests to SC, "
            f"{status['cached_rules']} rules cached"
        )
        lab.restart_pp()
        for s in conns:
            s.sendall(b"after the PP restart")
            if s.recv(100) != b"echo:after the PP restart":
                raise RuntimeFailure("a connection broke across the PP restart")
            s.close()
        after = lab.fm_get("fm1", "/status")["slow_path"]
        out["steps"].append(
            "PP agent restarted: both connections still work, answered from FM's cache "
            f"({after.get('cache_hits', 0)} cache hits, "
            f"{after.get('sc_requests', 0)} SC requests in all)"
        )
    return out


def _print_lab(lab: dict | None) -> None:
    if lab is None:
        return
    print()
    print("  the slow path, for real: client ns → XDP PP → server ns; FM and an SC group of three")
    if "skipped" in lab:
        print(f"  skipped: {lab['skipped']}")
        return
    for step in lab["steps"]:
        print(f"    {step}")


def _print_report(
    report: list[dict],
    names: list[str],
    same: bool,
    n_rules: int,
    args: argparse.Namespace,
    note: str | None,
) -> None:
    print("cyberstar demo")
    state = "match" if same else "DIFFER from"
    print(f"  pipeline: P4, P4Info and XDP C regenerated from the spec; they {state} p4src/, ebpf/")
    print(f"  rules: {n_rules} entries from {args.rules}")
    if os.geteuid() == 0 and note is None:
        print("  xdp: the generated program runs in the kernel (BPF_PROG_TEST_RUN)")
    if note:
        print(f"  {note}")
    print()
    for r in report:
        print(f"  {r['flow']}  [port {r['ingress_port']}]  {r['in']}")
        for name in names:
            print(f"      {name:>4}: {r[name]}")
        print(f"      {'same bytes on every target' if r['agree'] else 'TARGETS DISAGREE'}")
    print()
    print(f"  input frames written to {args.out_dir / 'in.pcap'}; replay one target with")
    print(
        f"  cyberstar pcap run --target xdp --rules {args.rules} --in {args.out_dir / 'in.pcap'}"
        " --out-dir out/run"
    )


DEMO = Verb(
    help="build the pipeline and push demo flows through the ref and xdp targets",
    description=__doc__,
    arguments=arguments,
    run=run,
)
