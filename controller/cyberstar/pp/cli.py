"""`cyberstar pp serve`: run an XDP PP node served over P4Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from cyberstar.errors import UsageError
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
    tls = serve.add_argument_group(
        "security", "mutual TLS (certificates from `cyberstar certs init`), or --plaintext"
    )
    tls.add_argument("--tls-ca", type=Path, metavar="CA.crt", help="the CA of every client")
    tls.add_argument("--tls-cert", type=Path, metavar="NODE.crt", help="this node's certificate")
    tls.add_argument("--tls-key", type=Path, metavar="NODE.key", help="this node's key")
    tls.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS: only on loopback or a unix socket (a lab on one host)",
    )
    serve.add_argument("--device-id", type=int, default=1)
    serve.add_argument("--mode", choices=["native", "skb"], help="force an XDP mode")
    serve.add_argument("--netns", help="the interfaces live in this network namespace")
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics (HTTPS wanting a client certificate of the CA under TLS)",
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


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """--tls-ca/--tls-cert/--tls-key (all three), or --plaintext (None); nothing implied."""
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if args.plaintext:
        if any(given):
            raise UsageError("--plaintext and --tls-* exclude each other: choose one")
        return None
    if not all(given):
        raise UsageError(
            "P4Runtime needs --tls-ca, --tls-cert and --tls-key (`cyberstar certs init DIR "
            "pp:NAME` makes them), or --plaintext for a loopback-only lab"
        )
    return TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)


def run(args: argparse.Namespace) -> int:
    from cyberstar.pp.agent import run_agent
    from cyberstar.pp.ratemanager import load_rate_policy

    tls = tls_files(args)
    policy = load_rate_policy(args.rate_policy) if args.rate_policy else None
    return run_agent(
        args.iface, args.grpc, args.device_id, args.mode, args.netns, args.metrics, tls,
        args.flow_quota, policy,
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
