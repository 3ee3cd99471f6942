"""The independent checker catches each violated constraint (one case per row)."""

from __future__ import annotations

import pytest

from cyberstar.orchestrator.checker import check_placement
from cyberstar.orchestrator.model import Placement

VALID = {"r0": ["m0", "m1"], "r1": ["m1", "m2"], "r2": ["m0", "m2", "m3"]}


def placement(assignments, rejected=(), cost=None, instance=None):
    if cost is None:
        used = {m for ms in assignments.values() for m in ms}
        price = {m.id: m.price for m in instance.machines}
        cost = sum(price[m] for m in used if m in price)
    return Placement(dict(assignments), list(rejected), cost)


def test_valid_placement_passes(tiny):
    report = check_placement(tiny, placement(VALID, instance=tiny))
    assert report.ok, report.violations
    assert report.cost == pytest.approx(1.0 + 1.1 + 1.2 + 1.3)
    assert report.placed == 3


def test_rejecting_is_allowed(tiny):
    assignments = {k: v for k, v in VALID.items() if k != "r2"}
    report = check_placement(tiny, placement(assignments, ["r2"], instance=tiny))
    assert report.ok and report.rejected == 1
    assert report.cost == pytest.approx(1.0 + 1.1 + 1.2)


CASES = [
    # (description, assignments, rejected, expected kind)
    ("request missing", {"r0": ["m0", "m1"], "r1": ["m1", "m2"]}, [], "missing"),
    ("unknown machine", {**VALID, "r0": ["m0", "m9"]}, [], "unknown-machine"),
    ("unknown request", {**VALID, "r7": ["m0", "m1"]}, [], "unknown-request"),
    ("unknown rejected request", VALID, ["r7"], "unknown-request"),
    ("assigned and rejected", VALID, ["r0"], "duplicate"),
    ("machine twice", {**VALID, "r0": ["m0", "m0"]}, [], "duplicate"),
    ("too few machines", {**VALID, "r0": ["m0"]}, [], "group-size"),
    ("too many machines", {**VALID, "r1": ["m0", "m1", "m2", "m3"]}, [], "group-size"),
    ("overlap", {"r0": ["m0", "m1"], "r1": ["m0", "m1"], "r2": ["m2", "m3"]}, [], "overlap"),
]


@pytest.mark.parametrize(
    ("description", "assignments", "rejected", "kind"), CASES, ids=[c[0] for c in CASES]
)
def test_each_violation_is_caught(tiny, description, assignments, rejected, kind):
    report = check_placement(tiny, placement(assignments, rejected, instance=tiny))
    assert kind in {v.kind for v in report.violations}, report.violations


def test_capacity_violation_names_machine_and_resource(tiny):
    tiny.requests[1] = type(tiny.requests[1])("r1", "t1", "lb", 500, 1, 70)  # 35 GB per machine
    report = check_placement(tiny, placement(VALID, instance=tiny))
    messages = [v.message for v in report.violations if v.kind == "capacity"]
    assert messages and "memory" in messages[0] and "'m1'" in messages[0]


def test_demand_is_split_evenly_over_the_group(tiny):
    # 12000 Mbit/s over 2 machines is 6000 each, above the usable 5000; over 3 it is 4000.
    big = type(tiny.requests[0])("r0", "t0", "nat", 12000, 1, 1)
    tiny.requests[:] = [big]
    two = check_placement(tiny, placement({"r0": ["m0", "m1"]}, instance=tiny))
    assert [v.kind for v in two.violations] == ["capacity", "capacity"]
    assert check_placement(tiny, placement({"r0": ["m0", "m1", "m2"]}, instance=tiny)).ok


def test_wrong_cost_is_caught(tiny):
    report = check_placement(tiny, placement(VALID, cost=1.0, instance=tiny))
    assert {v.kind for v in report.violations} == {"cost"}
