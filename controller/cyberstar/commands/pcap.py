"""`cyberstar pcap run`: push a pcap through the ref, xdp or bmv2 target."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cyberstar.errors import TargetUnavailable, UsageError
from cyberstar.pcap.pcapfile import PcapError, read_pcap
from cyberstar.pcap.runner import run_packets, write_results
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import RulesError, load_rules
from cyberstar.targets import Target
from cyberstar.verbs import Verb

log = logging.getLogger(__name__)
TARGETS = ("ref", "xdp", "bmv2")


def arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--target", choices=TARGETS, required=True)
    run.add_argument("--rules", type=Path, required=True, help="JSON list of table entries")
    run.add_argument("--in", dest="inp", type=Path, required=True, help="input pcap")
    run.add_argument("--out-dir", type=Path, required=True)
    run.add_argument("--ingress-port", type=int, default=1, help="port packets arrive on (1)")


def make_target(name: str) -> Target:
    if name == "ref":
        from cyberstar.targets.ref import RefTarget

        return RefTarget()
    if name == "xdp":
        from cyberstar.targets.xdp import XdpTarget

        return XdpTarget()
    from cyberstar.targets.bmv2 import Bmv2Target

    return Bmv2Target()


def run_command(args: argparse.Namespace) -> int:
    if not 0 <= args.ingress_port < PIPELINE.constants["MAX_PORTS"]:
        raise UsageError(
            f"--ingress-port must be 0..{PIPELINE.constants['MAX_PORTS'] - 1}, "
            f"found {args.ingress_port}"
        )
    try:
        entries = load_rules(args.rules, PIPELINE)
        packets = read_pcap(args.inp)
    except (RulesError, PcapError) as exc:
        raise UsageError(str(exc)) from None
    try:
        target = make_target(args.target)
    except TargetUnavailable as exc:
        raise UsageError(f"target {args.target}: {exc}") from None
    try:
        target.install(entries)
        report = run_packets(target, packets, args.ingress_port)
    finally:
        target.close()
    write_results(args.out_dir, packets, report)
    print(json.dumps({"target": args.target, **report.summary()}))
    return 0


RUN = Verb(
    help="push IN.pcap through a target with RULES.json installed",
    description="Writes DIR/verdicts.jsonl (one line per input packet: index, verdict, "
    "port, and a drop's drop_reason) and DIR/out.pcap (bytes of forwarded and punted "
    "packets, in input order). "
    "Prints a JSON summary. Exit codes: 0 done, 1 the target failed, 2 bad input or "
    "target not installed.",
    arguments=arguments,
    run=run_command,
)
