"""The `cyberstar OBJECT VERB` command line.

`COMMANDS` is the one list of every command. Each verb's code stays with its package, as a
`cyberstar.verbs.Verb` named here by "module:attribute"; only the object named on the command
line is imported, so a daemon started as `python -m cyberstar.cli sc serve` loads SC and not
the rest. Exit codes: 0 success, 1 runtime failure, 2 bad input (usage, invalid files), as
documented in the README.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cyberstar.errors import RuntimeFailure, UsageError
from cyberstar.grpc_transport import select_transports
from cyberstar.verbs import Verb

# object → (its help, {verb: "module:attribute" of a Verb}); the verb None is the object's
# own command (`cyberstar build`, `cyberstar place --algo ...`).
COMMANDS: dict[str, tuple[str, dict[str | None, str]]] = {
    "build": (
        "generate p4src/pp.p4, p4src/pp.p4info.txtpb and ebpf/pp_xdp.c from the spec",
        {None: "cyberstar.commands.build:BUILD"},
    ),
    "doctor": (
        "check this host (BPF/XDP, headers, bpffs, BCC, netns, bmv2/p4c, etcd)",
        {None: "cyberstar.commands.doctor:DOCTOR"},
    ),
    "demo": (
        "build the pipeline and push demo flows through the ref and xdp targets",
        {None: "cyberstar.commands.demo:DEMO"},
    ),
    "pcap": ("run pcaps through a PP target", {"run": "cyberstar.commands.pcap:RUN"}),
    "certs": (
        "a lab CA and per-node certificates for mutual TLS",
        {"init": "cyberstar.commands.certs:INIT"},
    ),
    "pp": (
        "packet-processing (PP) nodes",
        {"serve": "cyberstar.pp.cli:SERVE", "tenants": "cyberstar.pp.cli:TENANTS"},
    ),
    "fm": (
        "the Fabric Master (slow path, rule cache, fabric)",
        {"serve": "cyberstar.fm.cli:SERVE"},
    ),
    "sc": ("the Service Computing plane", {"serve": "cyberstar.sc.cli:SERVE"}),
    "lab": (
        "experiments: the whole system in Mininet under load, scaling and failing",
        {"run": "cyberstar.lab.cli:RUN"},
    ),
    "place": (
        "place NF requests on machines (ff, bf, ilp, drl); check, train, generate, simulate",
        {
            None: "cyberstar.orchestrator.cli:PLACE",
            "check": "cyberstar.orchestrator.cli:CHECK",
            "train": "cyberstar.orchestrator.cli:TRAIN",
            "generate": "cyberstar.orchestrator.cli:GENERATE",
            "simulate": "cyberstar.orchestrator.cli:SIMULATE",
        },
    ),
}


def load_verb(target: str) -> Verb:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: every object is listed, only the one `argv` names is loaded
    (all of them when `argv` is None)."""
    parser = argparse.ArgumentParser(
        prog="cyberstar",
        description="Elastic multi-tenant network functions on P4 (bmv2) and XDP data planes.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for obj, (obj_help, verbs) in COMMANDS.items():
        if named is not None and obj != named:
            sub.add_parser(obj, help=obj_help)
            continue
        own = verbs.get(None)
        options = load_verb(own).parser_options() if own else {"description": obj_help}
        obj_parser = sub.add_parser(obj, help=obj_help, **options)
        if own:
            _attach(obj_parser, load_verb(own))
        if len(verbs) > (1 if own else 0):
            verb_parsers = obj_parser.add_subparsers(
                dest="verb", metavar="VERB", required=own is None
            )
            for name, target in verbs.items():
                if name is not None:
                    verb = load_verb(target)
                    options = verb.parser_options()
                    _attach(verb_parsers.add_parser(name, help=verb.help, **options), verb)
    return parser


def _attach(parser: argparse.ArgumentParser, verb: Verb) -> None:
    verb.arguments(parser)
    parser.set_defaults(func=verb.run)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, log as `-v` asks, run the chosen command and turn its errors into the
    exit codes above."""
    select_transports()  # before a verb's module imports gRPC
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"cyberstar: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeFailure as exc:
        print(f"cyberstar: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
