"""Offline training of the placement agent: Algorithm 1 of the paper with rollout targets.

Algorithm 1 learns Q(s, A) = sum_{e in A} q(s, e) (here q = r + W, see drl.py) from experiences
in a replay buffer, with a target network theta' copied from the online network every C steps,
by minimising Eq. (7): (R_t + gamma Z_t - Q(S_t, A_t))^2, Z_t the target network's value of the
next state. We keep that structure and change two things, because one-step (and n-step)
bootstrapped targets taught the network almost nothing here (validation within 1 % of the
untrained agent after 300 episodes): the value of a single placement shows up dozens of
requests later and is small next to the value of the state itself.
- Z_t is a rollout of the target network's policy: from S_{t+1}, the next `horizon` requests
  placed greedily by theta', gamma^j R_{t+j} summed. The shaped reward (drl_state.py) makes the
  truncation sound: its potential already prices the rest of the queue.
- Experiences are branched: at a sampled state, each of the filtering search's best `branches`
  candidate groups (those that open as few machines as the best, which is all the filtering
  compares) is rolled out from the same state, and the loss compares the candidates: the
  network's value of each group, sum_{e in A} W(s, e), centred over the candidates, is fitted
  to the centred rollout values (Huber). Common to all candidates, the state's own value cancels,
  and what is left is what the decision changes (an advantage).
This is approximate policy iteration with a deep Q-network: the online network is fitted to the
target network's rollouts, then becomes the target network (every `target_sync` episodes).
Episodes place the first `max_requests` requests of a freshly drawn instance (`source(k)`), with
the online network plus Gaussian noise on W (`noise`, reward units) with probability epsilon.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from cyberstar.orchestrator.cluster import Cluster, Lookahead
from cyberstar.orchestrator.drl import (
    AgentConfig,
    DrlPolicy,
    QNetwork,
    decide,
    q_values,
    ranked_groups,
)
from cyberstar.orchestrator.drl_state import NUM_FEATURES
from cyberstar.orchestrator.heuristics import BestFit
from cyberstar.orchestrator.model import Instance
from cyberstar.orchestrator.search import place_all, queue_demand

log = logging.getLogger(__name__)

# Largest group size a branched experience holds.
MAX_GROUP = 5


@dataclass(frozen=True)
class TrainSettings:
    episodes: int = 100
    seed: int = 0
    lr: float = 1e-3
    batch: int = 64
    buffer: int = 20_000  # branched states kept
    updates: int = 40  # gradient steps after each episode
    branch: float = 0.06  # probability of branching at a state
    branches: int = 4  # candidate groups rolled out per branched state
    horizon: int = 25  # requests placed by the target policy in a rollout
    target_sync: int = 50  # episodes between copies of the online network to the target
    epsilon_start: float = 0.3
    epsilon_end: float = 0.05
    noise: float = 0.15
    max_requests: int = 300
    validate_every: int = 25  # episodes


class BranchBuffer:
    """Branched experiences: per state, the feature rows of up to `branches` candidate groups
    (padded to MAX_GROUP machines) and each candidate's rollout value."""

    def __init__(self, capacity: int, branches: int, rng: np.random.Generator):
        self.capacity = capacity
        self.rng = rng
        self.x = np.zeros((capacity, branches, MAX_GROUP, NUM_FEATURES), np.float32)
        self.mask = np.zeros((capacity, branches, MAX_GROUP), np.float32)
        self.valid = np.zeros((capacity, branches), np.float32)
        self.value = np.zeros((capacity, branches), np.float32)
        self.count = 0
        self.pos = 0

    def push(self, rows: list[np.ndarray], values: list[float]) -> None:
        i = self.pos
        self.x[i] = 0.0
        self.mask[i] = 0.0
        self.valid[i] = 0.0
        self.value[i] = 0.0
        for k, (r, v) in enumerate(zip(rows, values, strict=True)):
            self.x[i, k, : len(r)] = r
            self.mask[i, k, : len(r)] = 1.0
            self.valid[i, k] = 1.0
            self.value[i, k] = v
        self.pos = (self.pos + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def sample(self, n: int) -> tuple[np.ndarray, ...]:
        idx = self.rng.integers(0, self.count, size=n)
        return self.x[idx], self.mask[idx], self.valid[idx], self.value[idx]


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30):
        self.total = max(total, 1)
        self.enabled = enabled
        self.width = width
        self.start = time.monotonic()

    def update(self, done: int, text: str) -> None:
        if not self.enabled:
            return
        frac = done / self.total
        bar = "#" * int(frac * self.width)
        elapsed = time.monotonic() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        sys.stderr.write(f"\r[{bar:<{self.width}}] {100 * frac:5.1f}% {text} eta {eta:5.0f}s ")
        sys.stderr.flush()

    def end_line(self) -> None:
        """Keep the bar's current state on its own line (before a log line)."""
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def relative_cost(instances: list[Instance], policy, reference: np.ndarray) -> float:
    """Mean over the instances of the policy's placement cost / the reference cost (best fit's)."""
    costs = np.array([place_all(v, policy).cost for v in instances])
    return float(np.mean(costs / reference))


class _Episode:
    """One instance being placed, with what a rollout needs."""

    def __init__(self, instance: Instance, max_requests: int):
        self.requests = instance.requests[:max_requests]
        self.waiting = queue_demand(instance)
        self.total = len(instance.requests)
        prices = instance.prices()
        self.penalty = instance.gmax * float(prices.max()) / float(prices.mean())

    def look(self, cluster: Cluster, i: int) -> np.ndarray:
        cluster.lookahead = Lookahead(self.waiting[i], self.total - i - 1)
        return np.array(self.requests[i].demand, dtype=float)


def rollout(
    cluster: Cluster, ep: _Episode, t: int, group, policy, horizon: int, config: AgentConfig
) -> float:
    """sum_{j=1..horizon} gamma^j R_{t+j} after placing request t on `group`, the next requests
    placed by `policy` (W of the target network, None for W = 0)."""
    c = cluster.copy()
    c.place(ep.requests[t].id, group, np.array(ep.requests[t].demand, dtype=float))
    total = 0.0
    for j in range(1, horizon + 1):
        i = t + j
        if i >= len(ep.requests):
            break
        demand = ep.look(c, i)
        choice = decide(c, ep.requests[i], demand, None, policy, config)
        if not choice.group:
            total -= config.gamma**j * ep.penalty
            continue
        total += config.gamma**j * float(choice.rewards.sum())
        c.place(ep.requests[i].id, choice.group, demand)
    return total


def train(
    source: Callable[[int], Instance],
    settings: TrainSettings,
    config: AgentConfig | None = None,
    validation: list[Instance] | None = None,
    progress: bool = True,
    on_validation: Callable[[dict], None] | None = None,
):
    """Returns (network, info). With validation instances, the network kept is the one with the
    lowest mean validation cost relative to best fit (the untrained agent, W = 0, competes too:
    if no network beats it, the zero network is returned); otherwise the last one."""
    import torch

    config = config or AgentConfig()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(settings.seed)
    online = QNetwork(config.hidden)
    target = QNetwork(config.hidden)
    target.load_state_dict(online.state_dict())
    optimiser = torch.optim.Adam(online.parameters(), lr=settings.lr)
    buffer = BranchBuffer(settings.buffer, settings.branches, rng)
    bar = Progress(settings.episodes, progress)
    history: list[dict] = []
    validation = validation or []
    reference = np.array([place_all(v, BestFit()).cost for v in validation])
    untrained = (
        relative_cost(validation, DrlPolicy(None, config), reference) if validation else None
    )
    best_state = {k: v.clone() for k, v in online.state_dict().items()}
    best_val, best_episode = (untrained if untrained is not None else math.inf), 0
    losses: list[float] = []
    branched = 0

    def network_policy(net, noise: float = 0.0):
        def future(rows: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(rows.reshape(-1, NUM_FEATURES))
                w = net(x).numpy().reshape(rows.shape[:2])
            return w + rng.normal(0.0, noise, w.shape) if noise else w

        return future

    def learn() -> float:
        x, mask, valid, value = (torch.from_numpy(a) for a in buffer.sample(settings.batch))
        w = online(x.reshape(-1, NUM_FEATURES)).reshape(mask.shape)
        score = (w * mask).sum(dim=-1)
        n = valid.sum(dim=-1, keepdim=True)
        centred_score = (score - (score * valid).sum(dim=-1, keepdim=True) / n) * valid
        centred_value = (value - (value * valid).sum(dim=-1, keepdim=True) / n) * valid
        error = torch.nn.functional.smooth_l1_loss(centred_score, centred_value, reduction="none")
        loss = (error * valid).sum() / valid.sum()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online.parameters(), 10.0)
        optimiser.step()
        return float(loss.detach())

    def branch(cluster: Cluster, ep: _Episode, t: int, demand: np.ndarray, q, rows) -> None:
        nonlocal branched
        unused = ~cluster.used
        candidates = []
        for group, gi, _ in ranked_groups(cluster, demand, q, config, None):
            if candidates and unused[list(group)].sum() > unused[list(candidates[0][0])].sum():
                break
            candidates.append((group, gi))
            if len(candidates) == settings.branches:
                break
        if len(candidates) < 2 or max(len(g) for g, _ in candidates) > MAX_GROUP:
            return
        policy = network_policy(target)
        values = [
            rollout(cluster, ep, t, g, policy, settings.horizon, config) for g, _ in candidates
        ]
        buffer.push([rows[gi, list(g)] for g, gi in candidates], values)
        branched += 1

    def validate(episode: int, epsilon: float) -> None:
        nonlocal best_state, best_val, best_episode
        val = relative_cost(validation, DrlPolicy(online, config), reference)
        online.train()
        record = {
            "episode": episode,
            "branched_states": branched,
            "epsilon": round(epsilon, 4),
            "loss": round(float(np.mean(losses)), 6) if losses else None,
            "validation_cost_vs_bf": round(val, 4),
        }
        losses.clear()
        if val < best_val:
            best_val, best_episode = val, episode
            best_state = {k: v.clone() for k, v in online.state_dict().items()}
        history.append(record)
        bar.end_line()
        log.info("validation %s", record)
        if on_validation:
            on_validation(record)

    for episode in range(settings.episodes):
        frac = episode / max(settings.episodes - 1, 1)
        epsilon = settings.epsilon_start + (settings.epsilon_end - settings.epsilon_start) * frac
        inst = source(episode)
        if episode and episode % settings.target_sync == 0:
            target.load_state_dict(online.state_dict())
        ep = _Episode(inst, settings.max_requests)
        cluster = Cluster(inst)
        greedy = network_policy(online)
        for t, request in enumerate(ep.requests):
            demand = ep.look(cluster, t)
            if rng.random() < settings.branch:
                q, _, rows = q_values(cluster, demand, greedy)
                branch(cluster, ep, t, demand, q, rows)
            explore = rng.random() < epsilon
            policy = network_policy(online, settings.noise) if explore else greedy
            choice = decide(cluster, request, demand, None, policy, config)
            if choice.group:
                cluster.place(request.id, choice.group, demand)
        if buffer.count >= settings.batch:
            losses.extend(learn() for _ in range(settings.updates))
        bar.update(episode + 1, f"episode {episode + 1}/{settings.episodes} eps {epsilon:.2f}")
        if validation and (
            (episode + 1) % settings.validate_every == 0 or episode + 1 == settings.episodes
        ):
            validate(episode + 1, epsilon)
    bar.end_line()
    if validation:
        online.load_state_dict(best_state)
    online.eval()
    info = {
        "settings": asdict(settings),
        "history": history,
        "kept_episode": best_episode,
        "branched_states": branched,
        "untrained_validation_cost_vs_bf": None if untrained is None else round(untrained, 4),
    }
    return online, info
