"""The `cyberstar OBJECT VERB` command line.

Each area of the project owns its sub-commands: a module exposes `register(subparsers)` that
adds its parsers and sets `func` on them; `main` only wires them together. Exit codes: 0 success,
1 runtime failure, 2 bad input (usage, invalid files), as documented in the README.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cyberstar.errors import RuntimeFailure, UsageError

# Modules that contribute sub-commands; each has `register(subparsers) -> None`.
COMMAND_MODULES = (
    "cyberstar.commands.build",
    "cyberstar.commands.doctor",
    "cyberstar.commands.pcap",
    "cyberstar.commands.demo",
    "cyberstar.commands.pp",
    "cyberstar.sc.cli",
    "cyberstar.fm.cli",
    "cyberstar.orchestrator.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyberstar",
        description="Elastic multi-tenant network functions on P4 (bmv2) and XDP data planes.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv`, log as `-v` asks, run the chosen command and turn its errors into the
    exit codes above."""
    args = parser.parse_args(argv)
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
