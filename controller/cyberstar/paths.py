"""Locations of the committed generated artifacts.

From a source checkout they are read from the repository (p4src/, ebpf/); the generators can
always recreate them from the spec, which is what a missing file falls back to.
"""

from __future__ import annotations

from pathlib import Path

from cyberstar.codegen import P4_PATH, XDP_PATH, artifacts
from cyberstar.pipeline.pp import PIPELINE

REPO_ROOT = Path(__file__).resolve().parents[2]


def artifact_text(relative: Path) -> str:
    path = REPO_ROOT / relative
    if path.exists():
        return path.read_text()
    return next(a.text for a in artifacts(PIPELINE) if a.path == relative)


def xdp_source() -> str:
    return artifact_text(XDP_PATH)


def p4_source() -> str:
    return artifact_text(P4_PATH)
