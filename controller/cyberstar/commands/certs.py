"""`cyberstar certs init DIR ROLE:NAME[=ADDR,...] ...`: a lab CA and per-node certificates."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cyberstar.certs import ROLES, CertError, NodeSpec, init
from cyberstar.errors import UsageError
from cyberstar.verbs import Verb


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, metavar="DIR", help="where the CA and certificates go")
    p.add_argument(
        "nodes",
        nargs="*",
        metavar="ROLE:NAME[=ADDR,...]",
        help=f"a node certificate to make; roles: {', '.join(ROLES)}",
    )
    p.add_argument("--days", type=int, default=365, help="validity of node certificates")
    p.add_argument("--force", action="store_true", help="remake existing node certificates")


def run(args: argparse.Namespace) -> int:
    try:
        specs = [NodeSpec.parse(n) for n in args.nodes]
        if args.days < 1:
            raise CertError(f"--days must be at least 1, found {args.days}")
        made = init(args.dir, specs, args.days, args.force)
    except CertError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{args.dir}: {exc.strerror or exc}") from None
    out = {"ca": str(args.dir / "ca.crt")}
    out.update({name: {"cert": str(f.cert), "key": str(f.key)} for name, f in made.items()})
    print(json.dumps(out, indent=2))
    return 0


INIT = Verb(
    help="make a lab CA and per-node certificates for mutual TLS",
    description="Create (or reuse) the CA in DIR (ca.crt, ca.key) and, for each ROLE:NAME, "
    "NAME.crt and NAME.key (mode 0600): common name NAME, organizational unit ROLE, valid for "
    "server and client use on localhost, 127.0.0.1, ::1, NAME and the addresses after '='. "
    "Existing node certificates are kept unless --force. Prints the paths as JSON. See "
    "docs/security.md.",
    epilog="example: cyberstar certs init certs sc:sc1a=10.0.0.5 fm:fm1 pp:pp1 admin:ops",
    arguments=arguments,
    run=run,
)
