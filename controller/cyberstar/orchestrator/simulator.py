"""Dynamic mode: tenants arrive and leave, their traffic changes every step, and the orchestrator
reacts with scale-up and scale-down events (appendix A.2, "Online Running").

Each step t (one `step_seconds` interval):
 1. departures leave and free their machines;
 2. every active request's reservation is re-estimated from the loads measured up to t-1:
    reactive = the last measured load ("last") or the highest of the last 6 ("peak", the
    default: a conservative water level); with prediction = the predictor's forecast peak over
    the next `horizon` steps; all times (1 + headroom); a new tenant (no history yet) reserves
    its declared demand;
 3. scale up: a machine whose reserved load exceeds the usable capacity (threshold U) moves its
    requests, largest first, to groups the algorithm chooses elsewhere until it fits;
 4. scale down: a used machine whose reserved utilisation is below `lower` is drained if all
    its requests fit on other used machines (otherwise nothing moves); the machine is released;
 5. arrivals are placed by the algorithm (the policy sees the rest of this step's arrivals as
    its lookahead; moves in 3 and 4 see none);
 6. cost: the price of every machine hosting a request, times the step length in hours
    (machine-hours weighted by price; raw machine-hours reported too). The actual load (the
    declared demand times the load profile) is compared with the usable capacity: a machine
    whose actual load exceeds it is an overload (an SLA violation the reservation did not avoid).
Every move of a placed request to another group counts as one reallocation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from cyberstar.errors import UsageError
from cyberstar.orchestrator.cluster import SLACK, Cluster, Lookahead
from cyberstar.orchestrator.model import Instance
from cyberstar.orchestrator.predictor import REACTIVE, make_predictor
from cyberstar.orchestrator.search import Policy, decision_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimSettings:
    # Load estimate behind each reservation: reactive "last" (last measured load) or "peak"
    # (highest of the last 6 measurements), or a forecast: "seasonal", "holt-winters".
    predictor: str = "peak"
    horizon: int = 2  # steps of forecast peak reserved with prediction
    headroom: float = 0.1
    lower: float = 0.3  # scale-down threshold, fraction of usable capacity
    max_drains: int = 5  # scale-down drains attempted per step (bounds reallocation churn)


@dataclass
class SimResult:
    algo: str
    settings: SimSettings
    cost: float = 0.0  # price-weighted machine-hours
    machine_hours: float = 0.0
    reallocations: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    rejected: int = 0
    overload_machine_steps: int = 0
    peak_machines: int = 0
    steps: int = 0
    decisions: dict = field(default_factory=dict)
    seconds: float = 0.0
    invariant_checks: int = 0

    def to_json(self) -> dict:
        out = asdict(self)
        out["settings"] = asdict(self.settings)
        for key in ("cost", "machine_hours", "seconds"):
            out[key] = round(out[key], 4)
        return out


class Simulation:
    def __init__(
        self,
        instance: Instance,
        policy: Policy,
        settings: SimSettings,
        check_invariants: bool = False,
    ):
        if instance.dynamic is None:
            raise UsageError("--instance: this instance has no `dynamic` section")
        self.inst = instance
        self.dyn = instance.dynamic
        self.policy = policy
        self.settings = settings
        self.check = check_invariants
        self.cluster = Cluster(instance)
        self.requests = {r.id: r for r in instance.requests}
        self.declared = {r.id: np.array(r.demand, dtype=float) for r in instance.requests}
        self.predictors: dict[str, object] = {}
        self.result = SimResult(policy.name, settings)
        self.times: list[float] = []
        self.arrivals: dict[int, list[str]] = {}
        self.departures: dict[int, list[str]] = {}
        for rid, life in self.dyn.lifetimes.items():
            self.arrivals.setdefault(life.arrive, []).append(rid)
            self.departures.setdefault(life.depart, []).append(rid)
        self.active: set[str] = set()

    # ---- helpers ----------------------------------------------------------------------------
    def actual(self, rid: str, t: int) -> np.ndarray:
        life = self.dyn.lifetimes[rid]
        return self.declared[rid] * life.load[t - life.arrive]

    def reservation(self, rid: str) -> np.ndarray:
        p = self.predictors.get(rid)
        if p is None:
            return self.declared[rid]
        s = self.settings
        horizon = 1 if s.predictor in REACTIVE else s.horizon
        level = float(np.nanmax(p.forecast(horizon)))
        level = min(max(level, 0.0), 1.0)
        return self.declared[rid] * level * (1 + s.headroom)

    def choose(self, rid: str, demand: np.ndarray, allowed: np.ndarray | None):
        start = time.perf_counter()
        group = self.policy.choose(self.cluster, self.requests[rid], demand, allowed)
        self.times.append(time.perf_counter() - start)
        return group

    def move(self, rid: str, allowed: np.ndarray | None) -> bool:
        """Re-place a request with its current reservation; restore it if nothing fits."""
        old = self.cluster.remove(rid)
        group = self.choose(rid, old.demand, allowed)
        if group is None or tuple(sorted(group)) == old.machines:
            self.cluster.place(rid, old.machines, old.demand)
            return False
        self.cluster.place(rid, group, old.demand)
        self.result.reallocations += 1
        return True

    def overloaded(self) -> np.ndarray:
        c = self.cluster
        return np.any(c.load > c.capacity * (1 + SLACK) + SLACK, axis=1)

    # ---- one step ---------------------------------------------------------------------------
    def scale_up(self) -> None:
        c = self.cluster
        for e in np.flatnonzero(self.overloaded()):
            allowed = np.ones(c.num_machines, dtype=bool)
            allowed[e] = False
            hosted = [rid for rid, a in c.placed.items() if e in a.machines]
            # Largest share of the overloaded resources first: fewest moves.
            over = c.load[e] > c.capacity[e]
            hosted.sort(
                key=lambda r: -float((c.placed[r].demand / len(c.placed[r].machines))[over].sum())
            )
            moved = False
            for rid in hosted:
                if not np.any(c.load[e] > c.capacity[e] * (1 + SLACK) + SLACK):
                    break
                moved |= self.move(rid, allowed)
            if moved:
                self.result.scale_ups += 1

    def scale_down(self) -> None:
        c = self.cluster
        util = c.utilisation()
        candidates = [
            e for e in np.argsort(util) if c.count[e] > 0 and util[e] < self.settings.lower
        ]
        for e in candidates[: self.settings.max_drains]:
            if c.count[e] == 0:
                continue
            allowed = c.used.copy()
            allowed[e] = False
            hosted = [rid for rid, a in c.placed.items() if e in a.machines]
            saved = {rid: c.placed[rid] for rid in hosted}
            moved = []
            for rid in hosted:
                old = c.remove(rid)
                group = self.choose(rid, old.demand, allowed)
                if group is None:
                    c.place(rid, old.machines, old.demand)
                    break
                c.place(rid, group, old.demand)
                moved.append(rid)
            if len(moved) == len(hosted):
                self.result.reallocations += len(moved)
                self.result.scale_downs += 1
            else:  # roll back: the machine stays
                for rid in moved:
                    c.remove(rid)
                for rid in moved:
                    c.place(rid, saved[rid].machines, saved[rid].demand)

    def run(self) -> SimResult:
        start = time.perf_counter()
        c = self.cluster
        hours = self.dyn.step_seconds / 3600.0
        for t in range(self.dyn.steps):
            for rid in self.departures.get(t, []):
                if rid in c.placed:
                    c.remove(rid)
                self.active.discard(rid)
                self.predictors.pop(rid, None)
            for rid in list(c.placed):
                c.set_demand(rid, self.reservation(rid))
            c.lookahead = Lookahead(np.zeros(3), 0)
            self.scale_up()
            self.scale_down()
            arriving = self.arrivals.get(t, [])
            waiting = sum((self.declared[rid] for rid in arriving), np.zeros(3))
            for k, rid in enumerate(arriving):
                waiting = waiting - self.declared[rid]
                c.lookahead = Lookahead(np.maximum(waiting, 0.0), len(arriving) - k - 1)
                self.active.add(rid)
                group = self.choose(rid, self.declared[rid], None)
                if group is None:
                    self.result.rejected += 1
                else:
                    c.place(rid, group, self.declared[rid])
            # Measure the interval: cost, overloads, then the loads the predictors learn from.
            used = c.used
            self.result.cost += float(c.price[used].sum()) * hours
            self.result.machine_hours += float(used.sum()) * hours
            self.result.peak_machines = max(self.result.peak_machines, int(used.sum()))
            actual = np.zeros_like(c.load)
            for rid, a in c.placed.items():
                actual[list(a.machines)] += self.actual(rid, t) / len(a.machines)
            self.result.overload_machine_steps += int(
                np.sum(np.any(actual > c.capacity * (1 + SLACK) + SLACK, axis=1))
            )
            for rid in c.placed:
                life = self.dyn.lifetimes[rid]
                p = self.predictors.get(rid)
                if p is None:
                    p = self.predictors[rid] = make_predictor(self.settings.predictor)
                p.observe(life.load[t - life.arrive])
            if self.check:
                self.check_invariants()
            self.result.steps += 1
        self.result.decisions = decision_stats(np.array(self.times))
        self.result.seconds = time.perf_counter() - start
        return self.result

    def check_invariants(self) -> None:
        """Placed requests are active, sharding holds pairwise, loads equal the sum of shares."""
        c = self.cluster
        assert set(c.placed) <= self.active, "a departed request is still placed"
        load = np.zeros_like(c.load)
        on: dict[int, list[str]] = {}
        for rid, a in c.placed.items():
            assert self.inst.gmin <= len(a.machines) <= self.inst.gmax
            load[list(a.machines)] += a.demand / len(a.machines)
            for e in a.machines:
                on.setdefault(e, []).append(rid)
        assert np.allclose(load, c.load, atol=1e-6), "machine loads drifted from their requests"
        shared: dict[tuple[str, str], int] = {}
        for rids in on.values():
            for i, a in enumerate(rids):
                for b in rids[i + 1 :]:
                    key = (a, b) if a < b else (b, a)
                    shared[key] = shared.get(key, 0) + 1
        assert all(v <= self.inst.max_overlap for v in shared.values()), "sharding violated"
        self.result.invariant_checks += 1


def simulate(
    instance: Instance,
    policy: Policy,
    settings: SimSettings = SimSettings(),
    check_invariants: bool = False,
) -> SimResult:
    return Simulation(instance, policy, settings, check_invariants).run()
