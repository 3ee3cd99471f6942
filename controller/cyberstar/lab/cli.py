"""`cyberstar lab run SCENARIO.yaml`: a whole cyberstar system in Mininet under load, with
timed events; writes report.json and PNG plots (docs/lab.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cyberstar.errors import RuntimeFailure, UsageError
from cyberstar.verbs import Verb


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", type=Path, help="the scenario (topologies/scenarios/*.yaml)")
    p.add_argument(
        "--out",
        type=Path,
        help="where to write report.json, the plots and the "
        "logs (default: out/lab/<scenario name>)",
    )
    p.add_argument("--json", action="store_true", help="print report.json on stdout")


def run(args: argparse.Namespace) -> int:
    from cyberstar.lab.procs import LabError
    from cyberstar.lab.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    if os.geteuid() != 0:
        raise UsageError("cyberstar lab run needs root (network namespaces, XDP): run it as root")
    out = args.out or Path("out/lab") / scenario.name
    say = (
        (lambda m: print(m, file=sys.stderr, flush=True))
        if args.json
        else (lambda m: print(m, flush=True))
    )
    from cyberstar.lab.plots import draw
    from cyberstar.lab.report import summary_lines
    from cyberstar.lab.runner import ScenarioRun

    run_ = ScenarioRun(scenario, out, say)
    try:
        report = run_.run()
    except LabError as exc:
        raise RuntimeFailure(f"{exc} (logs under {out / 'work'})") from None
    assert run_.logs is not None and run_.series is not None
    report["files"] = {
        "report": str(out / "report.json"),
        "telemetry": str(out / "telemetry.jsonl"),
        "clients": str(out / "clients"),
        "logs": str(out / "work"),
    }
    plots = draw(scenario.plots, report, run_.logs, run_.series, out)
    report["files"]["plots"] = [str(p) for p in plots]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
    else:
        for line in summary_lines(report):
            print(line)
        print(f"  report: {out / 'report.json'}; plots: {', '.join(str(p) for p in plots)}")
    return 0 if report["ok"] else 1


RUN = Verb(
    help="run a lab scenario: the whole system in Mininet, traffic, scaling and failures",
    description="Build the scenario's topology in Mininet (tenant hosts, a vSwitch with ECMP "
    "routes to PP groups, XDP PP nodes, FMs, SC groups, etcd, nginx backends), drive real TCP "
    "connections from the tenants, apply the scenario's timed events (PP scale out/in, PP "
    "crash, FM failover, SC scale out/in, bursts) and its autoscaling policy, print progress, "
    "and write report.json and PNG plots. Exit codes: 0 every check passed, 1 a check failed "
    "or the lab failed, 2 a bad scenario. The format is in docs/lab.md.",
    arguments=arguments,
    run=run,
)
