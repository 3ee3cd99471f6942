"""The ILP is optimal on tiny instances (brute force agrees) and its bounds are valid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cyberstar.orchestrator.checker import check_placement
from cyberstar.orchestrator.generator import generate
from cyberstar.orchestrator.heuristics import BestFit, FirstFit
from cyberstar.orchestrator.ilp import cover_bound, flavour_bound, min_used_machines, solve_ilp
from cyberstar.orchestrator.model import Instance, Machine, Placement, Request, placement_cost
from cyberstar.orchestrator.search import place_all


def random_tiny(seed: int) -> Instance:
    rng = np.random.default_rng(seed)
    machines = [
        Machine(
            f"m{i}",
            float(rng.choice([4000, 10000])),
            8.0,
            float(rng.choice([16, 64])),
            float(rng.choice([1.0, 1.3, 2.0])),
        )
        for i in range(5)
    ]
    requests = [
        Request(
            f"r{i}",
            f"t{i}",
            "nat",
            float(rng.uniform(100, 6000)),
            float(rng.uniform(0, 3)),
            float(rng.uniform(0, 20)),
        )
        for i in range(int(rng.integers(2, 4)))
    ]
    return Instance(0.5, 2, 3, int(rng.integers(0, 2)), machines, requests)


def brute_force(instance: Instance) -> float | None:
    """Cheapest placement of every request, by enumerating every group of every request."""
    ids = [m.id for m in instance.machines]
    groups = [
        list(c)
        for g in range(instance.gmin, instance.gmax + 1)
        for c in itertools.combinations(ids, g)
    ]
    best = None
    for choice in itertools.product(groups, repeat=len(instance.requests)):
        assignments = {r.id: g for r, g in zip(instance.requests, choice, strict=True)}
        cost = placement_cost(instance, assignments)
        if best is not None and cost >= best:
            continue
        if check_placement(instance, Placement(assignments, [], cost)).ok:
            best = cost
    return best


@pytest.mark.parametrize("seed", range(8))
def test_ilp_matches_brute_force(seed):
    instance = random_tiny(seed)
    expected = brute_force(instance)
    result = solve_ilp(instance, time_limit=30)
    if expected is None:  # nothing places every request: the ILP must reject some
        assert result.placement is not None and result.placement.rejected
        return
    assert result.status == "optimal"
    assert result.objective == pytest.approx(expected)
    assert result.bound == pytest.approx(expected)
    assert result.gap == pytest.approx(0.0)
    assert check_placement(instance, result.placement).ok


def test_lazy_overlap_rows_give_the_same_optimum():
    instance = generate("small", 3, tenants=10, machines=8)
    eager = solve_ilp(instance, time_limit=60)
    lazy = solve_ilp(instance, time_limit=60, max_pair_rows=0)
    assert eager.status == lazy.status == "optimal"
    assert lazy.detail["lazy"] and not eager.detail["lazy"]
    assert lazy.objective == pytest.approx(eager.objective)
    assert check_placement(instance, lazy.placement).ok


def test_bounds_are_below_every_heuristic():
    instance = generate("small", 0)
    result = solve_ilp(instance, time_limit=60)
    heuristics = [place_all(instance, p).cost for p in (FirstFit(), BestFit())]
    assert result.bound is not None
    assert result.bound <= min(heuristics) + 1e-9
    assert cover_bound(instance) <= result.bound + 1e-9
    large = generate("paper-b", 0)
    too_large = solve_ilp(large, time_limit=5)
    assert too_large.status == "too_large" and too_large.placement is None
    assert too_large.bound == pytest.approx(max(cover_bound(large), flavour_bound(large)))
    assert too_large.bound <= place_all(large, BestFit()).cost


def test_min_used_machines():
    # 10 requests on pairs with O=1 need 10 distinct pairs: C(5,2) = 10.
    assert min_used_machines(10, 2, 1) == 5
    assert min_used_machines(11, 2, 1) == 6
    # O=0: every request needs its own gmin machines.
    assert min_used_machines(3, 2, 0) == 6
