"""bmv2 (simple_switch_grpc) as a target: the generated P4 compiled with p4c-bm2-ss."""

from __future__ import annotations

import os
import shutil

from cyberstar.targets import TargetUnavailable

# A documented setting: where to look for the P4 tools besides PATH.
P4_TOOLS_ENV = "CYBERSTAR_P4_BIN"
SWITCH_BINARY = "simple_switch_grpc"
COMPILER_BINARY = "p4c-bm2-ss"


def find_tool(name: str) -> str | None:
    extra = os.environ.get(P4_TOOLS_ENV)
    if extra:
        candidate = os.path.join(extra, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


def require_tools() -> tuple[str, str]:
    switch, compiler = find_tool(SWITCH_BINARY), find_tool(COMPILER_BINARY)
    missing = [n for n, p in ((SWITCH_BINARY, switch), (COMPILER_BINARY, compiler)) if not p]
    if missing:
        raise TargetUnavailable(
            f"{' and '.join(missing)} not installed: the bmv2 target needs bmv2 "
            f"(simple_switch_grpc with P4Runtime) and p4c on PATH, or in ${P4_TOOLS_ENV}"
        )
    assert switch and compiler
    return switch, compiler
