"""Shuffle-sharding index: any two requests share at most O machines.

Two machine sets share more than O machines exactly when they have an (O+1)-subset in common.
So instead of comparing a candidate with every placed request (quadratic in the number of
tenants), keep every (O+1)-subset already used by some request in a hash map and reject a
candidate whose own (O+1)-subsets hit it: C(G, O+1) lookups per candidate, whatever the number
of tenants. This is the idea behind the stateful searching shuffle sharder of AWS's Route 53
Infima library. Each subset has at most one owner, because two owners would share O+1 machines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np


class ShardingIndex:
    def __init__(self, max_overlap: int, num_machines: int):
        self.max_overlap = max_overlap
        self.size = max_overlap + 1
        self._owner: dict[tuple[int, ...], str] = {}
        # Number of used subsets that contain each machine: a feature for the DRL agent.
        self.degree = np.zeros(num_machines, dtype=np.int64)

    def copy(self) -> ShardingIndex:
        other = ShardingIndex(self.max_overlap, len(self.degree))
        other._owner = dict(self._owner)
        other.degree = self.degree.copy()
        return other

    def __len__(self) -> int:
        return len(self._owner)

    def subsets(self, machines: Iterable[int]) -> Iterable[tuple[int, ...]]:
        return combinations(sorted(machines), self.size)

    def allows(self, machines: Sequence[int]) -> bool:
        """True if a request on `machines` would share at most O machines with every request."""
        owner = self._owner
        return not any(s in owner for s in self.subsets(machines))

    def allows_extension(self, chosen: Sequence[int], machine: int) -> bool:
        """Incremental form of `allows` for depth-first search: `chosen` already passed, so only
        the subsets that contain `machine` need a lookup."""
        owner = self._owner
        if self.size == 1:
            return (machine,) not in owner
        if self.size == 2:
            for other in chosen:
                key = (other, machine) if other < machine else (machine, other)
                if key in owner:
                    return False
            return True
        for rest in combinations(chosen, self.size - 1):
            if tuple(sorted((*rest, machine))) in owner:
                return False
        return True

    def add(self, request_id: str, machines: Sequence[int]) -> None:
        if not self.allows(machines):
            raise ValueError(f"machines {sorted(machines)} overlap an existing request too much")
        for s in self.subsets(machines):
            self._owner[s] = request_id
            self.degree[list(s)] += 1

    def remove(self, request_id: str, machines: Sequence[int]) -> None:
        for s in self.subsets(machines):
            if self._owner.get(s) == request_id:
                del self._owner[s]
                self.degree[list(s)] -= 1
