"""Offline training of the placement agent: Algorithm 1 of the paper (Double DQN).

One episode places one training instance's requests in file order. With probability epsilon the
agent explores (a random feasible group: RandomAction), otherwise it takes the filtering choice.
Each machine of the chosen group is one experience (s, e, r_e, s') in the replay buffer; the
target of q(s, e) = r_e + W(s, e) is r_e + gamma * sum_{e' in A'} q_target(s', e') / |A|, where A'
is the filtering choice at s' under the online network and q_target uses the target network,
copied from the online network every `target_sync` steps (Double DQN: the online network
selects, the target network evaluates). The loss is Eq. (7) with a Huber penalty.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from cyberstar.orchestrator.cluster import Cluster
from cyberstar.orchestrator.drl import (
    NUM_FEATURES,
    AgentConfig,
    Choice,
    DrlPolicy,
    QNetwork,
    decide,
    features,
    immediate,
)
from cyberstar.orchestrator.heuristics import BestFit
from cyberstar.orchestrator.model import Instance
from cyberstar.orchestrator.search import first_group, place_all

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    seed: int = 0
    lr: float = 5e-4
    batch: int = 128
    buffer: int = 200_000
    warmup: int = 1_000
    target_sync: int = 1_000
    epsilon_start: float = 0.3
    epsilon_end: float = 0.02


class ReplayBuffer:
    """Per-machine experiences: features and reward of machine e at s, and the features and
    rewards of the machines of the next filtering choice A' at s'."""

    def __init__(self, capacity: int, gmax: int, rng: np.random.Generator):
        self.capacity = capacity
        self.rng = rng
        self.x = np.zeros((capacity, NUM_FEATURES), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_x = np.zeros((capacity, gmax, NUM_FEATURES), np.float32)
        self.next_reward = np.zeros((capacity, gmax), np.float32)
        self.next_mask = np.zeros((capacity, gmax), np.float32)
        self.size = np.ones(capacity, np.float32)
        self.count = 0
        self.pos = 0

    def push(self, x: np.ndarray, reward: float, nxt: Choice | None, size: int) -> None:
        """`nxt` None: s' is terminal (or nothing was feasible there)."""
        i = self.pos
        self.x[i] = x
        self.reward[i] = reward
        self.next_x[i] = 0.0
        self.next_reward[i] = 0.0
        self.next_mask[i] = 0.0
        if nxt is not None and nxt.group:
            k = len(nxt.group)
            self.next_x[i, :k] = nxt.rows
            self.next_reward[i, :k] = nxt.rewards
            self.next_mask[i, :k] = 1.0
        self.size[i] = size
        self.pos = (self.pos + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def sample(self, n: int) -> tuple[np.ndarray, ...]:
        """(next features, next rewards, next mask, |A|, features) of n random experiences; the
        reward of the experience itself is not needed, as W = q - r."""
        idx = self.rng.integers(0, self.count, size=n)
        return (
            self.next_x[idx],
            self.next_reward[idx],
            self.next_mask[idx],
            self.size[idx],
            self.x[idx],
        )


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


def random_group(cluster: Cluster, demand: np.ndarray, rng: np.random.Generator):
    """RandomAction(): a random feasible group (random ranking, fewest new machines first)."""
    order = rng.permutation(cluster.num_machines).tolist()
    return first_group(cluster, demand, order, order)


def train(
    instances: list[Instance],
    settings: TrainSettings,
    config: AgentConfig | None = None,
    validation: list[Instance] | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
):
    """Returns (network, info). With validation instances, the network kept is the one with the
    lowest mean validation cost after an epoch; otherwise the last one."""
    import torch

    config = config or AgentConfig()
    if not instances:
        raise ValueError("no training instances")
    torch.manual_seed(settings.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(settings.seed)
    online = QNetwork(config.hidden)
    target = QNetwork(config.hidden)
    target.load_state_dict(online.state_dict())
    optimiser = torch.optim.Adam(online.parameters(), lr=settings.lr)
    gmax = max(inst.gmax for inst in instances)
    replay = ReplayBuffer(settings.buffer, gmax, rng)
    total_steps = settings.epochs * sum(len(inst.requests) for inst in instances)
    bar = Progress(total_steps, progress)
    step = 0
    history: list[dict] = []
    best_state, best_val, best_epoch = None, math.inf, settings.epochs
    # Reported beside the mean validation cost (which picks the epoch kept).
    reference = np.array([place_all(v, BestFit()).cost for v in validation or []])

    def future(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(rows.reshape(-1, NUM_FEATURES))
            return online(x).numpy().reshape(rows.shape[:2])

    def learn() -> float:
        nx, nr, nmask, size, x = (torch.from_numpy(a) for a in replay.sample(settings.batch))
        with torch.no_grad():
            nw = target(nx.reshape(-1, NUM_FEATURES)).reshape(nmask.shape)
            z = ((nr + nw) * nmask).sum(dim=1) / size
            y = config.gamma * z  # the target of W = q - r
        pred = online(x).squeeze(1)
        loss = torch.nn.functional.smooth_l1_loss(pred, y)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online.parameters(), 10.0)
        optimiser.step()
        return float(loss.detach())

    for epoch in range(settings.epochs):
        frac = epoch / max(settings.epochs - 1, 1)
        epsilon = settings.epsilon_start + (settings.epsilon_end - settings.epsilon_start) * frac
        costs, losses = [], []
        for ei in rng.permutation(len(instances)):
            inst = instances[ei]
            cluster = Cluster(inst)
            pending: list[tuple[np.ndarray, float]] = []
            pending_size = 1
            for request in inst.requests:
                demand = np.array(request.demand, dtype=float)
                greedy = decide(cluster, request, demand, None, future, config)
                for x, r in pending:
                    replay.push(x, r, greedy, pending_size)
                taken = greedy
                if rng.random() < epsilon:
                    group = random_group(cluster, demand, rng)
                    taken = None
                    if group is not None:
                        gi = len(group) - cluster.gmin
                        rows = features(cluster, request, demand)[gi, list(group)]
                        reward = immediate(cluster, demand, config)[gi, list(group)]
                        taken = Choice(tuple(group), rows, reward, 0.0)
                pending = []
                if taken is not None and taken.group:
                    pending = list(zip(taken.rows, taken.rewards.tolist(), strict=True))
                    pending_size = len(taken.group)
                    cluster.place(request.id, taken.group, demand)
                step += 1
                if replay.count >= settings.warmup:
                    losses.append(learn())
                if step % settings.target_sync == 0:
                    target.load_state_dict(online.state_dict())
                if step % 50 == 0:
                    bar.update(step, f"epoch {epoch + 1}/{settings.epochs} eps {epsilon:.2f}")
            for x, r in pending:
                replay.push(x, r, None, pending_size)
            costs.append(cluster.cost())
        record = {
            "epoch": epoch + 1,
            "epsilon": round(epsilon, 4),
            "train_cost": round(float(np.mean(costs)), 4),
            "loss": round(float(np.mean(losses)), 6) if losses else None,
        }
        if validation:
            policy = DrlPolicy(online, config)
            costs = np.array([place_all(v, policy).cost for v in validation])
            online.train()
            val = float(np.mean(costs))
            record["validation_cost"] = round(val, 4)
            record["validation_cost_vs_bf"] = round(float(np.mean(costs / reference)), 4)
            if val < best_val:
                best_val, best_epoch = val, epoch + 1
                best_state = {k: v.clone() for k, v in online.state_dict().items()}
        history.append(record)
        bar.update(step, f"epoch {epoch + 1}/{settings.epochs} eps {epsilon:.2f}")
        bar.end_line()
        log.info("epoch %s", record)
        if on_epoch:
            on_epoch(epoch, record)
    if best_state is not None:
        online.load_state_dict(best_state)
    online.eval()
    return online, {"settings": asdict(settings), "history": history, "kept_epoch": best_epoch}
