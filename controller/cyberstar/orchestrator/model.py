"""Plain data for the placement problem (paper appendix A.1, Table 2).

A request asks for `bandwidth` (Mbit/s), `compute` (vCPU) and `memory` (GB); placed on G
machines, each machine carries 1/G of each. A machine's usable capacity per resource is
`threshold * capacity`.
Resources are always ordered (bandwidth, compute, memory) in arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

RESOURCES = ("bandwidth", "compute", "memory")


@dataclass(frozen=True)
class Machine:
    id: str
    bandwidth: float
    compute: float
    memory: float
    price: float
    kind: str = ""

    @property
    def capacity(self) -> tuple[float, float, float]:
        return (self.bandwidth, self.compute, self.memory)


@dataclass(frozen=True)
class Request:
    id: str
    tenant: str
    nf: str
    bandwidth: float
    compute: float
    memory: float

    @property
    def demand(self) -> tuple[float, float, float]:
        return (self.bandwidth, self.compute, self.memory)


@dataclass(frozen=True)
class Lifetime:
    """Dynamic mode: a request is active for steps arrive <= t < depart; its demand at step t is
    its declared demand times `load[t - arrive]`."""

    arrive: int
    depart: int
    load: tuple[float, ...]


@dataclass(frozen=True)
class Dynamic:
    step_seconds: float
    steps: int
    lifetimes: dict[str, Lifetime]


@dataclass
class Instance:
    threshold: float
    gmin: int
    gmax: int
    max_overlap: int
    machines: list[Machine]
    requests: list[Request]
    dynamic: Dynamic | None = None
    meta: dict = field(default_factory=dict)

    def capacity_matrix(self) -> np.ndarray:
        """Usable capacity (threshold applied), shape (machines, 3)."""
        return self.threshold * np.array([m.capacity for m in self.machines], dtype=float)

    def demand_matrix(self) -> np.ndarray:
        return np.array([r.demand for r in self.requests], dtype=float).reshape(-1, 3)

    def prices(self) -> np.ndarray:
        return np.array([m.price for m in self.machines], dtype=float)


@dataclass
class Placement:
    """Machines of each placed request (ids), the rejected requests, and the cost."""

    assignments: dict[str, list[str]]
    rejected: list[str]
    cost: float
    algo: str = ""
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict = {"assignments": self.assignments, "rejected": self.rejected, "cost": self.cost}
        if self.algo:
            out["algo"] = self.algo
        if self.stats:
            out["stats"] = self.stats
        return out


def placement_cost(instance: Instance, assignments: dict[str, list[str]]) -> float:
    """Sum of the prices of the machines that host at least one request, correctly rounded: the
    same machines cost the same bits whatever order a set of ids iterates in (it differs from
    process to process with Python's hash seed, and training compares costs across processes)."""
    price = {m.id: m.price for m in instance.machines}
    used = {mid for machines in assignments.values() for mid in machines}
    return math.fsum(price[mid] for mid in used)
