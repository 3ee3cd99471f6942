"""`cyberstar pp serve`: run an XDP PP node served over P4Runtime; `cyberstar pp tenants`:
its tenants' rates and credit, read over P4Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from cyberstar.errors import RuntimeFailure, UsageError
from cyberstar.pp import PUNT_COALESCE_US
from cyberstar.tls import TlsFiles
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
        required=True,
        metavar="ADDR",
        help="P4Runtime listen address (host:port or unix:PATH)",
    )
    tls_arguments(serve, peer="every client", own="this node's")
    serve.add_argument("--device-id", type=int, default=1)
    serve.add_argument("--mode", choices=["native", "skb"], help="force an XDP mode")
    serve.add_argument("--netns", help="the interfaces live in this network namespace")
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics (HTTPS wanting a client certificate of the CA under TLS)",
    )
    serve.add_argument(
        "--flow-table-size",
        type=int,
        metavar="N",
        help="flow-table entries the node holds (default: the pipeline's 1048576). The "
        "kernel array takes 160 bytes per entry of N at start; the agent about 90 per entry "
        "held (bench/scale.py at 1M entries)",
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
        "--punt-coalesce-us",
        type=int,
        default=PUNT_COALESCE_US,
        metavar="US",
        help="after a read of the kernel's punt buffer that found several punts (a busy "
        "node), wait this long before the next, so that punts leave in fewer, larger "
        f"messages; a lone punt is never delayed. 0 disables (default {PUNT_COALESCE_US})",
    )
    serve.add_argument(
        "--rate-policy",
        type=Path,
        metavar="FILE",
        help="per-tenant credit-based rates (YAML: capacity, interval, tenants; see README)",
    )


def tls_arguments(parser: argparse.ArgumentParser, peer: str, own: str) -> None:
    tls = parser.add_argument_group(
        "security", "mutual TLS (certificates from `cyberstar certs init`), or --plaintext"
    )
    tls.add_argument("--tls-ca", type=Path, metavar="CA.crt", help=f"the CA of {peer}")
    tls.add_argument("--tls-cert", type=Path, metavar="CERT.crt", help=f"{own} certificate")
    tls.add_argument("--tls-key", type=Path, metavar="CERT.key", help=f"{own} key")
    tls.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS: only on loopback or a unix socket (a lab on one host)",
    )


def tls_files(args: argparse.Namespace, certificate: str = "pp:NAME") -> TlsFiles | None:
    """--tls-ca/--tls-cert/--tls-key (all three), or --plaintext (None); nothing implied."""
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if args.plaintext:
        if any(given):
            raise UsageError("--plaintext and --tls-* exclude each other: choose one")
        return None
    if not all(given):
        raise UsageError(
            "P4Runtime needs --tls-ca, --tls-cert and --tls-key (`cyberstar certs init DIR "
            f"{certificate}` makes them), or --plaintext for a loopback-only lab"
        )
    return TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)


def run(args: argparse.Namespace) -> int:
    from cyberstar.pp.agent import run_agent
    from cyberstar.pp.ratemanager import load_rate_policy

    tls = tls_files(args)
    policy = load_rate_policy(args.rate_policy) if args.rate_policy else None
    return run_agent(
        args.iface, args.grpc, args.device_id, args.mode, args.netns, args.metrics, tls,
        args.flow_quota, policy, args.flow_table_size, args.punt_coalesce_us,
    )  # fmt: skip


SERVE = Verb(
    help="load the XDP program on interfaces and serve P4Runtime",
    description="Load the generated XDP program on the given interfaces (ports 1, 2, ... "
    "in the order given, or PORT@IFNAME) and serve P4Runtime. Native XDP where the driver "
    "supports it, with a logged fallback to skb mode unless --mode forces one. P4Runtime is "
    "mutual TLS (clients need a certificate of role fm or admin from the same CA) unless "
    "--plaintext. Stops cleanly on SIGTERM/SIGINT. Exit codes: 0 stopped, 1 runtime failure "
    "(cannot listen, a program did not load), 2 bad arguments.",
    arguments=arguments,
    run=run,
)


SCAN_S = 120.0  # the longest a Read of every meter and counter cell may take


def tenants_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grpc",
        default="127.0.0.1:9559",
        metavar="ADDR",
        help="the node's P4Runtime address (host:port or unix:PATH)",
    )
    tls_arguments(parser, peer="the node", own="an admin's")
    parser.add_argument("--device-id", type=int, default=1)
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the node"
    )
    parser.add_argument(
        "--tenant",
        type=int,
        action="append",
        default=[],
        metavar="T",
        help="show tenant T too (repeat); default: the tenants of the node's rate policy",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="every tenant with a configured meter cell or a packet counted (reads every "
        "cell: slower); the default on a node without a rate policy",
    )


def tenants(args: argparse.Namespace) -> int:
    from grpc import StatusCode

    from cyberstar.p4rt.client import P4RuntimeClient
    from cyberstar.p4rt.errors import P4RuntimeError
    from cyberstar.pipeline.pp import PIPELINE
    from cyberstar.pp.tenants import format_table, read_tenants

    tls = tls_files(args, certificate="admin:NAME")
    # --timeout bounds the wait for the node; a scan of every cell may take longer
    client = P4RuntimeClient(args.grpc, args.device_id, timeout=max(args.timeout, SCAN_S), tls=tls)
    try:
        client.wait_ready(args.timeout)
        views, has_policy = read_tenants(client, PIPELINE, args.tenant, args.all)
    except P4RuntimeError as exc:
        if exc.code == StatusCode.UNAVAILABLE:
            raise RuntimeFailure(
                f"no P4Runtime server answered at {args.grpc} within {args.timeout:g} s: is "
                "`cyberstar pp serve` running there (check --grpc)?"
            ) from None
        if exc.code == StatusCode.FAILED_PRECONDITION:
            raise RuntimeFailure(
                f"the node at {args.grpc} has no forwarding pipeline yet, so no meters or "
                "counters: its controller (FM) sets it; try again once it has"
            ) from None
        raise RuntimeFailure(f"{args.grpc}: {exc.message}") from None
    finally:
        client.close()
    print(format_table(views))
    if not has_policy:
        print(f"({args.grpc} runs no rate policy: `pp serve --rate-policy FILE` starts one)")
    return 0


TENANTS = Verb(
    help="show each tenant's credit state, rates and counters on a running PP node",
    description="Read a PP node's per-tenant rate state over P4Runtime and print a table: the "
    "credit policy's state, credit, base and burst rates and the rates it measured (when the "
    "node runs `pp serve --rate-policy`), the rate the tenant_rate meter holds the tenant to "
    "now (METER/s, '-': not limited), and the tenant_packets and tenant_rate_drops counters. "
    "Tenants listed: those of the node's policy and --tenant; with --all, or on a node "
    "without a policy, every tenant with a configured meter cell or a packet counted.",
    arguments=tenants_arguments,
    run=tenants,
)
