"""`cyberstar fm serve --config FM.yaml`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from cyberstar.verbs import Verb


def arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", type=Path, required=True, metavar="FM.yaml")


def run(args: argparse.Namespace) -> int:
    from cyberstar.fm.config import load_fm_config
    from cyberstar.fm.master import serve_fm

    return asyncio.run(serve_fm(load_fm_config(args.config)))


SERVE = Verb(
    help="run a Fabric Master",
    description="Program the PP nodes of FM.yaml over P4Runtime, answer their PacketIns with "
    "rules from SC (or from the rule cache) and keep a hot standby when another FM leads. "
    "Exit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime failure, 2 bad configuration.",
    arguments=arguments,
    run=run,
)
