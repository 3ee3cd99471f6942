"""`cyberstar pp serve`: run an XDP PP node served over P4Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from cyberstar.verbs import Verb


def arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--iface",
        action="append",
        required=True,
        metavar="IF",
        help="an interface (repeat for more ports); PORT@IF picks the number",
    )
    serve.add_argument(
        "--grpc",
        default="127.0.0.1:9559",
        metavar="ADDR",
        help="P4Runtime listen address (host:port or unix:PATH)",
    )
    serve.add_argument("--device-id", type=int, default=1)
    serve.add_argument("--mode", choices=["native", "skb"], help="force an XDP mode")
    serve.add_argument("--netns", help="the interfaces live in this network namespace")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics")
    serve.add_argument(
        "--flow-table-size",
        type=int,
        metavar="N",
        help="flow-table entries the node holds (its kernel map's size; default: the "
        "pipeline's 1048576). About 170 bytes of kernel memory and 90 of the agent's "
        "each (bench/scale.py at 1M entries)",
    )
    serve.add_argument(
        "--flow-quota",
        action="append",
        default=[],
        metavar="N|TENANT=N",
        help="flow-table entries a tenant may hold on this node: N for every tenant, "
        "TENANT=N for one (repeat); beyond it INSERTs are RESOURCE_EXHAUSTED and the "
        "tenant's misses are dropped (counted as flow_quota). Default: no quota",
    )
    serve.add_argument(
        "--rate-policy",
        type=Path,
        metavar="FILE",
        help="per-tenant credit-based rates (YAML: capacity, interval, tenants; see README)",
    )


def run(args: argparse.Namespace) -> int:
    from cyberstar.pp.agent import run_agent
    from cyberstar.pp.ratemanager import load_rate_policy

    policy = load_rate_policy(args.rate_policy) if args.rate_policy else None
    return run_agent(
        args.iface, args.grpc, args.device_id, args.mode, args.netns, args.metrics,
        args.flow_quota, policy, args.flow_table_size,
    )  # fmt: skip


SERVE = Verb(
    help="load the XDP program on interfaces and serve P4Runtime",
    description="Load the generated XDP program on the given interfaces (ports 1, 2, ... "
    "in the order given, or PORT@IFNAME) and serve P4Runtime. Native XDP where the driver "
    "supports it, with a logged fallback to skb mode unless --mode forces one. Stops "
    "cleanly on SIGTERM/SIGINT.",
    arguments=arguments,
    run=run,
)
