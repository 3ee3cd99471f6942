"""`cyberstar doctor`: check that this host can run cyberstar, and say what to fix."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cyberstar.errors import RuntimeFailure
from cyberstar.paths import REPO_ROOT
from cyberstar.verbs import Verb

# A documented setting (CI sets it): bmv2 and p4c are required, not optional.
REQUIRE_BMV2_ENV = "CYBERSTAR_REQUIRE_BMV2"
# The versions the generated P4 and its committed P4Info are checked against.
MINIMUM_VERSIONS = {"simple_switch_grpc": (1, 15), "p4c-bm2-ss": (1, 2, 4)}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _kernel() -> Check:
    release = platform.release()
    major, minor = (int(x) for x in release.split(".")[:2])
    ok = (major, minor) >= (5, 18)
    return Check(
        "kernel",
        ok,
        f"Linux {release}",
        "cyberstar needs Linux 5.18 or newer (XDP test runs, bpf_xdp_adjust_head, BTF)",
    )


def _root() -> Check:
    return Check(
        "root", os.geteuid() == 0, f"euid {os.geteuid()}", "run as root: BPF and netns need it"
    )


def _headers() -> Check:
    build = Path(f"/lib/modules/{platform.release()}/build")
    return Check(
        "kernel headers",
        build.exists(),
        f"{build} -> {build.resolve() if build.exists() else 'missing'}",
        "run `make install` (links Debian's linux-headers-amd64 for the running kernel)",
    )


def _bpffs() -> Check:
    mounted = any(
        line.split()[1] == "/sys/fs/bpf" and line.split()[2] == "bpf"
        for line in Path("/proc/mounts").read_text().splitlines()
    )
    return Check("bpffs", mounted, "/sys/fs/bpf", "mount -t bpf bpf /sys/fs/bpf (make install)")


def _bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return Check(
            "BCC",
            False,
            str(exc),
            "apt install python3-bpfcc and use the venv made by `make install` "
            "(it sees /usr/bin/python3's packages)",
        )
    return Check("BCC", True, "python3-bpfcc importable")


def _xdp_load() -> Check:
    if os.geteuid() != 0:
        return Check("XDP program", False, "not root", "run as root")
    try:
        from cyberstar.xdp.program import XdpProgram

        prog = XdpProgram()
        prog.close()
    except Exception as exc:
        return Check("XDP program", False, str(exc), "see the log file named above")
    return Check("XDP program", True, "ebpf/pp_xdp.c compiles and passes the verifier")


def _netns() -> Check:
    name = f"cs-doctor-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return Check(
        "network namespaces",
        add.returncode == 0,
        add.stderr.strip() or "ip netns add/del work",
        "needs iproute2 and CAP_SYS_ADMIN",
    )


def _bmv2() -> Check:
    from cyberstar import p4tools

    required = os.environ.get(REQUIRE_BMV2_ENV) == "1"
    found = {n: p4tools.find_tool(n) for n in (p4tools.SWITCH_BINARY, p4tools.COMPILER_BINARY)}
    missing = [n for n, p in found.items() if not p]
    if missing:
        return Check(
            "bmv2 and p4c",
            False,
            f"{' and '.join(missing)} not found",
            p4tools.HOW_TO_INSTALL + ("" if required else "; bmv2 tests are skipped without them"),
            required=required,
        )
    details, broken = [], []
    for name, path in found.items():
        assert path is not None
        try:
            version = p4tools.tool_version(path)
        except RuntimeFailure as exc:
            broken.append(str(exc))
            continue
        details.append(f"{name} {version} ({path})")
        if _version_tuple(version) < MINIMUM_VERSIONS[name]:
            broken.append(
                f"{name} {version} is older than {'.'.join(map(str, MINIMUM_VERSIONS[name]))}"
            )
    return Check(
        "bmv2 and p4c",
        not broken,
        "; ".join(broken or details),
        "reinstall the toolchain: `make install CYBERSTAR_P4_ARCHIVE=PATH` installs its Debian "
        "runtime packages too",
        required=required,
    )


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def _p4rt_shell() -> Check:
    py = REPO_ROOT / ".venv-p4rt" / "bin" / "python"
    return Check(
        "p4runtime-shell",
        py.exists(),
        str(py),
        "run `make install` (p4runtime-shell gets its own venv)",
        required=False,
    )


CHECKS: tuple[Callable[[], Check], ...] = (
    _kernel, _root, _headers, _bpffs, _bcc, _netns, _xdp_load, _bmv2, _p4rt_shell,
)  # fmt: skip


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    results = [check() for check in CHECKS]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            mark = "ok  " if r.ok else ("FAIL" if r.required else "warn")
            print(f"{mark} {r.name}: {r.detail}")
            if not r.ok:
                print(f"     fix: {r.fix}")
    failed = [r for r in results if r.required and not r.ok]
    if failed:
        print(f"{len(failed)} required check(s) failed", file=sys.stderr)
    return 1 if failed else 0


DOCTOR = Verb(
    help="check this host (BPF/XDP, headers, bpffs, BCC, netns, bmv2/p4c)",
    description="Check the host and say what to fix. Exit 0 when every required check "
    "passes, 1 otherwise; optional checks (bmv2 and p4c unless "
    f"{REQUIRE_BMV2_ENV}=1, p4runtime-shell) only warn.",
    arguments=arguments,
    run=run,
)
