"""Exact placement by integer programming (HiGHS through `scipy.optimize.milp`), and lower bounds.

Model (appendix A.1, linearised; docs/orchestration.md writes it out):
  x[i,e,g] = 1 if request i is on machine e as one of g machines; z[i,g] = 1 if G_i = g;
  rej[i] = 1 if request i is rejected (penalised above any cost); y[e] = 1 if machine e is used;
  v[k] = 1 if exactly k machines are used (only when sharding can bind).
  min  sum_e price_e y_e + M sum_i rej_i
  sum_g z[i,g] + rej_i = 1;  sum_e x[i,e,g] = g z[i,g];  sum_g x[i,e,g] <= y_e
  sum_{i,g} (d_i,r / g) x[i,e,g] <= U cap_e,r y_e                        (Eq. 2-4, 5)
  overlap, for each pair (i,j): w[i,j,e] >= X[i,e] + X[j,e] - 1, sum_e w[i,j,e] <= O   (Eq. 6)
  pair-counting cuts (valid, tighten the relaxation): every request covers C(G_i, O+1)
  (O+1)-subsets of the used machines, and no subset is covered twice, so
  sum_{i,g} C(g,O+1) z[i,g] <= sum_k C(k,O+1) v[k]; and on each machine e the requests there
  cover disjoint O-subsets of the other used machines:
  sum_{i,g} C(g-1,O) x[i,e,g] <= sum_k C(k-1,O) v[k].
  Identical machines (same capacities and price) are interchangeable: y is ordered within each
  group (symmetry breaking, valid).
The pairwise overlap rows are quadratic in the number of requests; beyond `max_pair_rows` they
are generated lazily: solve, find pairs of requests sharing more than O machines, add their rows,
solve again. Every intermediate model is a relaxation, so its bound is a valid lower bound.
Large instances get the larger of `cover_bound` (whole machines covering the total demand) and
`flavour_bound` (the same with each request kept to the flavours it fits) instead.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from itertools import combinations, pairwise

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from cyberstar.orchestrator.cluster import Cluster
from cyberstar.orchestrator.model import Instance, Placement

log = logging.getLogger(__name__)

# Above this many x variables the MILP is not attempted (it would not leave the root node).
MAX_X_VARIABLES = 20_000


@dataclass
class IlpResult:
    status: str  # optimal | time_limit | infeasible | too_large | error
    objective: float | None  # cost of the best valid placement found, if any
    bound: float | None  # proven lower bound on the cost of any placement of every request
    placement: Placement | None
    seconds: float
    detail: dict = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """Relative gap between the placement and the bound; None when the placement rejects
        requests (the bound is for placements of every request)."""
        if self.objective is None or self.bound is None or self.objective <= 0:
            return None
        if self.detail.get("rejected"):
            return None
        return max(0.0, (self.objective - self.bound) / self.objective)

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "objective": self.objective,
            "bound": self.bound,
            "gap": None if self.gap is None else round(self.gap, 6),
            "seconds": round(self.seconds, 3),
            **self.detail,
        }


class _Rows:
    """Sparse constraint rows collected as (row, col, value) triplets."""

    def __init__(self):
        self.r: list[int] = []
        self.c: list[int] = []
        self.v: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, cols, vals, lb: float, ub: float) -> None:
        row = len(self.lb)
        self.r.extend([row] * len(cols))
        self.c.extend(int(c) for c in cols)
        self.v.extend(float(v) for v in vals)
        self.lb.append(lb)
        self.ub.append(ub)

    def constraint(self, ncols: int) -> LinearConstraint:
        a = coo_matrix((self.v, (self.r, self.c)), shape=(len(self.lb), ncols)).tocsr()
        return LinearConstraint(a, np.array(self.lb), np.array(self.ub))


def min_used_machines(n_requests: int, gmin: int, overlap: int) -> int:
    """Fewest machines whose (O+1)-subsets can be split among n requests of gmin machines."""
    k = overlap + 1
    need = n_requests * math.comb(gmin, k)
    if need == 0:
        return gmin if n_requests else 0
    used = gmin
    while math.comb(used, k) < need:
        used += 1
    return used


COVER_TIME_LIMIT_S = 10.0


def machine_flavours(instance: Instance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Machines of equal usable capacity and price: per flavour, the capacity (shape (t, 3)),
    the price and how many machines of it the pool has."""
    keys = np.column_stack([instance.capacity_matrix(), instance.prices()])
    uniq, counts = np.unique(keys, axis=0, return_counts=True)
    return uniq[:, :3], uniq[:, 3], counts.astype(float)


def cover_bound(instance: Instance, time_limit: float = COVER_TIME_LIMIT_S) -> float | None:
    """Bound for large instances: whole machines must cover the total demand on every resource
    under the threshold, and at least `min_used_machines` machines are needed by the sharding
    rule. An integer program over how many machines of each flavour (equal capacity and price)
    are bought; HiGHS's dual bound on it is returned (its optimum when it finishes within
    `time_limit`, and never below its LP relaxation, fractional machines). None when the whole
    pool cannot cover the demand."""
    cap, price, counts = machine_flavours(instance)
    total = instance.demand_matrix().sum(axis=0)
    need = sharding_need(instance)
    covered = LinearConstraint(
        np.vstack([cap.T, np.ones((1, len(counts)))]),
        np.concatenate([total, [need]]),
        np.inf,
    )
    res = milp(
        price,
        constraints=covered,
        integrality=np.ones(len(counts)),
        bounds=Bounds(0, counts),
        options={"time_limit": time_limit},
    )
    if res.status not in (0, 1):  # infeasible: the pool is too small
        return None
    return _dual_bound(res, price, covered, Bounds(0, counts))


def flavour_bound(instance: Instance, time_limit: float = COVER_TIME_LIMIT_S) -> float | None:
    """The cover bound with each request's demand kept whole: a request goes, in fractions,
    to the flavours its smallest piece (1/Gmax of it) fits, at most count/Gmin of it on a
    flavour of `count` machines (its pieces are on distinct machines), and each flavour's
    whole machines carry what goes to it on every resource. Where flavours are strong on
    different resources the cover bound lets one flavour's bandwidth and another's memory serve
    the same request; here they cannot. At least the cover bound when both finish (summing a
    flavour's rows gives the cover's). Only the machines per flavour are integers, so HiGHS
    finishes in under a second on 1 247 requests. None when no placement of every request
    exists."""
    cap, price, counts = machine_flavours(instance)
    demand = instance.demand_matrix()
    n, f = len(demand), len(counts)
    if n == 0:
        return 0.0
    smallest = demand / instance.gmax
    fits = np.all(smallest[:, None, :] <= cap[None, :, :] * (1 + 1e-9), axis=2)  # (n, f)
    share = np.where(fits, np.minimum(1.0, counts / instance.gmin)[None, :], 0.0)
    nx = n * f
    rows, cols, vals = [], [], []
    # Every request's fractions sum to 1.
    rows.append(np.repeat(np.arange(n), f))
    cols.append(np.arange(nx))
    vals.append(np.ones(nx))
    # Per flavour and resource: what goes to the flavour <= its machines' usable capacity.
    for t in range(f):
        for r in range(3):
            row = n + 3 * t + r
            rows.append(np.full(n + 1, row))
            cols.append(np.append(np.arange(n) * f + t, nx + t))
            vals.append(np.append(demand[:, r], -cap[t, r]))
    rows.append(np.full(f, n + 3 * f))
    cols.append(nx + np.arange(f))
    vals.append(np.ones(f))
    a = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n + 3 * f + 1, nx + f),
    ).tocsr()
    lower = np.concatenate([np.ones(n), np.full(3 * f, -np.inf), [sharding_need(instance)]])
    upper = np.concatenate([np.ones(n), np.zeros(3 * f), [np.inf]])
    constraint = LinearConstraint(a, lower, upper)
    objective = np.concatenate([np.zeros(nx), price])
    bounds = Bounds(0, np.concatenate([share.ravel(), counts]))
    res = milp(
        objective,
        constraints=constraint,
        integrality=np.concatenate([np.zeros(nx), np.ones(f)]),
        bounds=bounds,
        options={"time_limit": time_limit},
    )
    if res.status not in (0, 1):  # infeasible: some request fits nowhere, or the pool is short
        return None
    return _dual_bound(res, objective, constraint, bounds)


def sharding_need(instance: Instance) -> int:
    """Machines any placement of every request uses: `min_used_machines` where the overlap
    limit binds, else Gmin (one request's group)."""
    if instance.max_overlap < instance.gmin:
        return min_used_machines(len(instance.requests), instance.gmin, instance.max_overlap)
    return instance.gmin


def largest_bound(candidates: list[tuple[str, float | None]]) -> tuple[float | None, str]:
    """(bound, kind) of the largest of named lower bounds, None ones skipped; of equal ones
    the first names it (the flavour bound equals the cover bound where every request fits every
    flavour alike). (None, "none") when none is known."""
    known = [(kind, b) for kind, b in candidates if b is not None]
    if not known:
        return None, "none"
    kind, bound = max(known, key=lambda c: round(c[1], 6))
    return bound, kind


def _dual_bound(res, objective, constraint, bounds) -> float | None:
    """HiGHS's dual bound of a MILP it stopped, not its objective (it stops within a relative
    gap of the optimum); the LP relaxation's value when it gave none."""
    dual = getattr(res, "mip_dual_bound", None)
    if dual is not None and np.isfinite(dual):
        return float(dual)
    relaxed = milp(objective, constraints=constraint, bounds=bounds)
    return float(relaxed.fun) if relaxed.status == 0 else None


class _Model:
    def __init__(self, instance: Instance):
        self.inst = instance
        self.n = len(instance.requests)
        self.m = len(instance.machines)
        self.sizes = list(range(instance.gmin, instance.gmax + 1))
        self.k = len(self.sizes)
        self.cap = instance.capacity_matrix()
        self.demand = instance.demand_matrix()
        self.price = instance.prices()
        self.sharding = instance.max_overlap < instance.gmax
        # Column layout: x | z | rej | y | v | w (pair columns appended later)
        self.nx = self.n * self.m * self.k
        self.z0 = self.nx
        self.rej0 = self.z0 + self.n * self.k
        self.y0 = self.rej0 + self.n
        self.v0 = self.y0 + self.m
        self.nv = self.m + 1 if self.sharding else 0
        self.ncols = self.v0 + self.nv
        self.rows = _Rows()
        self.pairs: list[tuple[int, int]] = []
        self._build()

    def x(self, i: int, e: int, gi: int) -> int:
        return (i * self.m + e) * self.k + gi

    def _build(self) -> None:
        inst, rows, n, m = self.inst, self.rows, self.n, self.m
        o = inst.max_overlap
        for i in range(n):
            rows.add(
                [self.z0 + i * self.k + gi for gi in range(self.k)] + [self.rej0 + i],
                [1.0] * (self.k + 1),
                1,
                1,
            )
            for gi, g in enumerate(self.sizes):
                cols = [self.x(i, e, gi) for e in range(m)] + [self.z0 + i * self.k + gi]
                rows.add(cols, [1.0] * m + [-float(g)], 0, 0)
            for e in range(m):
                cols = [self.x(i, e, gi) for gi in range(self.k)] + [self.y0 + e]
                rows.add(cols, [1.0] * self.k + [-1.0], -np.inf, 0)
        for e in range(m):
            for r in range(3):
                cols, vals = [], []
                for i in range(n):
                    if self.demand[i, r] > 0:
                        for gi, g in enumerate(self.sizes):
                            cols.append(self.x(i, e, gi))
                            vals.append(self.demand[i, r] / g)
                if cols:
                    rows.add([*cols, self.y0 + e], [*vals, -self.cap[e, r]], -np.inf, 0)
        # Symmetry breaking among identical machines.
        groups: dict[tuple, list[int]] = {}
        for e, mach in enumerate(inst.machines):
            groups.setdefault((*mach.capacity, mach.price), []).append(e)
        for members in groups.values():
            for a, b in pairwise(members):
                rows.add([self.y0 + a, self.y0 + b], [1.0, -1.0], 0, np.inf)
        if self.sharding:
            ks = np.arange(m + 1)
            vcols = [self.v0 + k for k in ks]
            rows.add(vcols, [1.0] * (m + 1), 1, 1)
            rows.add(
                [self.y0 + e for e in range(m)] + vcols, [1.0] * m + [-float(k) for k in ks], 0, 0
            )
            cover = [float(math.comb(int(k), o + 1)) for k in ks]
            cols = [self.z0 + i * self.k + gi for i in range(n) for gi in range(self.k)]
            vals = [float(math.comb(g, o + 1)) for _ in range(n) for g in self.sizes]
            rows.add(cols + vcols, vals + [-c for c in cover], -np.inf, 0)
            per = [float(math.comb(int(k) - 1, o)) if k >= 1 else 0.0 for k in ks]
            for e in range(m):
                cols = [self.x(i, e, gi) for i in range(n) for gi in range(self.k)]
                vals = [float(math.comb(g - 1, o)) for _ in range(n) for g in self.sizes]
                rows.add(cols + vcols, vals + [-p for p in per], -np.inf, 0)

    def add_pair(self, i: int, j: int) -> None:
        """Exact overlap rows for requests i and j, with m new continuous columns w[e]."""
        base = self.ncols
        self.ncols += self.m
        self.pairs.append((i, j))
        for e in range(self.m):
            cols = [self.x(i, e, gi) for gi in range(self.k)]
            cols += [self.x(j, e, gi) for gi in range(self.k)]
            self.rows.add([*cols, base + e], [1.0] * (2 * self.k) + [-1.0], -np.inf, 1)
        self.rows.add(
            [base + e for e in range(self.m)], [1.0] * self.m, -np.inf, self.inst.max_overlap
        )

    def solve(self, time_limit: float, relax: bool = False):
        penalty = float(self.price.sum()) + 1.0
        c = np.zeros(self.ncols)
        c[self.y0 : self.y0 + self.m] = self.price
        c[self.rej0 : self.rej0 + self.n] = penalty
        integrality = np.zeros(self.ncols)
        if not relax:
            integrality[: self.v0 + self.nv] = 1
        options = {"time_limit": max(0.1, time_limit), "presolve": True}
        return milp(
            c,
            integrality=integrality,
            bounds=Bounds(0, 1),
            constraints=self.rows.constraint(self.ncols),
            options=options,
        )

    def groups(self, sol: np.ndarray) -> dict[int, tuple[int, ...]]:
        xs = sol[: self.nx].reshape(self.n, self.m, self.k).sum(axis=2)
        return {i: tuple(np.flatnonzero(xs[i] > 0.5).tolist()) for i in range(self.n)}


def _violating_pairs(groups: dict[int, tuple[int, ...]], overlap: int) -> list[tuple[int, int]]:
    on: dict[int, list[int]] = {}
    for i, g in groups.items():
        for e in g:
            on.setdefault(e, []).append(i)
    shared: dict[tuple[int, int], int] = {}
    for members in on.values():
        for a, b in combinations(sorted(members), 2):
            shared[(a, b)] = shared.get((a, b), 0) + 1
    return [p for p, c in shared.items() if c > overlap]


def solve_ilp(
    instance: Instance, time_limit: float = 60.0, max_pair_rows: int = 200_000
) -> IlpResult:
    start = time.monotonic()
    n, m = len(instance.requests), len(instance.machines)
    k = instance.gmax - instance.gmin + 1
    if n * m * k > MAX_X_VARIABLES:
        bound, kind = largest_bound(
            [("cover", cover_bound(instance)), ("flavour", flavour_bound(instance))]
        )
        return IlpResult(
            "too_large",
            None,
            bound,
            None,
            time.monotonic() - start,
            {"bound_kind": kind, "x_variables": n * m * k},
        )
    model = _Model(instance)
    lazy = model.sharding and n * (n - 1) // 2 * (m + 1) > max_pair_rows
    if model.sharding and not lazy:
        for i, j in combinations(range(n), 2):
            model.add_pair(i, j)
    rounds = 0
    bound: float | None = None
    while True:
        rounds += 1
        left = time_limit - (time.monotonic() - start)
        res = model.solve(left)
        if res.mip_dual_bound is not None and np.isfinite(res.mip_dual_bound):
            bound = max(bound or 0.0, float(res.mip_dual_bound))
        if res.x is None:
            status = "infeasible" if res.status == 2 else "time_limit"
            return IlpResult(
                status,
                None,
                bound,
                None,
                time.monotonic() - start,
                {"rounds": rounds, "pair_rows": len(model.pairs), "lazy": lazy},
            )
        groups = model.groups(res.x)
        missing = _violating_pairs(groups, instance.max_overlap) if model.sharding else []
        if not missing:
            break
        if time.monotonic() - start >= time_limit:
            return IlpResult(
                "time_limit",
                None,
                bound,
                None,
                time.monotonic() - start,
                {"rounds": rounds, "pair_rows": len(model.pairs), "lazy": lazy},
            )
        for i, j in missing:
            model.add_pair(i, j)
        log.info("ilp: round %d added %d overlap pairs", rounds, len(missing))

    cluster = Cluster(instance)
    rejected = []
    for i, req in enumerate(instance.requests):
        if groups[i]:
            cluster.place(req.id, groups[i], np.array(req.demand))
        else:
            rejected.append(req.id)
    objective = cluster.cost()
    optimal = res.status == 0
    status = "optimal" if optimal else "time_limit"
    if optimal and not rejected:
        bound = objective
    detail = {
        "rounds": rounds,
        "pair_rows": len(model.pairs),
        "lazy": lazy,
        "rejected": len(rejected),
    }
    placement = cluster.to_placement(
        rejected, "ilp", {"status": status, "bound": bound, "seconds": time.monotonic() - start}
    )
    return IlpResult(status, objective, bound, placement, time.monotonic() - start, detail)
