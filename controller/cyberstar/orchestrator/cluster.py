"""Mutable state of the machine pool while requests are placed, moved and removed.

Shared by every algorithm and the dynamic simulator; the independent checker does not use it.
Machines are indices into `instance.machines`; loads and capacities are (machines, 3) arrays in
the order bandwidth, compute, memory, with the utilisation threshold already applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cyberstar.orchestrator.model import Instance, Placement, placement_cost
from cyberstar.orchestrator.sharding import ShardingIndex

# Relative slack when comparing a load with a capacity (split demands are floating-point sums).
SLACK = 1e-9


@dataclass
class Lookahead:
    """The requests known to be waiting after the one being decided (static mode: the rest of
    the file; dynamic mode: the rest of this step's arrivals): their summed demand and count."""

    demand: np.ndarray
    count: int


@dataclass(frozen=True)
class Assignment:
    machines: tuple[int, ...]
    demand: np.ndarray  # full demand; each machine carries demand / len(machines)


class Cluster:
    def __init__(self, instance: Instance):
        self.instance = instance
        self.gmin = instance.gmin
        self.gmax = instance.gmax
        self.capacity = instance.capacity_matrix()
        self.price = instance.prices()
        self.num_machines = len(instance.machines)
        self.load = np.zeros_like(self.capacity)
        self.count = np.zeros(self.num_machines, dtype=np.int64)
        self.index = ShardingIndex(instance.max_overlap, self.num_machines)
        self.placed: dict[str, Assignment] = {}
        # Requests hosted by both machines of each pair (a feature of the DRL agent's state).
        self.pairs = np.zeros((self.num_machines, self.num_machines), dtype=np.int32)
        self.lookahead = Lookahead(np.zeros(3), 0)
        self.cache: dict = {}  # per-pool constants derived by a policy (DRL features)

    # ---- queries ----------------------------------------------------------------------------
    @property
    def used(self) -> np.ndarray:
        return self.count > 0

    def free(self) -> np.ndarray:
        return self.capacity - self.load

    def fits(self, share: np.ndarray) -> np.ndarray:
        """Machines that can take `share` (one machine's part of a request) on every resource."""
        return np.all(self.load + share <= self.capacity * (1 + SLACK) + SLACK, axis=1)

    def cost(self) -> float:
        return float(self.price[self.used].sum())

    def utilisation(self) -> np.ndarray:
        """Per machine, the highest fraction of usable capacity in use over the three resources."""
        return np.max(self.load / self.capacity, axis=1)

    def copy(self) -> Cluster:
        """An independent copy of the state (the instance and derived constants are shared)."""
        other = object.__new__(Cluster)
        other.__dict__.update(self.__dict__)
        other.load = self.load.copy()
        other.count = self.count.copy()
        other.pairs = self.pairs.copy()
        other.index = self.index.copy()
        other.placed = dict(self.placed)
        return other

    # ---- changes ----------------------------------------------------------------------------
    def place(self, request_id: str, machines: Sequence[int], demand: np.ndarray) -> None:
        machines = tuple(sorted(int(m) for m in machines))
        if request_id in self.placed:
            raise ValueError(f"request {request_id!r} is already placed")
        self.index.add(request_id, machines)
        demand = np.asarray(demand, dtype=float)
        self.load[list(machines)] += demand / len(machines)
        self.count[list(machines)] += 1
        self.pairs[np.ix_(machines, machines)] += 1
        self.placed[request_id] = Assignment(machines, demand)

    def remove(self, request_id: str) -> Assignment:
        a = self.placed.pop(request_id)
        self.index.remove(request_id, a.machines)
        self.load[list(a.machines)] -= a.demand / len(a.machines)
        self.count[list(a.machines)] -= 1
        self.pairs[np.ix_(a.machines, a.machines)] -= 1
        idle = self.count == 0
        self.load[idle] = 0.0  # drop accumulated rounding on empty machines
        return a

    def set_demand(self, request_id: str, demand: np.ndarray) -> None:
        """Change a placed request's demand in place (dynamic mode); may exceed capacity."""
        a = self.placed[request_id]
        demand = np.asarray(demand, dtype=float)
        self.load[list(a.machines)] += (demand - a.demand) / len(a.machines)
        self.placed[request_id] = Assignment(a.machines, demand)

    def to_placement(self, rejected: list[str], algo: str, stats: dict | None = None) -> Placement:
        ids = [m.id for m in self.instance.machines]
        order = {r.id: i for i, r in enumerate(self.instance.requests)}
        assignments = {
            rid: [ids[e] for e in a.machines]
            for rid, a in sorted(self.placed.items(), key=lambda kv: order.get(kv[0], 0))
        }
        return Placement(
            assignments, rejected, placement_cost(self.instance, assignments), algo, stats or {}
        )
