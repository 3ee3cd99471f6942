"""The Double-DQN placement agent (appendix A.2): per-machine Q-values and the filtering search.

State: the paper's S_i = <B, C, M, b_i, c_i, m_i> (free bandwidth, compute and memory of every
machine, and the request), extended with each machine's static capacity and price (so one
network serves pools of different flavours and sizes), whether it is used, its sharding load and
a few fleet-wide sums. The network is one small MLP applied to every (machine, group size g) row,
so it takes any number of machines and ranks them (per-machine Q-values, as in the paper).

Value of a group A of size g: Q(s, A) = sum_{e in A} q_g(s, e), with q_g(s, e) trained towards
r_e + gamma * Q_target(s', A') / g, where A' is the filtering choice at the next state.
Reward of machine e (`immediate`): the paper's reward charges the price of newly used machines
(Eq. 1); on its own it is sparse and says nothing about which flavour to open, so ours charges
-price_e * (increase of e's utilisation on its busiest resource + open_weight if e was unused):
summed over an episode the first term is each machine's price times its final utilisation, the
second stands for the capacity a new machine may leave unused. The immediate reward of an
action is known before taking it, so q_g(s, e) = r_e + W(s, e) with the MLP learning only W, the
discounted value of what follows (initialised to 0: an untrained agent is the greedy one).
Filtering (Algorithm 2): keep the top-k machines by q, enumerate the combinations of sizes
gmin..gmax among them, drop those that violate a constraint, and take the one that newly uses the
fewest machines (the paper's reward charges exactly those), then the best Q(s, A); so the network
decides which machines to fill and which flavour to open, never whether to open one needlessly.
If none is feasible, fall back to the first feasible group in q order over all machines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from importlib import resources
from itertools import combinations
from pathlib import Path

import numpy as np

from cyberstar.errors import UsageError
from cyberstar.orchestrator.cluster import Cluster
from cyberstar.orchestrator.model import Request
from cyberstar.orchestrator.search import first_group

NF_TYPES = ("nat", "lb")
NUM_FEATURES = 26
DEFAULT_MODEL = "drl.pt"


@dataclass(frozen=True)
class AgentConfig:
    hidden: int = 128
    top_k: int = 8
    gamma: float = 0.98
    reward: str = "usage"  # "usage" (above) or "cost" (-price of newly used machines only)
    open_weight: float = 0.1
    reward_scale: float = 10.0


def immediate(cluster: Cluster, demand: np.ndarray, config: AgentConfig) -> np.ndarray:
    """Reward r_e of every machine for every group size, shape (sizes, machines)."""
    price = cluster.price / cluster.price.max()
    opened = (~cluster.used).astype(float)
    if config.reward == "cost":
        row = -config.reward_scale * price * opened
        return np.tile(row, (cluster.gmax - cluster.gmin + 1, 1))
    before = np.max(cluster.load / cluster.capacity, axis=1)
    out = []
    for g in range(cluster.gmin, cluster.gmax + 1):
        after = np.max((cluster.load + demand / g) / cluster.capacity, axis=1)
        out.append(-config.reward_scale * price * (after - before + config.open_weight * opened))
    return np.stack(out)


def features(cluster: Cluster, request: Request, demand: np.ndarray) -> np.ndarray:
    """Feature rows of shape (sizes, machines, NUM_FEATURES), sizes = gmin..gmax."""
    m = cluster.num_machines
    cap = cluster.capacity
    ref = cap.max(axis=0)
    free = cluster.free()
    used = cluster.used
    n_used = int(used.sum())
    sizes = range(cluster.gmin, cluster.gmax + 1)
    out = np.zeros((len(sizes), m, NUM_FEATURES), dtype=np.float32)

    common = np.zeros((m, NUM_FEATURES), dtype=np.float32)
    common[:, 0:3] = free / ref
    common[:, 3:6] = cap / ref
    common[:, 6] = cluster.price / cluster.price.max()
    common[:, 7] = used
    o = cluster.index.max_overlap
    partners = math.comb(max(n_used - 1, 0), o) if o > 0 else 1
    common[:, 15] = np.clip(cluster.index.degree / max(partners, 1), 0.0, 1.0)
    kind = NF_TYPES.index(request.nf) if request.nf in NF_TYPES else len(NF_TYPES)
    common[:, 16 + kind] = 1.0
    common[:, 19] = n_used / m
    if n_used:
        common[:, 20:23] = free[used].sum(axis=0) / cap[used].sum(axis=0)
    common[:, 23:26] = cluster.load.sum(axis=0) / (ref * m) * 4.0
    for gi, g in enumerate(sizes):
        share = demand / g
        rows = out[gi]
        rows[:] = common
        rows[:, 8:11] = np.clip((free - share) / cap, -1.0, 1.0)
        rows[:, 11:14] = share / ref * 10.0
        rows[:, 14] = g / cluster.gmax
    return out


class QNetwork:
    """W(s, e): the MLP applied to each feature row. Built on demand so that importing this
    module (and so the CLI) does not import torch."""

    def __new__(cls, hidden: int):
        import torch

        net = torch.nn.Sequential(
            torch.nn.Linear(NUM_FEATURES, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )
        torch.nn.init.zeros_(net[-1].weight)
        torch.nn.init.zeros_(net[-1].bias)
        return net


@dataclass
class Choice:
    group: tuple[int, ...] | None
    rows: np.ndarray  # feature rows of the chosen machines, shape (len(group), NUM_FEATURES)
    rewards: np.ndarray  # r_e of the chosen machines
    value: float  # Q(s, A) under the network that chose


def candidate_pool(cluster: Cluster, fit_any: np.ndarray) -> np.ndarray:
    """Machines worth ranking: every used machine that fits, plus at most gmax unused machines of
    each (capacity, price) flavour (unused machines of one flavour are interchangeable)."""
    used = cluster.used
    keep = fit_any & used
    unused = np.flatnonzero(fit_any & ~used)
    if len(unused):
        keys = np.column_stack([cluster.capacity[unused], cluster.price[unused]])
        _, first = np.unique(keys, axis=0, return_inverse=True)
        seen: dict[int, int] = {}
        for e, key in zip(unused, first.ravel(), strict=True):
            if seen.get(int(key), 0) < cluster.gmax:
                seen[int(key)] = seen.get(int(key), 0) + 1
                keep[e] = True
    return np.flatnonzero(keep)


def filtering(
    cluster: Cluster, demand: np.ndarray, q: np.ndarray, top_k: int, allowed: np.ndarray | None
) -> tuple[tuple[int, ...] | None, int, float]:
    """Algorithm 2. `q` has shape (sizes, machines). Returns (group, size index, Q(s, group))."""
    gmin, gmax = cluster.gmin, cluster.gmax
    fit = np.stack([cluster.fits(demand / g) for g in range(gmin, gmax + 1)])
    if allowed is not None:
        fit &= allowed
    pool = candidate_pool(cluster, fit[-1])
    if len(pool) == 0:
        return None, 0, -math.inf
    best_q = q.max(axis=0)
    top = pool[np.argsort(-best_q[pool], kind="stable")[:top_k]]
    best: tuple[tuple[int, float], int, tuple[int, ...]] | None = None
    index = cluster.index
    unused = ~cluster.used
    for gi, g in enumerate(range(gmin, gmax + 1)):
        members = [int(e) for e in top if fit[gi, e]]
        qg = q[gi]
        for combo in combinations(sorted(members), g):
            key = (-int(sum(unused[e] for e in combo)), float(sum(qg[e] for e in combo)))
            if best is not None and key <= best[0]:
                continue
            if index.allows(combo):
                best = (key, gi, combo)
    if best is not None:
        return best[2], best[1], best[0][1]
    order = np.argsort(-best_q, kind="stable").tolist()
    group = first_group(cluster, demand, order, order, allowed)
    if group is None:
        return None, 0, -math.inf
    gi = len(group) - gmin
    return tuple(sorted(group)), gi, float(sum(q[gi, e] for e in group))


class DrlPolicy:
    """Greedy placement with a trained Q-network (the online running of appendix A.2)."""

    name = "drl"

    def __init__(self, network, config: AgentConfig):
        import torch

        self.torch = torch
        self.net = network.eval()
        self.config = config
        torch.set_num_threads(1)

    def future(self, rows: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(rows.reshape(-1, NUM_FEATURES))
            return self.net(x).numpy().reshape(rows.shape[:2])

    def decide(
        self, cluster: Cluster, request: Request, demand: np.ndarray, allowed: np.ndarray | None
    ) -> Choice:
        return decide(cluster, request, demand, allowed, self.future, self.config)

    def choose(
        self, cluster: Cluster, request: Request, demand: np.ndarray, allowed: np.ndarray | None
    ) -> tuple[int, ...] | None:
        return self.decide(cluster, request, demand, allowed).group


def decide(
    cluster: Cluster,
    request: Request,
    demand: np.ndarray,
    allowed: np.ndarray | None,
    future,
    config: AgentConfig,
) -> Choice:
    """Filtering choice with q = r + W, `future` mapping feature rows to W."""
    rows = features(cluster, request, demand)
    reward = immediate(cluster, demand, config)
    q = reward + future(rows)
    group, gi, value = filtering(cluster, demand, q, config.top_k, allowed)
    if not group:
        return Choice(None, np.zeros((0, NUM_FEATURES), np.float32), np.zeros(0), value)
    idx = list(group)
    return Choice(group, rows[gi, idx], reward[gi, idx], value)


def default_model_path() -> Path:
    return Path(str(resources.files("cyberstar.orchestrator") / "models" / DEFAULT_MODEL))


def save_model(path: Path | str, network, config: AgentConfig, info: dict) -> None:
    import torch

    torch.save(
        {
            "format": "cyberstar-drl-1",
            "config": asdict(config),
            "info": info,
            "state_dict": network.state_dict(),
        },
        str(path),
    )


def load_model(path: Path | str | None = None) -> tuple[DrlPolicy, dict]:
    import torch

    path = Path(path) if path else default_model_path()
    if not path.is_file():
        raise UsageError(
            f"--model: no model file at {path}; train one with `cyberstar place train`"
        )
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise UsageError(f"--model: {path} is not a cyberstar DRL model: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != "cyberstar-drl-1":
        raise UsageError(f"--model: {path} is not a cyberstar DRL model (format field)")
    config = AgentConfig(**blob["config"])
    net = QNetwork(config.hidden)
    net.load_state_dict(blob["state_dict"])
    return DrlPolicy(net, config), blob.get("info", {})
