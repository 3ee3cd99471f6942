"""`cyberstar build`: regenerate P4, P4Info and XDP C from the pipeline spec."""

from __future__ import annotations

import argparse
from pathlib import Path

from cyberstar.codegen import write_artifacts
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.pp import PIPELINE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="generate p4src/pp.p4, p4src/pp.p4info.txtpb and ebpf/pp_xdp.c from the spec",
        description="Generate the P4_16 program, its P4Info and the XDP C program from the "
        "pipeline spec (controller/cyberstar/pipeline/pp.py).",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT,
        help="root directory to write p4src/ and ebpf/ under (default: the repository)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in write_artifacts(PIPELINE, args.out):
        print(path)
    return 0
