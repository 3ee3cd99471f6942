"""Training the placement agent's network by evolution strategies on the placement cost itself.

The Double-DQN training of `training.py` fits W to rollout values; on its own it taught the
network nothing measurable (validation within 1 % of the untrained agent): the effect of one
placement is small next to the noise of a rollout. Here the same network (drl.py: q = r + W,
the filtering search) is trained on what the objective is: the cost of whole placements.
Each generation draws fresh instances, places every one of them with `pairs` antithetic
perturbations of the weights (theta +- sigma * eps), scores each perturbation by its mean cost
relative to the untrained agent's on the same instances, turns the scores into centred ranks
and steps theta with Adam along the ranks' estimate of the gradient (Salimans et al., 2017,
"Evolution Strategies as a Scalable Alternative to Reinforcement Learning"). No value is
learned, so there is no credit to assign across dozens of requests; the price is many
placements per step, which one network of a few hundred weights on two cores can pay.

The network kept is the one with the lowest mean validation cost relative to best fit, measured
every `validate_every` generations; the zero network (the untrained agent) competes too. Given
opening penalties (AgentConfig.opening_penalty), every validated network runs under each of them
and the pair (network, penalty) with the lowest cost is kept: the penalty is part of the policy,
and the best penalty for one generation's network is not the best for another's (choosing the
generation first and its penalty after missed better pairs: docs/orchestration.md).
On one machine a run is bit-reproducible for its seed, whatever the number of worker
processes: two full runs of the packaged recipe gave identical weights. (They did not while a
placement's cost summed prices in set order, which follows each process's hash seed:
`model.placement_cost`.)
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from cyberstar.orchestrator.drl import AgentConfig, DrlPolicy, QNetwork
from cyberstar.orchestrator.heuristics import BestFit
from cyberstar.orchestrator.model import Instance
from cyberstar.orchestrator.search import place_all
from cyberstar.orchestrator.training import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvolveSettings:
    generations: int = 60
    seed: int = 0
    pairs: int = 12  # antithetic perturbations per generation (2 * pairs placements per instance)
    instances: int = 8  # fresh instances per generation
    sigma: float = 0.05  # perturbation scale, in weight units
    lr: float = 0.02  # Adam step on theta
    validate_every: int = 5  # generations
    workers: int = 2  # processes placing in parallel (1: in this process)


def weights(net) -> np.ndarray:
    import torch

    return torch.nn.utils.parameters_to_vector(net.parameters()).detach().double().numpy()


def network_of(theta: np.ndarray | None, config: AgentConfig):
    """The QNetwork holding `theta` (None: no network, the untrained agent)."""
    if theta is None:
        return None
    import torch

    net = QNetwork(config.hidden)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(theta).float(), net.parameters())
    return net


def placement_costs(job: tuple[np.ndarray | None, AgentConfig, list[Instance]]) -> list[float]:
    """Cost of placing each instance with the agent of weights theta (a worker's job)."""
    theta, config, instances = job
    policy = DrlPolicy(network_of(theta, config), config)
    return [place_all(inst, policy).cost for inst in instances]


def centred_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5], lowest score -0.5: the update ignores how far apart scores
    are, so one instance's outlier cost does not steer a generation. Equal scores share their
    mean rank: two perturbations that place alike (common: a small step often changes no
    decision) push theta nowhere, instead of along whichever came first."""
    _, tie, count = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(count) - count
    ranks = (first + (count - 1) / 2)[tie]
    return ranks / (len(scores) - 1) - 0.5


class _Adam:
    def __init__(self, size: int, lr: float, beta1: float = 0.9, beta2: float = 0.999):
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def step(self, theta: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * gradient
        self.v = self.beta2 * self.v + (1 - self.beta2) * gradient * gradient
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        return theta - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


class _Placer:
    """Runs placement jobs in order, in worker processes or in this one."""

    def __init__(self, workers: int):
        self.pool = None
        if workers > 1:
            # spawn, not fork: the parent has run torch, whose thread pools do not survive fork.
            self.pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker)

    def map(self, jobs: list) -> list[list[float]]:
        if self.pool is None:
            return [placement_costs(job) for job in jobs]
        return self.pool.map(placement_costs, jobs)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def evolve(
    source: Callable[[int], Instance],
    settings: EvolveSettings,
    config: AgentConfig | None = None,
    validation: list[Instance] | None = None,
    progress: bool = True,
    on_validation: Callable[[dict], None] | None = None,
    penalties: tuple[float | None, ...] = (),
):
    """Returns (network, info). Generation k places `source(k * settings.instances + j)`,
    j < settings.instances. With validation instances, the network kept is the best on them
    relative to best fit (the untrained agent competes: if no network beats it, the zero
    network is returned); otherwise the last one. With `penalties`, each validated network is
    run under each opening penalty and the best pair is kept: info["kept_opening_penalty"],
    and the kept network's cost under every penalty in info["penalty_validation"]."""
    import torch

    config = config or AgentConfig()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(settings.seed)
    theta = weights(QNetwork(config.hidden))
    adam = _Adam(len(theta), settings.lr)
    validation = validation or []
    reference = np.array([place_all(v, BestFit()).cost for v in validation])
    history: list[dict] = []
    bar = Progress(settings.generations, progress)
    placer = _Placer(settings.workers)
    configs = [replace(config, opening_penalty=p) for p in penalties] or [config]
    try:
        tried = _validate(placer, None, configs, validation, reference)
        untrained = min(tried)
        # The initial network's last layer is zero (W = 0): it is the untrained agent.
        best_theta, best_val, best_generation = theta.copy(), untrained, 0
        best_tried = tried
        for generation in range(settings.generations):
            first = generation * settings.instances
            batch = [source(first + j) for j in range(settings.instances)]
            eps = rng.standard_normal((settings.pairs, len(theta)))
            members = [theta + sign * settings.sigma * e for e in eps for sign in (1.0, -1.0)]
            costs = np.array(placer.map([(None, config, batch), *_jobs(members, config, batch)]))
            relative = costs[1:] / costs[0]  # each member's cost per instance / untrained's
            scores = relative.mean(axis=1)
            util = centred_ranks(scores)
            gradient = ((util[0::2] - util[1::2]) @ eps) / (settings.pairs * settings.sigma)
            theta = adam.step(theta, gradient)
            record = {
                "generation": generation + 1,
                "population_cost_vs_untrained": round(float(scores.mean()), 4),
            }
            last = generation + 1 == settings.generations
            if validation and ((generation + 1) % settings.validate_every == 0 or last):
                tried = _validate(placer, theta, configs, validation, reference)
                val = min(tried)
                record["validation_cost_vs_bf"] = round(val, 4)
                if penalties:
                    record["opening_penalty"] = penalties[tried.index(val)]
                if val < best_val:
                    best_theta, best_val, best_generation = theta.copy(), val, generation + 1
                    best_tried = tried
                bar.end_line()
                log.info("validation %s", record)
                if on_validation:
                    on_validation(record)
            history.append(record)
            bar.update(generation + 1, f"generation {generation + 1}/{settings.generations}")
    finally:
        placer.close()
    bar.end_line()
    kept = best_theta if validation else theta
    info = {
        "method": "evolution strategies",
        "settings": asdict(settings),
        "history": history,
        "kept_generation": best_generation if validation else settings.generations,
        "untrained_validation_cost_vs_bf": None if not validation else round(untrained, 4),
    }
    if penalties and validation:
        info["kept_opening_penalty"] = penalties[best_tried.index(min(best_tried))]
        info["penalty_validation"] = [
            {"opening_penalty": p, "validation_cost_vs_bf": round(c, 4)}
            for p, c in zip(penalties, best_tried, strict=True)
        ]
    return network_of(kept, config).eval(), info


def _jobs(members: list[np.ndarray], config: AgentConfig, batch: list[Instance]) -> list:
    return [(m.astype(np.float32), config, batch) for m in members]


def _validate(
    placer: _Placer, theta, configs: list[AgentConfig], validation, reference
) -> list[float]:
    """The mean validation cost relative to best fit of the network under each config."""
    if not validation:
        return [math.inf] * len(configs)
    weights_ = None if theta is None else theta.astype(np.float32)
    costs = placer.map([(weights_, c, [v]) for c in configs for v in validation])
    per = np.array([c[0] for c in costs]).reshape(len(configs), len(validation))
    return [float(np.mean(row / reference)) for row in per]
