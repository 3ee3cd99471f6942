"""The column-generation bound: never above the optimum, and tighter than the cover LP where
pieces are large (hand-computed cases and the exact MILP as the independent references)."""

from __future__ import annotations

import numpy as np
import pytest

from cyberstar.orchestrator.bounds import column_generation_bound
from cyberstar.orchestrator.distribution import draw
from cyberstar.orchestrator.heuristics import BestFit, FirstFit
from cyberstar.orchestrator.ilp import cover_bound, solve_ilp
from cyberstar.orchestrator.model import Instance, Machine, Request
from cyberstar.orchestrator.search import place_all


def best_heuristic(instance: Instance):
    runs = [place_all(instance, p) for p in (FirstFit(), BestFit())]
    return min(runs, key=lambda p: (len(p.rejected), p.cost))


def test_one_large_request_per_machine():
    # Three requests of 60 % of a machine, G = 1: the cover LP buys 1.8 machines; no machine
    # holds two of them, so any placement (and the configuration LP) needs 3.
    machines = [Machine(f"m{i}", 1000, 10, 10, 2.0) for i in range(4)]
    requests = [Request(f"r{i}", f"t{i}", "nat", 600, 1, 1) for i in range(3)]
    inst = Instance(1.0, 1, 1, 1, machines, requests)
    result = column_generation_bound(inst, best_heuristic(inst), time_limit=30)
    assert cover_bound(inst) == pytest.approx(3.6)
    assert result.bound == pytest.approx(6.0, abs=1e-4)
    assert result.kind == "column-generation" and result.converged


def test_degree_cap_of_the_sharding_rule():
    # O = 0: a machine hosts at most one request. Four tiny requests of G = 1 need four
    # machines although one machine would carry all of them.
    machines = [Machine(f"m{i}", 1000, 10, 10, 1.0) for i in range(6)]
    requests = [Request(f"r{i}", f"t{i}", "lb", 10, 0.1, 0.1) for i in range(4)]
    inst = Instance(0.5, 1, 1, 0, machines, requests)
    result = column_generation_bound(inst, best_heuristic(inst), time_limit=30)
    assert result.bound == pytest.approx(4.0, abs=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_never_above_the_milp_optimum(seed):
    inst = draw("mix-small", seed)
    inst.requests = inst.requests[:8]
    exact = solve_ilp(inst, time_limit=60)
    if exact.status != "optimal" or exact.placement.rejected:
        pytest.skip(f"MILP status {exact.status}")
    result = column_generation_bound(inst, best_heuristic(inst), time_limit=30)
    assert result.bound <= exact.objective + 1e-6
    assert result.bound >= (cover_bound(inst) or 0.0) - 1e-9


def test_tighter_than_the_cover_lp_on_a_drawn_instance():
    inst = draw("mix-small", 2)
    result = column_generation_bound(inst, best_heuristic(inst), time_limit=60)
    assert result.converged
    assert result.lagrangian > 1.1 * cover_bound(inst)
    assert result.bound <= place_all(inst, BestFit()).cost + 1e-9
    assert np.isfinite(result.master) and result.lagrangian <= result.master + 1e-6
