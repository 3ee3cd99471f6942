"""The Double-DQN placement agent (appendix A.2): per-machine Q-values and the filtering search.

State and reward: `drl_state.py`. The network is one small MLP applied to every (machine, group
size g) feature row, so it takes any number of machines and ranks them (per-machine Q-values, as
in the paper).

Value of a group A of size g: Q(s, A) = sum_{e in A} q_g(s, e) with q = r + W: the immediate
reward r_e is known before acting, the network learns only W, the discounted value of what
follows (its last layer starts at 0, so an untrained agent is the greedy one on r). The targets
are n-step Double-DQN returns (`training.py`).
Filtering (Algorithm 2): keep the top-k machines by q, enumerate the combinations of sizes
gmin..gmax among them, drop those that violate a constraint, and take the one that newly uses the
fewest machines (the paper's reward charges exactly those), then the best Q(s, A); so the network
decides which machines to fill, which flavour to open and how wide to spread a request, never
whether to open a machine needlessly. With an opening penalty lambda (`AgentConfig`) the
candidates are ranked by Q(s, A) - lambda * (machines A newly uses) instead: a group that opens
one more machine than another wins when its value is more than lambda higher, which the reward's
charge for the machine already makes rare. If none is feasible, fall back to the first feasible
group in q order over all machines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from itertools import combinations
from pathlib import Path

import numpy as np

from cyberstar.errors import UsageError
from cyberstar.orchestrator.cluster import Cluster
from cyberstar.orchestrator.drl_state import NUM_FEATURES, features, immediate, outlook, statics
from cyberstar.orchestrator.model import Request
from cyberstar.orchestrator.search import first_group

DEFAULT_MODEL = "drl.pt"
MODEL_FORMAT = "cyberstar-drl-2"


@dataclass(frozen=True)
class AgentConfig:
    hidden: int = 64
    top_k: int = 12
    gamma: float = 0.99
    # None: fewest newly used machines first (Algorithm 2); a number: the ranking's price, in
    # reward units, of each newly used machine on top of Q(s, A).
    opening_penalty: float | None = None


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
    keep = fit_any & cluster.used
    flavour = statics(cluster).flavour
    spare = fit_any & ~cluster.used
    for f in np.unique(flavour[spare]):
        keep[np.flatnonzero(spare & (flavour == f))[: cluster.gmax]] = True
    return np.flatnonzero(keep)


@cache
def _combinations(k: int, g: int) -> np.ndarray:
    """Every g-subset of range(k), lexicographic, shape (C(k, g), g)."""
    return np.array(list(combinations(range(k), g)), dtype=np.int64).reshape(-1, g)


def ranked_groups(
    cluster: Cluster,
    demand: np.ndarray,
    q: np.ndarray,
    config: AgentConfig,
    allowed: np.ndarray | None,
) -> Iterator[tuple[tuple[int, ...], int, float]]:
    """Algorithm 2's candidates, best first: the groups of sizes gmin..gmax among the top-k
    machines by q that fit and pass the sharding index, ranked by (fewest newly used machines,
    highest Q(s, A), smallest size, lexicographic), or with an opening penalty lambda by
    (highest Q(s, A) - lambda * newly used machines, fewest newly used, smallest size,
    lexicographic). Yields (group, size index, Q(s, group))."""
    gmin, gmax = cluster.gmin, cluster.gmax
    fit = np.stack([cluster.fits(demand / g) for g in range(gmin, gmax + 1)])
    if allowed is not None:
        fit &= allowed
    pool = candidate_pool(cluster, fit[-1])
    if len(pool) == 0:
        return
    best_q = q.max(axis=0)
    top = np.sort(pool[np.argsort(-best_q[pool], kind="stable")[: config.top_k]])
    unused = ~cluster.used
    groups, sizes, new, value = [], [], [], []
    for gi, g in enumerate(range(gmin, gmax + 1)):
        members = top[fit[gi, top]]
        if len(members) < g:
            continue
        combos = members[_combinations(len(members), g)]
        groups.extend(combos.tolist())
        sizes.append(np.full(len(combos), gi))
        new.append(unused[combos].sum(axis=1))
        value.append(q[gi][combos].sum(axis=1))
    if not groups:
        return
    new_all, value_all = np.concatenate(new), np.concatenate(value)
    size_all = np.concatenate(sizes)
    if config.opening_penalty is None:
        order = np.lexsort((-value_all, new_all))
    else:
        order = np.lexsort((new_all, -(value_all - config.opening_penalty * new_all)))
    for j in order:
        if cluster.index.allows(groups[j]):
            yield tuple(groups[j]), int(size_all[j]), float(value_all[j])


def filtering(
    cluster: Cluster,
    demand: np.ndarray,
    q: np.ndarray,
    config: AgentConfig,
    allowed: np.ndarray | None,
) -> tuple[tuple[int, ...] | None, int, float]:
    """Algorithm 2: the best of `ranked_groups`; if none is feasible, the first feasible group in
    q order over all machines. Returns (group, size index, Q(s, group))."""
    for found in ranked_groups(cluster, demand, q, config, allowed):
        return found
    best_q = q.max(axis=0)
    order = np.argsort(-best_q, kind="stable").tolist()
    group = first_group(cluster, demand, order, order, allowed)
    if group is None:
        return None, 0, -math.inf
    gi = len(group) - cluster.gmin
    return tuple(sorted(group)), gi, float(sum(q[gi, e] for e in group))


class DrlPolicy:
    """Greedy placement with a trained Q-network (the online running of appendix A.2); with no
    network, the untrained agent (W = 0: the immediate reward and the filtering alone)."""

    def __init__(self, network, config: AgentConfig):
        self.net = network.eval() if network is not None else None
        self.config = config
        self.name = "drl" if network is not None else "drl-untrained"
        if network is not None:
            import torch

            self.torch = torch
            torch.set_num_threads(1)

    def future(self, rows: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(rows.reshape(-1, NUM_FEATURES))
            return self.net(x).numpy().reshape(rows.shape[:2])

    def decide(
        self, cluster: Cluster, request: Request, demand: np.ndarray, allowed: np.ndarray | None
    ) -> Choice:
        future = self.future if self.net is not None else None
        return decide(cluster, request, demand, allowed, future, self.config)

    def choose(
        self, cluster: Cluster, request: Request, demand: np.ndarray, allowed: np.ndarray | None
    ) -> tuple[int, ...] | None:
        return self.decide(cluster, request, demand, allowed).group


def q_values(
    cluster: Cluster, demand: np.ndarray, future
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, r, rows) of every (group size, machine): q = r + W, the immediate rewards r and the
    feature rows W is computed from, `future` mapping rows to W (None: W = 0)."""
    view = outlook(cluster, demand)
    reward = immediate(cluster, demand, view)
    rows = features(cluster, demand, reward, view)
    return (reward if future is None else reward + future(rows)), reward, rows


def decide(
    cluster: Cluster,
    request: Request,
    demand: np.ndarray,
    allowed: np.ndarray | None,
    future,
    config: AgentConfig,
) -> Choice:
    """Filtering choice with q = r + W, `future` mapping feature rows to W (None: W = 0, the
    untrained agent)."""
    q, reward, rows = q_values(cluster, demand, future)
    group, gi, value = filtering(cluster, demand, q, config, allowed)
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
            "format": MODEL_FORMAT,
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
    if not isinstance(blob, dict) or "format" not in blob:
        raise UsageError(f"--model: {path} is not a cyberstar DRL model (format field)")
    if blob["format"] != MODEL_FORMAT:
        raise UsageError(
            f"--model: {path} is a {blob['format']} model; this version reads {MODEL_FORMAT} "
            "(retrain it with `cyberstar place train`)"
        )
    config = AgentConfig(**blob["config"])
    net = QNetwork(config.hidden)
    net.load_state_dict(blob["state_dict"])
    return DrlPolicy(net, config), blob.get("info", {})
