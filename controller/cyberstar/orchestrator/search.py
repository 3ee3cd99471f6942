"""Finding a feasible machine group for one request, and the sequential driver.

Every online algorithm ranks machines its own way and hands the ranking to `first_group`, which
returns the first feasible group in that ranking with the fewest newly opened machines (a machine
with no request costs its price; one already used costs nothing more). Feasible means: the split
demand fits under the threshold on every machine of the group and the group shares at most O
machines with every placed request (the sharding index).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from cyberstar.orchestrator.cluster import Cluster, Lookahead
from cyberstar.orchestrator.model import Instance, Placement, Request

log = logging.getLogger(__name__)

# Depth-first search nodes allowed per request before giving up (bounds the worst case; counted
# in the placement stats when hit, so a rejection after exhaustion is visible).
SEARCH_BUDGET = 200_000


class Policy(Protocol):
    name: str

    def choose(
        self, cluster: Cluster, request: Request, demand: np.ndarray, allowed: np.ndarray | None
    ) -> tuple[int, ...] | None:
        """Machines for `request` with the given demand, or None if no feasible group exists.
        `allowed` (a boolean mask) restricts the machines that may be used."""
        ...


class SearchBudget:
    def __init__(self, nodes: int = SEARCH_BUDGET):
        self.left = nodes
        self.exhausted = False

    def spend(self) -> bool:
        self.left -= 1
        if self.left < 0:
            self.exhausted = True
        return not self.exhausted


def compatible_subset(
    cluster: Cluster, candidates: Sequence[int], size: int, budget: SearchBudget
) -> list[int] | None:
    """First `size` machines from `candidates`, in order (lexicographic depth-first search), that
    pass the sharding index together."""
    if size == 0:
        return []
    if size <= cluster.index.max_overlap:
        return list(candidates[:size]) if len(candidates) >= size else None
    index = cluster.index
    chosen: list[int] = []
    n = len(candidates)

    def extend(start: int) -> bool:
        if len(chosen) == size:
            return True
        for j in range(start, n - (size - len(chosen)) + 1):
            if not budget.spend():
                return False
            e = candidates[j]
            if index.allows_extension(chosen, e):
                chosen.append(e)
                if extend(j + 1):
                    return True
                chosen.pop()
        return False

    return chosen if extend(0) else None


def first_group(
    cluster: Cluster,
    demand: np.ndarray,
    used_order: Sequence[int],
    new_order: Sequence[int],
    allowed: np.ndarray | None = None,
    budget: SearchBudget | None = None,
) -> tuple[int, ...] | None:
    """Fewest new machines first, then the smallest group size, then the ranking order."""
    budget = budget or SearchBudget()
    used = cluster.used
    fit_by_g = {}
    for g in range(cluster.gmin, cluster.gmax + 1):
        ok = cluster.fits(demand / g)
        if allowed is not None:
            ok = ok & allowed
        fit_by_g[g] = ok
    for new in range(0, cluster.gmax + 1):
        for g in range(max(cluster.gmin, new), cluster.gmax + 1):
            ok = fit_by_g[g]
            fresh = [e for e in new_order if ok[e] and not used[e]][:new]
            if len(fresh) < new:
                continue
            old = [e for e in used_order if ok[e] and used[e]]
            found = compatible_subset(cluster, old, g - new, budget)
            if found is not None:
                return tuple(found + fresh)
            if budget.exhausted:
                return None
    return None


def place_all(instance: Instance, policy: Policy) -> Placement:
    """Static mode: decide the requests in file order, each once, as the paper's sequential
    formulation does; the policy may look at the demand still waiting (`cluster.lookahead`).
    Stats include the decision time per request."""
    cluster = Cluster(instance)
    rejected: list[str] = []
    times = np.zeros(len(instance.requests))
    waiting = queue_demand(instance)
    for i, request in enumerate(instance.requests):
        demand = np.array(request.demand, dtype=float)
        cluster.lookahead = Lookahead(waiting[i], len(instance.requests) - i - 1)
        start = time.perf_counter()
        group = policy.choose(cluster, request, demand, None)
        times[i] = time.perf_counter() - start
        if group is None:
            rejected.append(request.id)
            log.info("%s: no feasible group for request %s", policy.name, request.id)
        else:
            cluster.place(request.id, group, demand)
    stats = decision_stats(times)
    return cluster.to_placement(rejected, policy.name, stats)


def queue_demand(instance: Instance) -> np.ndarray:
    """Row i: the summed demand of the requests after request i in file order."""
    demand = instance.demand_matrix()
    after = np.cumsum(demand[::-1], axis=0)[::-1]
    return np.vstack([after[1:], np.zeros((1, 3))])


def decision_stats(seconds: np.ndarray) -> dict:
    if len(seconds) == 0:
        return {"decisions": 0}
    ms = seconds * 1e3
    return {
        "decisions": len(ms),
        "decision_ms_mean": round(float(ms.mean()), 4),
        "decision_ms_p99": round(float(np.percentile(ms, 99)), 4),
        "decision_ms_max": round(float(ms.max()), 4),
    }
