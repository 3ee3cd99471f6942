"""The cover bound (whole machines covering the demand), the flavour bound (the same with each
request kept to the flavours it fits) and the column-generation bound: never above the optimum,
and the latter two tighter than the first where flavours are strong on different resources or
pieces are large (hand-computed cases and the exact MILP as the independent references); the
dynamic-mode bound (hand-computed cases, and never above a simulated run without overloads)."""

from __future__ import annotations

import numpy as np
import pytest

from cyberstar.orchestrator.bounds import column_generation_bound, dynamic_bound
from cyberstar.orchestrator.distribution import draw
from cyberstar.orchestrator.generator import generate
from cyberstar.orchestrator.heuristics import BestFit, FirstFit
from cyberstar.orchestrator.ilp import cover_bound, flavour_bound, solve_ilp
from cyberstar.orchestrator.model import Dynamic, Instance, Lifetime, Machine, Request
from cyberstar.orchestrator.search import place_all
from cyberstar.orchestrator.simulator import SimSettings, simulate


def best_heuristic(instance: Instance):
    runs = [place_all(instance, p) for p in (FirstFit(), BestFit())]
    return min(runs, key=lambda p: (len(p.rejected), p.cost))


def test_one_large_request_per_machine():
    # Three requests of 60 % of a machine, G = 1: 1.8 machines' worth of demand, so the cover
    # bound buys 2 whole machines; no machine holds two of them, so any placement (and the
    # configuration LP) needs 3.
    machines = [Machine(f"m{i}", 1000, 10, 10, 2.0) for i in range(4)]
    requests = [Request(f"r{i}", f"t{i}", "nat", 600, 1, 1) for i in range(3)]
    inst = Instance(1.0, 1, 1, 1, machines, requests)
    result = column_generation_bound(inst, best_heuristic(inst), time_limit=30)
    assert cover_bound(inst) == pytest.approx(4.0)
    assert result.bound == pytest.approx(6.0, abs=1e-4)
    assert result.kind == "column-generation" and result.converged


def test_cover_bound_buys_whole_machines_of_the_cheapest_mix():
    # 130 Mbit/s (threshold 1) over two machines of 100 at price 1.0 and two of 60 at 0.5.
    # Fractional machines: both small ones (120 for 1.0) and a tenth of a large one, 1.1.
    # Whole machines: two small ones fall short; one small and one large (160) cost 1.5, two
    # large or two small and a large 2.0: the bound is 1.5.
    machines = [Machine(f"l{i}", 100, 10, 10, 1.0) for i in range(2)]
    machines += [Machine(f"s{i}", 60, 10, 10, 0.5) for i in range(2)]
    requests = [Request(f"r{i}", f"t{i}", "nat", 65, 0.1, 0.1) for i in range(2)]
    inst = Instance(1.0, 1, 1, 1, machines, requests)
    assert cover_bound(inst) == pytest.approx(1.5)
    # More than the whole pool (320 Mbit/s): no bound, as no placement exists.
    assert cover_bound(Instance(1.0, 1, 1, 1, machines, requests * 3)) is None


def _specialists_and_an_all_rounder() -> list[Machine]:
    # Two bandwidth machines with almost no memory, two memory machines with almost no bandwidth
    # (price 1 each) and two all-rounders (price 3).
    machines = [Machine(f"bw{i}", 100, 10, 1, 1.0) for i in range(2)]
    machines += [Machine(f"mem{i}", 1, 10, 100, 1.0) for i in range(2)]
    return machines + [Machine(f"all{i}", 100, 10, 100, 3.0) for i in range(2)]


def test_flavour_bound_keeps_each_requests_resources_together():
    # Two requests of 50 Mbit/s and 50 GB, G = 1: together 100 and 100, which one bandwidth
    # machine and one memory machine cover (cost 2, the cover bound). Whatever share of a
    # request a specialist took would bring its memory (or bandwidth) along, which the
    # specialist has not, so any placement puts both on one all-rounder: 3.
    requests = [Request(f"r{i}", f"t{i}", "fw", 50, 1, 50) for i in range(2)]
    inst = Instance(1.0, 1, 1, 1, _specialists_and_an_all_rounder(), requests)
    assert cover_bound(inst) == pytest.approx(2.0)
    assert flavour_bound(inst) == pytest.approx(3.0)
    exact = solve_ilp(inst, time_limit=30)
    assert exact.status == "optimal" and exact.objective == pytest.approx(3.0)
    result = column_generation_bound(inst, best_heuristic(inst), time_limit=30)
    assert result.flavour == pytest.approx(3.0) and result.bound == pytest.approx(3.0, abs=1e-4)


def test_flavour_bound_puts_a_piece_only_where_it_fits():
    # Ten small machines (10 of everything, price 1) and two large (100 Mbit/s, 100 GB, price
    # 20). One request of 30 Mbit/s and 30 GB, G = 1: three small machines' capacity, but it
    # fits on no small machine, so any placement pays a large one: 20.
    machines = [Machine(f"s{i}", 10, 10, 10, 1.0) for i in range(10)]
    machines += [Machine(f"l{i}", 100, 10, 100, 20.0) for i in range(2)]
    inst = Instance(1.0, 1, 1, 1, machines, [Request("r0", "t0", "fw", 30, 1, 30)])
    assert cover_bound(inst) == pytest.approx(3.0)
    assert flavour_bound(inst) == pytest.approx(20.0)
    assert place_all(inst, BestFit()).cost == pytest.approx(20.0)


def test_flavour_bound_puts_a_requests_pieces_on_distinct_machines():
    # One request of G = 2 whose halves (25 Mbit/s, 25 GB) fit only the all-rounders, of which
    # the pool has one: no placement exists. The cover bound still prices one (a bandwidth and
    # a memory machine cover 50 and 50 on two machines: 2).
    machines = [m for m in _specialists_and_an_all_rounder() if m.id != "all1"]
    inst = Instance(1.0, 2, 2, 1, machines, [Request("r0", "t0", "fw", 50, 1, 50)])
    assert cover_bound(inst) == pytest.approx(2.0)
    assert flavour_bound(inst) is None
    assert place_all(inst, BestFit()).rejected == ["r0"]


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
    assert (cover_bound(inst) or 0.0) - 1e-9 <= flavour_bound(inst) <= exact.objective + 1e-6


def test_tighter_than_the_cover_bound_on_a_drawn_instance():
    inst = draw("mix-small", 2)
    result = column_generation_bound(inst, best_heuristic(inst), time_limit=60)
    assert result.converged
    assert result.lagrangian > 1.1 * cover_bound(inst)
    assert result.bound <= place_all(inst, BestFit()).cost + 1e-9
    assert np.isfinite(result.master) and result.lagrangian <= result.master + 1e-6


def dynamic_instance(step_seconds: float, lifetimes: dict, requests: list[Request]) -> Instance:
    # Four machines of price 1 with 50 Mbit/s usable (threshold 0.5), groups of exactly 2, and
    # two requests may share one machine (O = 1): n requests need m machines with C(m, 2) >= n.
    machines = [Machine(f"m{i}", 100, 100, 100, 1.0) for i in range(4)]
    steps = max(life.depart for life in lifetimes.values())
    return Instance(0.5, 2, 2, 1, machines, requests, Dynamic(step_seconds, steps, lifetimes))


def test_dynamic_bound_counts_the_machines_the_sharding_rule_needs():
    # Tiny loads. Step 0: one request, a group of 2 → 2 machines. Step 1: two requests, which
    # must not share both machines → C(m, 2) >= 2 → 3 machines. 2 + 3 machine-hours at price 1.
    requests = [Request(f"r{i}", f"t{i}", "nat", 1, 0.1, 0.1) for i in range(2)]
    lifetimes = {"r0": Lifetime(0, 2, (1.0, 0.5)), "r1": Lifetime(1, 2, (1.0,))}
    assert dynamic_bound(dynamic_instance(3600.0, lifetimes, requests)) == pytest.approx(5.0)
    # Half-hour steps: half the machine-hours.
    assert dynamic_bound(dynamic_instance(1800.0, lifetimes, requests)) == pytest.approx(2.5)


def test_dynamic_bound_follows_the_actual_load():
    # 150 Mbit/s declared against 50 usable per machine. Step 0 at full load: 3 machines'
    # worth. Step 1 at half load: 1.5 machines' worth, but a group of 2 needs 2. Total 5.
    requests = [Request("r0", "t0", "nat", 150, 0.1, 0.1)]
    lifetimes = {"r0": Lifetime(0, 2, (1.0, 0.5))}
    assert dynamic_bound(dynamic_instance(3600.0, lifetimes, requests)) == pytest.approx(5.0)


@pytest.mark.parametrize("predictor", ["peak", "holt-winters"])
def test_dynamic_bound_is_below_a_run_without_overloads(predictor):
    instance = generate("paper-a", 21, tenants=120, machines=40, steps=48)
    result = simulate(instance, FirstFit(), SimSettings(predictor=predictor, headroom=0.3))
    assert result.overload_machine_steps == 0 and result.rejected == 0
    bound = dynamic_bound(instance)
    assert 0 < bound <= result.cost


def test_dynamic_bound_needs_a_dynamic_instance():
    instance = Instance(0.5, 2, 2, 1, [Machine("m0", 1, 1, 1, 1.0)], [])
    with pytest.raises(ValueError, match="no `dynamic` section"):
        dynamic_bound(instance)
