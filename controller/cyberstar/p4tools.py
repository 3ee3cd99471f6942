"""The p4lang tools: bmv2's `simple_switch_grpc` and p4c's `p4c-bm2-ss`, found and run.

Looked for in `$CYBERSTAR_P4_BIN`, then on PATH, then in /opt/p4/bin, where `make install`
unpacks the prebuilt toolchain named by `CYBERSTAR_P4_ARCHIVE`. The P4 program is compiled for
v1model and cached by its source's hash, so a test session compiles it once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cyberstar.errors import RuntimeFailure, TargetUnavailable
from cyberstar.paths import p4_source

# A documented setting: a directory to look for the P4 tools in before PATH.
P4_TOOLS_ENV = "CYBERSTAR_P4_BIN"
# Where scripts/install-p4.sh unpacks the prebuilt toolchain.
DEFAULT_P4_BIN = Path("/opt/p4/bin")
SWITCH_BINARY = "simple_switch_grpc"
COMPILER_BINARY = "p4c-bm2-ss"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cyberstar" / "p4c"
HOW_TO_INSTALL = (
    "`make install CYBERSTAR_P4_ARCHIVE=PATH` installs a prebuilt p4lang toolchain archive into "
    "/opt/p4; otherwise install bmv2 (with PI/P4Runtime) and p4c from your distribution or "
    f"p4lang's sources and put them on PATH or in ${P4_TOOLS_ENV} (README: bmv2 and p4c)"
)


def find_tool(name: str) -> str | None:
    extra = os.environ.get(P4_TOOLS_ENV)
    if extra:
        candidate = os.path.join(extra, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return found
    candidate = str(DEFAULT_P4_BIN / name)
    return candidate if os.access(candidate, os.X_OK) else None


def require_tools() -> tuple[str, str]:
    """The switch and the compiler, or TargetUnavailable saying how to get them."""
    switch, compiler = find_tool(SWITCH_BINARY), find_tool(COMPILER_BINARY)
    missing = [n for n, p in ((SWITCH_BINARY, switch), (COMPILER_BINARY, compiler)) if not p]
    if missing:
        raise TargetUnavailable(f"{' and '.join(missing)} not installed: {HOW_TO_INSTALL}")
    assert switch and compiler
    return switch, compiler


def require_compiler() -> str:
    compiler = find_tool(COMPILER_BINARY)
    if compiler is None:
        raise TargetUnavailable(f"{COMPILER_BINARY} not installed: {HOW_TO_INSTALL}")
    return compiler


def tool_version(path: str) -> str:
    """The version a tool reports (`1.15.5`, `1.2.4.8`), or RuntimeFailure when it does not run
    (a missing shared library shows here)."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except OSError as exc:
        raise RuntimeFailure(f"{path} does not run: {exc}") from None
    text = proc.stdout + proc.stderr
    match = re.search(r"(\d+\.\d+(?:\.\d+)+)", text)
    if proc.returncode != 0 or match is None:
        raise RuntimeFailure(f"{path} --version failed: {text.strip()[-500:]}")
    return match.group(1)


@dataclass(frozen=True)
class CompiledP4:
    json_path: Path
    p4info_path: Path


def compile_p4(source: str | None = None) -> CompiledP4:
    """Compile the P4 program with p4c-bm2-ss (v1model), cached by the source's hash."""
    compiler = require_compiler()
    text = source or p4_source()
    out = CACHE / hashlib.sha256(text.encode()).hexdigest()[:16]
    compiled = CompiledP4(out / "pp.json", out / "pp.p4info.txtpb")
    if compiled.json_path.exists() and compiled.p4info_path.exists():
        return compiled
    out.mkdir(parents=True, exist_ok=True)
    src = out / "pp.p4"
    src.write_text(text)
    # Compiled in a directory of its own and renamed: concurrent sessions never read half a file.
    tmp = Path(tempfile.mkdtemp(prefix="compile-", dir=out))
    try:
        proc = subprocess.run(
            [
                compiler, "--arch", "v1model", "--std", "p4-16",
                "--p4runtime-files", str(tmp / compiled.p4info_path.name),
                "-o", str(tmp / compiled.json_path.name), str(src),
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeFailure(f"p4c-bm2-ss failed on {src}:\n{proc.stderr.strip()}")
        (tmp / compiled.p4info_path.name).replace(compiled.p4info_path)
        (tmp / compiled.json_path.name).replace(compiled.json_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return compiled


# bmv2's Thrift runtime server (it cannot be turned off); reachable only from inside the
# switch's namespace once `guard_thrift` has run there.
THRIFT_PORT = 9090


def switch_command(
    switch: str,
    ns: str,
    ports: dict[int, str],
    grpc_address: str,
    device_id: int,
    workdir: Path,
    cpu_port: int,
    log_level: str | None = None,
) -> list[str]:
    """simple_switch_grpc in namespace `ns`, started without a program (P4Runtime sets it),
    with port N on interface ports[N] and P4Runtime on `grpc_address` (host:port, or unix:PATH
    which is not bound to a namespace). Its nanomsg notification socket lives in `workdir`:
    bmv2's default path is shared by every switch with the same device id on the machine, and
    switches started alongside each other would take each other's idle-timeout notices."""
    cmd = [
        "ip", "netns", "exec", ns, switch, "--device-id", str(device_id), "--no-p4",
        "--thrift-port", str(THRIFT_PORT),
        "--notifications-addr", f"ipc://{workdir / 'notifications.ipc'}",
    ]  # fmt: skip
    if log_level is not None:
        cmd += ["--log-file", str(workdir / "bmv2"), "--log-flush", "--log-level", log_level]
    for port, iface in sorted(ports.items()):
        cmd += ["-i", f"{port}@{iface}"]
    return [*cmd, "--", "--grpc-server-addr", grpc_address, "--cpu-port", str(cpu_port)]


def guard_thrift(ns: str) -> None:
    """Drop Thrift connections to the switch that do not come from its own namespace's
    loopback: bmv2's Thrift server is unauthenticated and listens on every address."""
    rules = (
        "table inet cyberstar_bmv2 {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f'    iifname != "lo" tcp dport {THRIFT_PORT} drop\n'
        "  }\n"
        "}\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeFailure(f"nft in {ns}: {proc.stderr.strip()}")
