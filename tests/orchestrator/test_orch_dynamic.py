"""Dynamic simulator invariants and the predictors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from orch_cases import cli

from cyberstar.orchestrator.drl import load_model
from cyberstar.orchestrator.files import save_instance
from cyberstar.orchestrator.generator import generate
from cyberstar.orchestrator.heuristics import BestFit, FirstFit
from cyberstar.orchestrator.predictor import (
    HoltWinters,
    LastValue,
    SeasonalNaive,
    TrailingPeak,
    evaluate,
)
from cyberstar.orchestrator.simulator import SimSettings, Simulation


@pytest.fixture(scope="module")
def instance():
    return generate("paper-a", 21, tenants=120, machines=40, steps=48)


@pytest.mark.parametrize("predictor", ["last", "peak", "holt-winters"])
@pytest.mark.parametrize("algo", ["ff", "drl"])
def test_invariants_hold_every_step(instance, algo, predictor):
    policy = FirstFit() if algo == "ff" else load_model()[0]
    sim = Simulation(instance, policy, SimSettings(predictor=predictor), check_invariants=True)
    result = sim.run()
    assert result.steps == result.invariant_checks == instance.dynamic.steps
    assert result.rejected == 0
    # Cost is price-weighted machine-hours: between the cheapest and dearest price per hour.
    prices = instance.prices()
    assert prices.min() * result.machine_hours <= result.cost + 1e-9
    assert result.cost <= prices.max() * result.machine_hours + 1e-9
    assert 0 < result.peak_machines <= len(instance.machines)
    assert result.reallocations >= result.scale_ups
    # Everything departs by the end of the horizon except requests that outlive it.
    alive = {
        rid
        for rid, life in instance.dynamic.lifetimes.items()
        if life.depart == instance.dynamic.steps
    }
    assert set(sim.cluster.placed) <= alive


def test_departures_free_machines():
    instance = generate("small", 4, steps=24)
    sim = Simulation(instance, BestFit(), SimSettings(), check_invariants=True)
    sim.run()
    active_at_end = [
        rid
        for rid, life in instance.dynamic.lifetimes.items()
        if life.depart == instance.dynamic.steps
    ]
    assert sorted(sim.cluster.placed) == sorted(active_at_end)
    if not active_at_end:
        assert not sim.cluster.used.any()


def test_reservations_follow_the_estimate(instance):
    sim = Simulation(instance, FirstFit(), SimSettings(predictor="last", headroom=0.0))
    rid = instance.requests[0].id
    assert np.array_equal(sim.reservation(rid), np.array(instance.requests[0].demand))
    sim.predictors[rid] = LastValue()
    sim.predictors[rid].observe(0.5)
    assert np.allclose(sim.reservation(rid), 0.5 * np.array(instance.requests[0].demand))


def test_simulate_command(tmp_path, capsys, instance):
    path = tmp_path / "i.json"
    save_instance(instance, path)
    code = cli("place", "simulate", "--instance", path, "--algo", "bf", "--predictor", "seasonal")
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algo"] == "bf" and result["settings"]["predictor"] == "seasonal"
    assert result["steps"] == instance.dynamic.steps and result["cost"] > 0
    assert "dynamic_bound" not in result


def test_simulate_command_prints_the_dynamic_bound(tmp_path, capsys, instance):
    path = tmp_path / "i.json"
    save_instance(instance, path)
    args = ("place", "simulate", "--instance", path, "--algo", "ff", "--headroom", "0.3")
    assert cli(*args, "--bound") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["overload_machine_steps"] == 0 and result["rejected"] == 0
    assert 0 < result["dynamic_bound"] <= result["cost"]
    assert result["above_bound"] == pytest.approx(result["cost"] / result["dynamic_bound"] - 1,
                                                  abs=1e-3)  # fmt: skip


def test_static_instance_cannot_simulate(tmp_path, capsys):
    instance = generate("small", 0)
    instance.dynamic = None
    path = tmp_path / "i.json"
    save_instance(instance, path)
    assert cli("place", "simulate", "--instance", path, "--algo", "ff") == 2
    assert "no `dynamic` section" in capsys.readouterr().err


def test_seasonal_naive_is_exact_on_a_periodic_series():
    p = SeasonalNaive(season=4)
    series = [1.0, 2.0, 3.0, 4.0] * 3
    for y in series[:8]:
        p.observe(y)
    assert list(p.forecast(6)) == [1.0, 2.0, 3.0, 4.0, 1.0, 2.0]


def test_holt_winters_learns_a_seasonal_pattern():
    t = np.arange(24 * 8)
    series = 1.0 + 0.5 * np.sin(2 * np.pi * t / 24)
    hw = HoltWinters()
    for y in series[:-24]:
        hw.observe(float(y))
    assert np.max(np.abs(hw.forecast(24) - series[-24:])) < 0.05


def test_trailing_peak_and_accuracy_table():
    p = TrailingPeak(window=3)
    for y in (0.2, 0.9, 0.4, 0.3, 0.1):
        p.observe(y)
    assert p.forecast(2).tolist() == [0.4, 0.4]
    t = np.arange(24 * 4)
    series = [1.0 + 0.5 * np.sin(2 * np.pi * (t + k) / 24) for k in range(5)]
    scores = {a.predictor: a for a in evaluate(series)}
    # Seasonal naive is exact after the first day (before it, it is the last value).
    assert scores["seasonal"].mae < 0.3 * scores["last"].mae
