"""The paper's baselines (§8.3): first-fit and weighted best-fit vector bin packing.

Both are online: one request at a time, never moving earlier ones, and both open a new machine
only when no group of already-used machines is feasible (`search.first_group`).
"""

from __future__ import annotations

import numpy as np

from cyberstar.orchestrator.cluster import Cluster
from cyberstar.orchestrator.model import Request
from cyberstar.orchestrator.search import first_group


class FirstFit:
    """Used machines in index order; a new machine is the cheapest one (ties by index), the
    'enhanced' first fit for bins of different prices."""

    name = "ff"

    def choose(
        self, cluster: Cluster, request: Request, demand: np.ndarray, allowed: np.ndarray | None
    ) -> tuple[int, ...] | None:
        order = range(cluster.num_machines)
        new_order = np.lexsort((np.arange(cluster.num_machines), cluster.price))
        return first_group(cluster, demand, order, new_order.tolist(), allowed)


class BestFit:
    """Weighted best fit: among used machines, the tightest fit first, where tightness is the
    weighted sum of the fractions of each resource left after the placement; a new machine is
    the one with the most weighted capacity per unit of price."""

    name = "bf"

    def __init__(self, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        w = np.asarray(weights, dtype=float)
        if w.shape != (3,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be three non-negative numbers, got {weights}")
        self.weights = w / w.sum()

    def choose(
        self, cluster: Cluster, request: Request, demand: np.ndarray, allowed: np.ndarray | None
    ) -> tuple[int, ...] | None:
        share = demand / cluster.gmin
        left = (cluster.free() - share) / cluster.capacity
        tightness = left @ self.weights
        order = np.argsort(tightness, kind="stable")
        reference = cluster.capacity.max(axis=0)
        value = (cluster.capacity / reference) @ self.weights
        new_order = np.argsort(cluster.price / value, kind="stable")
        return first_group(cluster, demand, order.tolist(), new_order.tolist(), allowed)
