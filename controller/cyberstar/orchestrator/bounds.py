"""Lower bounds on the placement cost where the MILP does not finish: column generation on the
configuration LP of the problem, with a Lagrangian bound valid at every iteration.

A *pattern* of flavour t (machines of equal capacity and price) is what one machine of that
flavour could carry: a set of pieces (i, g), the 1/g share of request i placed as one of g
machines, at most one piece per request, fitting under the threshold on every resource, and with
at most C(K-1, O) pieces' worth of sharding degree: the requests on one machine share it, so they
must use distinct O-subsets of the other used machines; a piece of size g covers C(g-1, O) of
them, and K is at most `kmax`, the most machines whose prices fit under a known placement's cost
(an optimal placement uses no more). The master LP:

  min  sum_{t,p} price_t lambda_{t,p}
  s.t. sum_g z_{i,g} = 1                                  every request gets one group size
       sum_{t,p} a_{p,(i,g)} lambda_{t,p} >= g z_{i,g}     its g pieces are on g machines
       sum_p lambda_{t,p} <= n_t                           machines of flavour t available
       sum_{t,p} lambda_{t,p} >= need                      the sharding count (`sharding_need`)

Every placement is a feasible point (one pattern per used machine), so its optimum bounds the cost
from below. Columns are priced by a multiple-choice knapsack per flavour (greedy first, then
exactly by MILP, HiGHS). For duals beta >= 0 (coverage rows) and nu >= 0 (count row) the
Lagrangian function
  L = nu * need + sum_i min_g g beta_{i,g} + sum_t n_t min(0, price_t - nu - V_t)
with V_t the best pattern value sum beta_{i,g} (or an upper bound on it, from the MILP's dual
bound) is a lower bound for any beta, nu (Lagrangian relaxation of the coverage and count rows),
so the bound stays valid when the time limit stops the generation early. Duals are smoothed
towards the best Lagrangian point (Wentges) to damp their oscillation.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix, csr_matrix

from cyberstar.orchestrator.ilp import (
    cover_bound,
    flavour_bound,
    largest_bound,
    machine_flavours,
    sharding_need,
)
from cyberstar.orchestrator.model import Instance, Placement

log = logging.getLogger(__name__)


@dataclass
class BoundResult:
    bound: float | None  # the best valid lower bound found (max of cover, flavour, Lagrangian)
    kind: str  # which bound gave it: "cover", "flavour" or "column-generation"
    cover: float | None  # ilp.cover_bound: whole machines covering the demand
    flavour: float | None  # ilp.flavour_bound: the same, each request on the flavours it fits
    lagrangian: float | None
    master: float | None  # last master LP value (an upper bound on the configuration LP)
    iterations: int
    columns: int
    seconds: float
    converged: bool
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        def r(x):
            return None if x is None else round(x, 4)

        return {
            "bound": r(self.bound),
            "kind": self.kind,
            "cover": r(self.cover),
            "flavour": r(self.flavour),
            "lagrangian": r(self.lagrangian),
            "master": r(self.master),
            "iterations": self.iterations,
            "columns": self.columns,
            "seconds": round(self.seconds, 2),
            "converged": self.converged,
            **self.detail,
        }


class _Problem:
    """Flavours, pieces and the degree budget of one instance."""

    def __init__(self, instance: Instance, upper: float):
        self.inst = instance
        self.cap, self.price, self.avail = machine_flavours(instance)
        self.demand = instance.demand_matrix()
        self.n = len(self.demand)
        self.sizes = list(range(instance.gmin, instance.gmax + 1))
        self.o = instance.max_overlap
        self.need = sharding_need(instance)
        # The most machines a placement of cost <= upper can use.
        cheapest = np.sort(instance.prices())
        self.kmax = int(np.searchsorted(np.cumsum(cheapest), upper + 1e-9, side="right"))
        self.kmax = max(self.kmax, instance.gmax)
        self.degree_cap = math.comb(self.kmax - 1, self.o)
        # Pieces: (i, g) for every request and size; fits[t, piece] if it fits flavour t.
        self.piece_i = np.repeat(np.arange(self.n), len(self.sizes))
        self.piece_g = np.tile(np.array(self.sizes), self.n)
        self.share = self.demand[self.piece_i] / self.piece_g[:, None]
        self.fits = np.all(self.share[None, :, :] <= self.cap[:, None, :] * (1 + 1e-9), axis=2)
        self.piece_degree = np.array([math.comb(g - 1, self.o) for g in self.piece_g], float)

    def piece(self, i: int, g: int) -> int:
        return i * len(self.sizes) + (g - self.sizes[0])


def _heuristic_columns(p: _Problem, placement: Placement) -> list[tuple[int, list[int]]]:
    """One pattern per machine of a placement: (flavour, pieces)."""
    ids = {m.id: e for e, m in enumerate(p.inst.machines)}
    req = {r.id: i for i, r in enumerate(p.inst.requests)}
    cap = p.inst.capacity_matrix()
    price = p.inst.prices()
    on: dict[int, list[int]] = {}
    for rid, machines in placement.assignments.items():
        for mid in machines:
            on.setdefault(ids[mid], []).append(p.piece(req[rid], len(machines)))
    columns = []
    for e, pieces in on.items():
        t = int(np.flatnonzero(np.all(p.cap == cap[e], axis=1) & (p.price == price[e]))[0])
        columns.append((t, pieces))
    return columns


# Ways to weigh a piece's three resource fractions when packing greedily: its busiest resource,
# their sum, and each resource alone.
_GREEDY_WEIGHTS = ("max", "sum", 0, 1, 2)


def _greedy_pattern(
    p: _Problem, t: int, beta: np.ndarray, weighting: str | int = "max"
) -> tuple[list[int], float]:
    """A good pattern for flavour t: pieces by value per unit of weight."""
    ok = np.flatnonzero(p.fits[t] & (beta > 1e-12))
    if len(ok) == 0:
        return [], 0.0
    frac = p.share[ok] / p.cap[t]
    if weighting == "max":
        weight = frac.max(axis=1)
    elif weighting == "sum":
        weight = frac.sum(axis=1)
    else:
        weight = frac[:, weighting]
    weight = weight + p.piece_degree[ok] / max(p.degree_cap, 1)
    order = ok[np.argsort(-beta[ok] / np.maximum(weight, 1e-12), kind="stable")]
    cap = (p.cap[t] * (1 + 1e-9)).tolist()
    shares = p.share[order].tolist()
    degrees = p.piece_degree[order].tolist()
    requests = p.piece_i[order].tolist()
    b, c, m, degree = 0.0, 0.0, 0.0, 0.0
    taken: set[int] = set()
    chosen: list[int] = []
    for k, (sb, sc, sm), d, i in zip(order.tolist(), shares, degrees, requests, strict=True):
        if i in taken or b + sb > cap[0] or c + sc > cap[1] or m + sm > cap[2]:
            continue
        if degree + d > p.degree_cap:
            continue
        b, c, m, degree = b + sb, c + sc, m + sm, degree + d
        taken.add(i)
        chosen.append(k)
    return chosen, float(beta[chosen].sum()) if chosen else 0.0


def _pricing_rows(p: _Problem, t: int, ok: np.ndarray) -> LinearConstraint:
    """Knapsack rows of flavour t over the candidate pieces `ok`: capacity per resource, the
    sharding degree, and at most one size per request."""
    k = len(ok)
    rows, cols, vals = [], [], []
    ub: list[float] = []
    for r in range(3):
        rows += [len(ub)] * k
        cols += list(range(k))
        vals += p.share[ok, r].tolist()
        ub.append(p.cap[t, r] * (1 + 1e-9))
    if p.piece_degree[ok].sum() > p.degree_cap:
        rows += [len(ub)] * k
        cols += list(range(k))
        vals += p.piece_degree[ok].tolist()
        ub.append(float(p.degree_cap))
    requests = p.piece_i[ok]
    for i in np.unique(requests):
        members = np.flatnonzero(requests == i)
        if len(members) > 1:
            rows += [len(ub)] * len(members)
            cols += members.tolist()
            vals += [1.0] * len(members)
            ub.append(1.0)
    a = coo_matrix((vals, (rows, cols)), shape=(len(ub), k)).tocsr()
    return LinearConstraint(a, np.full(len(ub), -np.inf), np.array(ub))


def _candidates(p: _Problem, t: int, beta: np.ndarray) -> np.ndarray:
    return np.flatnonzero(p.fits[t] & (beta > 1e-12))


def _relaxed_value(p: _Problem, t: int, beta: np.ndarray) -> float:
    """The LP relaxation of flavour t's pricing problem: an upper bound on its best pattern's
    value, cheap enough for every iteration."""
    ok = _candidates(p, t, beta)
    if len(ok) == 0:
        return 0.0
    rows = _pricing_rows(p, t, ok)
    res = linprog(-beta[ok], A_ub=rows.A, b_ub=rows.ub, bounds=(0, 1), method="highs")
    return -float(res.fun) if res.status == 0 else float(beta[ok].sum())


def _exact_pattern(
    p: _Problem, t: int, beta: np.ndarray, time_limit: float
) -> tuple[list[int], float, float]:
    """Best pattern for flavour t by MILP: (pieces, value, upper bound on the best value)."""
    ok = _candidates(p, t, beta)
    if len(ok) == 0:
        return [], 0.0, 0.0
    with _quiet_stdout():
        res = milp(
            -beta[ok],
            integrality=np.ones(len(ok)),
            bounds=Bounds(0, 1),
            constraints=_pricing_rows(p, t, ok),
            options={"time_limit": max(time_limit, 0.05), "disp": False},
        )
    dual = getattr(res, "mip_dual_bound", None)
    upper = -float(dual) if dual is not None and np.isfinite(dual) else float(beta[ok].sum())
    if res.x is None:
        return [], 0.0, upper
    chosen = ok[res.x > 0.5].tolist()
    value = float(beta[chosen].sum()) if chosen else 0.0
    return chosen, value, max(upper, value)


@contextmanager
def _quiet_stdout():
    """HiGHS's MIP solver may print debugging lines on file descriptor 1 whatever its options;
    stdout carries our JSON, so send them to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Master:
    """The restricted master LP over the columns found so far."""

    def __init__(self, p: _Problem):
        self.p = p
        self.columns: list[tuple[int, list[int]]] = []
        self.seen: set[tuple[int, tuple[int, ...]]] = set()

    def add(self, t: int, pieces: list[int]) -> bool:
        key = (t, tuple(sorted(pieces)))
        if not pieces or key in self.seen:
            return False
        self.seen.add(key)
        self.columns.append((t, sorted(pieces)))
        return True

    def solve(self):
        """Returns (objective, beta per piece, nu, mu per flavour) or None if infeasible."""
        p = self.p
        npieces = p.n * len(p.sizes)
        ncol = len(self.columns)
        # Variables: lambda (ncol) | z (npieces). Rows (<=): coverage (npieces), availability
        # (flavours), count (1); equalities: one size per request.
        r, c, v = [], [], []
        for j, (_, pieces) in enumerate(self.columns):
            r += pieces
            c += [j] * len(pieces)
            v += [-1.0] * len(pieces)
        r += list(range(npieces))
        c += [ncol + k for k in range(npieces)]
        v += p.piece_g.astype(float).tolist()
        for j, (t, _) in enumerate(self.columns):
            r.append(npieces + t)
            c.append(j)
            v.append(1.0)
        count_row = npieces + len(p.price)
        r += [count_row] * ncol
        c += list(range(ncol))
        v += [-1.0] * ncol
        a_ub = csr_matrix((v, (r, c)), shape=(count_row + 1, ncol + npieces))
        b_ub = np.concatenate([np.zeros(npieces), p.avail, [-float(p.need)]])
        a_eq = csr_matrix(
            (
                np.ones(npieces),
                (p.piece_i, ncol + np.arange(npieces)),
            ),
            shape=(p.n, ncol + npieces),
        )
        cost = np.concatenate([[p.price[t] for t, _ in self.columns], np.zeros(npieces)])
        # A piece that fits no flavour cannot be used: fix its z to 0.
        z_ok = p.fits.any(axis=0)
        bounds = [(0, None)] * ncol + [(0, None if ok else 0) for ok in z_ok]
        res = linprog(
            cost,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=a_eq,
            b_eq=np.ones(p.n),
            bounds=bounds,
            method="highs",
        )
        if res.status != 0:
            return None
        marg = res.ineqlin.marginals
        beta = np.maximum(-marg[:npieces], 0.0)
        nu = max(-float(marg[count_row]), 0.0)
        mu = np.minimum(marg[npieces:count_row], 0.0)
        return float(res.fun), beta, nu, mu


def _dual_bounds(
    p: _Problem, beta: np.ndarray, nu: float, mu: np.ndarray, values: np.ndarray
) -> float:
    """Two lower bounds from duals (beta, nu, mu) and upper bounds `values[t]` on each flavour's
    best pattern value; the larger is returned. Both use alpha_i = min_g g beta_{i,g}, which
    makes every z column dual feasible.
    - Lagrangian: mu_t = min(0, price_t - nu - V_t) makes every pattern dual feasible.
    - Farley: keep the master's mu and scale all duals by 1/theta, theta = max(1, max_t
      (V_t + mu_t + nu) / price_t); the scaled point is dual feasible (the z rows are
      homogeneous), so its objective, D / theta, is a bound."""
    per_request = (p.piece_g * beta).reshape(p.n, len(p.sizes))
    per_request = np.where(p.fits.any(axis=0).reshape(p.n, len(p.sizes)), per_request, np.inf)
    alpha = float(per_request.min(axis=1).sum())
    lagrangian = (
        nu * p.need + alpha + float((p.avail * np.minimum(0.0, p.price - nu - values)).sum())
    )
    theta = max(1.0, float(np.max((values + mu + nu) / np.maximum(p.price, 1e-12))))
    farley = (nu * p.need + alpha + float(p.avail @ mu)) / theta
    return max(lagrangian, farley)


def column_generation_bound(
    instance: Instance,
    placement: Placement,
    time_limit: float = 60.0,
    tolerance: float = 0.002,
    smoothing: float = 0.5,
    exact_every: int = 10,
) -> BoundResult:
    """Lower bound on the cost of any placement of every request of `instance`, seeded with the
    columns of `placement` (a placement of every request, e.g. the best heuristic's), whose cost
    also caps the number of machines an optimal placement uses."""
    start = time.monotonic()
    if placement.rejected:
        raise ValueError("column generation needs a placement of every request to start from")
    cover, flavour = cover_bound(instance), flavour_bound(instance)
    p = _Problem(instance, placement.cost)
    master = _Master(p)
    for t, pieces in _heuristic_columns(p, placement):
        master.add(t, pieces)
    best_l, center = -math.inf, None
    iterations, converged, objective = 0, False, None
    flavours = range(len(p.price))

    def left() -> float:
        return time_limit - (time.monotonic() - start)

    def lagrangian(b: np.ndarray, n_: float, m_: np.ndarray, values: np.ndarray) -> None:
        nonlocal best_l, center
        bound = _dual_bounds(p, b, n_, m_, values)
        if bound > best_l:
            best_l, center = bound, (b.copy(), n_, m_.copy())

    while left() > 0:
        iterations += 1
        solved = master.solve()
        if solved is None:
            break
        objective, beta, nu, mu = solved
        # Price at a point between the best Lagrangian duals and the master's (Wentges), then,
        # if that finds nothing, at the master's own duals.
        points = [(beta, nu, mu)]
        if center is not None:
            points.insert(
                0,
                tuple(
                    smoothing * c + (1 - smoothing) * x
                    for c, x in zip(center, points[0], strict=True)
                ),
            )
        added = 0
        for b, n_, m_ in points:
            lagrangian(b, n_, m_, np.array([_relaxed_value(p, t, b) for t in flavours]))
            for t in flavours:
                for weighting in _GREEDY_WEIGHTS:
                    pieces, value = _greedy_pattern(p, t, b, weighting)
                    if p.price[t] - n_ - value < -1e-7 and master.add(t, pieces):
                        added += 1
            if added:
                break
        if not added or iterations % exact_every == 0:
            values = np.zeros(len(p.price))
            for t in flavours:
                if left() <= 0:
                    break
                pieces, value, values[t] = _exact_pattern(p, t, beta, min(left(), 5.0))
                if p.price[t] - nu - value < -1e-7 and master.add(t, pieces):
                    added += 1
            else:
                lagrangian(beta, nu, mu, values)
        log.info(
            "colgen it %d: master %.4f lagrangian %.4f columns %d",
            iterations,
            objective,
            best_l,
            len(master.columns),
        )
        if not added or (objective - best_l) <= tolerance * objective:
            converged = True
            break
    lagrangian = best_l if np.isfinite(best_l) else None
    bound, kind = largest_bound(
        [("cover", cover), ("flavour", flavour), ("column-generation", lagrangian)]
    )
    return BoundResult(
        bound,
        kind,
        cover,
        flavour,
        lagrangian,
        objective,
        iterations,
        len(master.columns),
        time.monotonic() - start,
        converged,
        {"kmax": p.kmax, "need": p.need},
    )


def dynamic_bound(instance: Instance) -> float:
    """Lower bound on the dynamic-mode cost (price x hours of the machines in use, summed over
    the steps) of any run that places every request and never overloads a machine: at each
    step, the cover bound (`ilp.cover_bound`) of the requests active then, at their actual load —
    whole machines covering it on every resource, and at least the machines the sharding
    rule needs for that many requests. Reservations, moves and the order of arrivals only add
    to it."""
    if instance.dynamic is None:
        raise ValueError("dynamic_bound: the instance has no `dynamic` section")
    dyn = instance.dynamic
    hours = dyn.step_seconds / 3600.0
    requests = {r.id: r for r in instance.requests}
    total = 0.0
    for t in range(dyn.steps):
        active = []
        for rid, life in dyn.lifetimes.items():
            if life.arrive <= t < life.depart:
                r, level = requests[rid], life.load[t - life.arrive]
                active.append(
                    replace(
                        r,
                        bandwidth=r.bandwidth * level,
                        compute=r.compute * level,
                        memory=r.memory * level,
                    )
                )
        if not active:
            continue
        step = cover_bound(replace(instance, requests=active, dynamic=None))
        if step is None:
            raise ValueError(
                f"dynamic_bound: the {len(active)} requests live at step {t} need more than the "
                "whole pool at their actual load, so no run carries them; drop the step or "
                "enlarge the pool"
            )
        total += step * hours
    return total
