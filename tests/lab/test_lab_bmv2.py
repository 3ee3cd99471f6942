"""A bmv2 PP node in the Mininet lab where an XDP node can go: a group of XDP nodes scales out
onto it, and it carries traffic after a crash (topologies/scenarios/ci-bmv2.yaml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from lab.helpers import forwarded

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.bmv2]


def test_a_group_scales_out_onto_a_bmv2_node(bmv2_tools, tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (Mininet, XDP)")
    scenario = REPO / "topologies" / "scenarios" / "ci-bmv2.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "cyberstar.cli", "lab", "run", str(scenario), "--out",
         str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["ok"], ([c for c in report["checks"] if not c["ok"]], report["measurements"],
                          report["harness"], report["health_check"])  # fmt: skip
    (out,) = report["measurements"]["pp_scale_out"]
    assert out["node"] == "pp3" and out["join_to_traffic_s"] <= 1.0
    (crash,) = report["measurements"]["pp_crash"]
    assert forwarded(tmp_path, "pp1", crash["t"] - 2, crash["t"]) > 100  # it carried traffic
    assert crash["max_resume_s"] <= 2.0 and crash["resets"] == crash["request_failures"] == 0
    assert report["tenants"]["A"]["totals"]["reset"] == 0
    # after the crash, the bmv2 node forwards (its counters, read over P4Runtime)
    assert forwarded(tmp_path, "pp3", crash["t"] + 2, report["duration_s"]) > 100
