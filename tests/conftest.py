"""Shared fixtures: the XDP program (once per session, or per test with a PP's ports), bmv2
when installed.

A test needs bmv2 when it carries the `bmv2` marker or uses a bmv2 fixture. Without the tools
such a test is skipped with the reason; with CYBERSTAR_REQUIRE_BMV2=1 (CI sets it) a skipped
bmv2 test is reported as a failure, whatever made it skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cyberstar.grpc_transport import select_transports

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

# The suite's own gRPC clients and servers run on the transports the daemons choose (and every
# test that calls the CLI's main would otherwise choose them for the rest of the session).
select_transports()


def _xdp_missing() -> str | None:
    """`make install` provides what XDP needs and CI runs as root: without it, tests fail."""
    if os.geteuid() != 0:
        return "needs root to load BPF programs: run the suite as root, as CI does"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (python3-bpfcc) is not importable: run `make install`"
    return None


@pytest.fixture(scope="session")
def xdp_target():
    reason = _xdp_missing()
    if reason:
        pytest.fail(reason, pytrace=False)
    from cyberstar.targets.xdp import XdpTarget

    target = XdpTarget()
    yield target
    target.close()


@pytest.fixture
def pp_ns():
    """A fresh namespace holding a PP node's two ports (pp1, pp2) and their peers."""
    import needs

    from cyberstar import netns

    needs.root()
    with netns.with_pp_ports(f"cs-ports-{os.getpid()}") as ns:
        yield ns


@pytest.fixture
def prog():
    """The XDP program, loaded for this test alone (its own maps)."""
    from cyberstar.xdp.program import XdpProgram

    p = XdpProgram()
    yield p
    p.close()


REQUIRE_BMV2 = os.environ.get("CYBERSTAR_REQUIRE_BMV2") == "1"
BMV2_FIXTURES = {"bmv2_tools", "bmv2_target"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BMV2_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.bmv2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_BMV2 and report.skipped and item.get_closest_marker("bmv2"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"CYBERSTAR_REQUIRE_BMV2=1 but this bmv2 test was skipped: {reason}"


@pytest.fixture(scope="session")
def bmv2_tools() -> tuple[str, str]:
    """simple_switch_grpc and p4c-bm2-ss, or a skip saying how to install them."""
    from cyberstar.errors import TargetUnavailable
    from cyberstar.p4tools import require_tools

    try:
        return require_tools()
    except TargetUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def bmv2_target(bmv2_tools):
    if os.geteuid() != 0:
        pytest.skip("the bmv2 target needs root to create its veth ports")
    from cyberstar.targets.bmv2 import Bmv2Target

    target = Bmv2Target()
    yield target
    target.close()
