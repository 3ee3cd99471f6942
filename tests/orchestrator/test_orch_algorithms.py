"""Every algorithm's placements pass the independent checker on every family (small sizes)."""

from __future__ import annotations

import pytest
from orch_cases import azure_available

from cyberstar.orchestrator.azure import AZURE_FAMILIES
from cyberstar.orchestrator.checker import check_placement
from cyberstar.orchestrator.cli import generate_family
from cyberstar.orchestrator.distribution import DISTRIBUTIONS
from cyberstar.orchestrator.drl import DrlPolicy, load_model
from cyberstar.orchestrator.generator import FAMILIES
from cyberstar.orchestrator.heuristics import BestFit, FirstFit
from cyberstar.orchestrator.ilp import solve_ilp
from cyberstar.orchestrator.search import place_all

FAMILY_NAMES = [
    *FAMILIES,
    "mix-small",
    *(
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                not azure_available(), reason="Azure trace not found (set AZURE_TRACE_DIR)"
            ),
        )
        for name in AZURE_FAMILIES
    ),
]


def sized(family: str, seed: int, tenants: int, machines: int):
    """An instance of the family at test size; a distribution draws its own pool, so only its
    request list is cut."""
    if family in DISTRIBUTIONS:
        instance = generate_family(family, seed)
        instance.requests = instance.requests[:tenants]
        return instance
    return generate_family(family, seed, tenants=tenants, machines=machines)


@pytest.fixture(scope="module")
def drl():
    return load_model()[0]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_online_algorithms_pass_the_checker(family, drl):
    instance = sized(family, 7, tenants=60, machines=20)
    for policy in (
        FirstFit(),
        BestFit(),
        BestFit((0.2, 0.1, 0.7)),
        drl,
        DrlPolicy(None, drl.config),
    ):
        placement = place_all(instance, policy)
        report = check_placement(instance, placement)
        assert report.ok, (policy.name, report.violations)
        assert report.placed + report.rejected == len(instance.requests)
        assert placement.cost == pytest.approx(report.cost)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_ilp_passes_the_checker(family):
    instance = sized(family, 7, tenants=8, machines=7)
    result = solve_ilp(instance, time_limit=20)
    assert result.placement is not None, result.to_json()
    assert check_placement(instance, result.placement).ok
    assert result.bound is None or result.bound <= result.objective + 1e-6
    best_online = min(place_all(instance, p).cost for p in (FirstFit(), BestFit()))
    if result.status == "optimal" and not result.placement.rejected:
        assert result.objective <= best_online + 1e-6


def test_full_size_family_places_everything(drl):
    # Decision time is a benchmark figure (bench/placement.py), not asserted here.
    instance = generate_family("paper-b", 11)
    for policy in (FirstFit(), BestFit(), drl, DrlPolicy(None, drl.config)):
        placement = place_all(instance, policy)
        assert check_placement(instance, placement).ok
        assert not placement.rejected
