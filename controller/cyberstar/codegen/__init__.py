"""Generators: the pipeline spec → P4_16 (v1model), XDP C (BCC) and P4Info."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cyberstar.codegen.p4 import generate_p4
from cyberstar.codegen.p4info import generate_p4info_text
from cyberstar.codegen.xdp import generate_xdp
from cyberstar.pipeline.model import Pipeline

# Where each artifact lives, relative to the repository (or --out) root.
P4_PATH = Path("p4src/pp.p4")
P4INFO_PATH = Path("p4src/pp.p4info.txtpb")
XDP_PATH = Path("ebpf/pp_xdp.c")


@dataclass(frozen=True)
class Artifact:
    path: Path
    text: str


def artifacts(pipeline: Pipeline) -> list[Artifact]:
    return [
        Artifact(P4_PATH, generate_p4(pipeline)),
        Artifact(P4INFO_PATH, generate_p4info_text(pipeline)),
        Artifact(XDP_PATH, generate_xdp(pipeline)),
    ]


def write_artifacts(pipeline: Pipeline, root: Path) -> list[Path]:
    written = []
    for art in artifacts(pipeline):
        path = root / art.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(art.text)
        written.append(path)
    return written
