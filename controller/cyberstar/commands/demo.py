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
from dataclasses import dataclass
from pathlib import Path

from cyberstar import packets
from cyberstar.codegen import artifacts, write_artifacts
from cyberstar.paths import REPO_ROOT
from cyberstar.pcap.pcapfile import Packet, write_pcap
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import load_rules
from cyberstar.ref.parser import Malformed, parse
from cyberstar.targets import Outcome, Target, TargetUnavailable

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build the pipeline and push demo flows through the ref and xdp targets",
        description=__doc__,
    )
    p.add_argument("--rules", type=Path, default=DEMO_RULES, help="rules file to install")
    p.add_argument("--out-dir", type=Path, default=Path("out/demo"), help="where to write pcaps")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


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
    if args.json:
        print(json.dumps({"artifacts_match_spec": same, "flows": report, "note": note}))
    else:
        _print_report(report, [t.name for t in targets], same, len(entries), args, note)
    return 0 if all(r["agree"] for r in report) and same else 1


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
