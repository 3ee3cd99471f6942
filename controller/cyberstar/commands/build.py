"""`cyberstar build`: regenerate P4, P4Info and XDP C from the pipeline spec."""

from __future__ import annotations

import argparse
from pathlib import Path

from cyberstar.codegen import write_artifacts
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.verbs import Verb


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT,
        help="root directory to write p4src/ and ebpf/ under (default: the repository)",
    )


def run(args: argparse.Namespace) -> int:
    for path in write_artifacts(PIPELINE, args.out):
        print(path)
    return 0


BUILD = Verb(
    help="generate p4src/pp.p4, p4src/pp.p4info.txtpb and ebpf/pp_xdp.c from the spec",
    description="Generate the P4_16 program, its P4Info and the XDP C program from the "
    "pipeline spec (controller/cyberstar/pipeline/pp.py).",
    arguments=arguments,
    run=run,
)
