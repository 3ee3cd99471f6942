"""Shared fixtures: the XDP program loaded once per session, bmv2 when installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))


def _xdp_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (python3-bpfcc) is not importable: run `make install`"
    return None


@pytest.fixture(scope="session")
def xdp_target():
    reason = _xdp_skip_reason()
    if reason:
        pytest.skip(reason)
    from cyberstar.targets.xdp import XdpTarget

    target = XdpTarget()
    yield target
    target.close()


@pytest.fixture(scope="session")
def bmv2_target():
    from cyberstar.targets import TargetUnavailable
    from cyberstar.targets.bmv2 import require_tools

    try:
        require_tools()
    except TargetUnavailable as exc:
        pytest.skip(str(exc))
    if os.geteuid() != 0:
        pytest.skip("the bmv2 target needs root to create its veth ports")
    from cyberstar.targets.bmv2 import Bmv2Target

    target = Bmv2Target()
    yield target
    target.close()
