"""What the DRL agent sees and what it is paid: state features and the immediate reward.

State (the paper's S_i = <B, C, M, b_i, c_i, m_i>, extended). One feature row per (machine e,
group size g), every number relative to the pool so one network serves any pool size, flavour
set, threshold and demand scale:
- the machine: capacity and price relative to the pool's largest, capacity per unit of price
  relative to the pool's best, whether it is used, its free share of each resource now and after
  taking 1/g of the request, how much of it the share takes, how many requests it hosts;
- sharding: how many used machines it has never shared a request with ("fresh partners"), and
  how many of those could also take the share now (the partners a group with e can still use);
- the request: its demand relative to the pool's mean usable capacity, g;
- lookahead of the queue (`cluster.lookahead`): the demand still waiting relative to the free
  capacity of the used machines and to the pool, the fraction of requests left, the fresh pairs
  left per waiting request, and the estimated cost F of the machines still to open (below);
- the immediate reward of e.

Reward, consistent with the cost objective (Eq. 1). The paper charges the price of every machine
a decision newly uses; on its own that is sparse, so a potential term is added (potential-based
shaping keeps the optimal policy): Phi(s) = -F(s), where F estimates the cost of the machines
still to open. Measure the waiting requests (this one and the queue) in units of their average
w = (waiting demand) / (waiting count): a machine with free capacity f hosts h = min_r f_r / w_r
average requests, a fresh machine of flavour t hosts n_t = min_r cap_t,r / w_r, so the cheapest
price per average request is c* = min over unused machines of price / n, and
  F(s) = c* * max(0, waiting count - sum over used machines of h).
F is 0 at the end of the queue, so the rewards of an episode sum to -cost + F(start): the return
ranks placements exactly as the cost does. The reward of one machine e of a group of size g is
its part of -price_new + F(s) - F(s'): -price_e if e is newly used, plus c* times the change in
the average requests e can host (for a new e, all it hosts after taking its share), plus c*/g
(the request leaves the queue). So opening a flavour that hosts the waiting mix cheaply costs
about nothing while one whose capacity the mix cannot use is charged, and filling a used machine
is paid by how much room for the waiting mix it destroys: a request that fills a machine's
spare resources costs little, one that exhausts its scarce resource a lot. When the used
machines can host the whole queue (F = 0), only newly used machines are charged. Rewards are in
units of the pool's mean price.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cyberstar.orchestrator.cluster import Cluster

NUM_FEATURES = 43


@dataclass
class PoolStatics:
    """Per-cluster constants, computed once per episode."""

    ref: np.ndarray  # (3,) largest usable capacity per resource
    cap: np.ndarray  # (m, 3) usable capacity / ref
    price: np.ndarray  # (m,) price / largest price
    unit: float  # mean price: the reward unit
    efficiency: np.ndarray  # (m, 3) capacity per price / the pool's best
    mean_cap: np.ndarray  # (3,) mean usable capacity
    total_cap: np.ndarray  # (3,) usable capacity of the whole pool
    flavour: np.ndarray  # (m,) index of each machine's (capacity, price) flavour


def statics(cluster: Cluster) -> PoolStatics:
    cached = cluster.cache.get("drl")
    if cached is None:
        cap = cluster.capacity
        ref = cap.max(axis=0)
        per_price = cap / np.maximum(cluster.price, 1e-9)[:, None]
        keys = np.column_stack([cap, cluster.price])
        _, flavour = np.unique(keys, axis=0, return_inverse=True)
        cached = PoolStatics(
            ref=ref,
            cap=cap / ref,
            price=cluster.price / max(cluster.price.max(), 1e-9),
            unit=max(float(cluster.price.mean()), 1e-9),
            efficiency=per_price / per_price.max(axis=0),
            mean_cap=cap.mean(axis=0),
            total_cap=cap.sum(axis=0),
            flavour=flavour.ravel(),
        )
        cluster.cache["drl"] = cached
    return cached


@dataclass
class Outlook:
    """The waiting queue measured in average requests (see the module docstring)."""

    average: np.ndarray  # (3,) w, the average waiting request
    hosts: np.ndarray  # (m,) h: average requests each machine's free capacity hosts
    short: float  # waiting count - what the used machines host (F = c* * max(0, short))
    price_per_request: float  # c*, 0 if no machine is left to open

    @property
    def future_cost(self) -> float:
        return self.price_per_request * max(self.short, 0.0)


def outlook(cluster: Cluster, demand: np.ndarray) -> Outlook:
    s = statics(cluster)
    look = cluster.lookahead
    count = look.count + 1
    w = np.maximum((look.demand + demand) / count, 1e-9 * s.ref)
    hosts = np.min((cluster.capacity - cluster.load) / w, axis=1)
    used = cluster.used
    unused = ~used
    c_star = 0.0
    if unused.any():
        fresh = np.min(cluster.capacity[unused] / w, axis=1)
        c_star = float(np.min(cluster.price[unused] / np.maximum(fresh, 1e-12)))
    return Outlook(w, hosts, count - float(hosts[used].sum()), c_star)


def immediate(cluster: Cluster, demand: np.ndarray, view: Outlook | None = None) -> np.ndarray:
    """Reward r_e of using machine e for this request, shape (sizes, machines)."""
    s = statics(cluster)
    view = view or outlook(cluster, demand)
    used = cluster.used
    charge = np.where(used, 0.0, -cluster.price)
    sizes = range(cluster.gmin, cluster.gmax + 1)
    out = np.empty((len(sizes), cluster.num_machines))
    if view.short <= 0 or view.price_per_request == 0.0:
        out[:] = charge / s.unit
        return out
    free = cluster.capacity - cluster.load
    for gi, g in enumerate(sizes):
        after = np.min((free - demand / g) / view.average, axis=1)
        room = np.where(used, after - view.hosts, after)
        out[gi] = (charge + view.price_per_request * (room + 1.0 / g)) / s.unit
    return out


def _squash(x: np.ndarray | float) -> np.ndarray | float:
    """Map [0, inf) to [0, 1): ratios that can be large stay bounded."""
    return x / (1.0 + x)


def features(cluster: Cluster, demand: np.ndarray, reward: np.ndarray, view: Outlook) -> np.ndarray:
    """Feature rows of shape (sizes, machines, NUM_FEATURES), sizes = gmin..gmax; `reward` is
    `immediate`'s, `view` the outlook it was computed from."""
    s = statics(cluster)
    m = cluster.num_machines
    cap = cluster.capacity
    free = cap - cluster.load
    used = cluster.used
    n_used = int(used.sum())
    sizes = range(cluster.gmin, cluster.gmax + 1)
    look = cluster.lookahead
    waiting = look.demand + demand

    fresh = (cluster.pairs == 0) & used[None, :]
    np.fill_diagonal(fresh, False)
    partners = max(n_used - 1, 1)
    fresh_pairs = int(np.triu(fresh & used[:, None], 1).sum())
    fresh = fresh.astype(np.float32)
    free_used = free[used].sum(axis=0)

    common = np.zeros((m, NUM_FEATURES), dtype=np.float32)
    common[:, 0:3] = s.cap
    common[:, 3] = s.price
    common[:, 4:7] = s.efficiency
    common[:, 7] = used
    common[:, 8:11] = free / cap
    common[:, 19] = fresh.sum(axis=1) / partners
    common[:, 21] = cluster.count / max(int(cluster.count.max()), 1)
    common[:, 23] = _squash(np.maximum(view.hosts, 0.0) / (look.count + 1))
    common[:, 24:27] = _squash(demand / s.mean_cap)
    common[:, 27] = _squash(float(np.max(demand / s.mean_cap)))
    common[:, 28] = n_used / m
    common[:, 29:32] = _squash(waiting / np.maximum(free_used, 1e-9 * s.ref))
    common[:, 32:35] = waiting / s.total_cap
    common[:, 35:38] = free_used / np.maximum(cap[used].sum(axis=0), 1e-9) if n_used else 0.0
    common[:, 38] = look.count / (look.count + len(cluster.placed) + 1)
    common[:, 39] = _squash(fresh_pairs / (look.count + 1))
    common[:, 40] = cluster.index.max_overlap / 2
    common[:, 41] = cluster.gmin / 5
    common[:, 42] = _squash(view.future_cost / s.unit / 10)
    out = np.empty((len(sizes), m, NUM_FEATURES), dtype=np.float32)
    span = max(cluster.gmax - cluster.gmin, 1)
    for gi, g in enumerate(sizes):
        share = demand / g
        rows = out[gi]
        rows[:] = common
        rows[:, 11:14] = np.clip((free - share) / cap, -1.0, 1.0)
        rows[:, 14:17] = np.clip(share / cap, 0.0, 2.0)
        rows[:, 17] = g / 5
        rows[:, 18] = (g - cluster.gmin) / span
        rows[:, 22] = reward[gi]
        roomy = fresh @ (cluster.fits(share) & used).astype(np.float32)
        rows[:, 20] = roomy / partners
    return out
