"""CI sets CYBERSTAR_REQUIRE_BMV2=1: then a skipped bmv2 test fails, and other skips stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING = Path(__file__).parent / "require_bmv2" / "skipping.py"


def run(require: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CYBERSTAR_REQUIRE_BMV2"}
    if require is not None:
        env["CYBERSTAR_REQUIRE_BMV2"] = require
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(SKIPPING)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("require", [None, "0"])
def test_without_the_setting_bmv2_skips_are_skips(require) -> None:
    proc = run(require)
    assert proc.returncode == 0, proc.stdout
    assert "3 skipped" in proc.stdout


def test_with_the_setting_a_skipped_bmv2_test_fails() -> None:
    proc = run("1")
    assert proc.returncode == 1, proc.stdout
    assert "2 failed, 1 skipped" in proc.stdout
    assert "CYBERSTAR_REQUIRE_BMV2=1 but this bmv2 test was skipped: on purpose" in proc.stdout
