"""A broad distribution of placement instances: every parameter drawn at random per instance.

The named families of `generator.py` share one pool (100 machines of three fixed flavours), one
threshold, Gmin/Gmax 2..4 and O = 1. An agent trained on them may learn those constants rather
than placement. Here each seed draws its own world: 2-5 machine flavours with random capacities
and prices (per-resource unit prices with noise, so no flavour is always the cheapest), a pool
of 16-150 machines in random proportions, 2-4 NF profiles (bandwidth-, memory-, compute-heavy or
balanced) in random shares, heavy-tailed demands whose total is a random fraction of the pool,
the threshold U, Gmin/Gmax, the overlap limit O and the number of requests.

`DISTRIBUTIONS` names the ranges: `mix` is what the packaged agent trains on (training seeds are
at and above `TRAIN_SEED_BASE`, test seeds below it, so a test draw is a parameter draw the agent
never saw); `mix-small` is the same at test-suite scale; `mix-wide` widens every range beyond
training (more flavours and machines, higher thresholds, larger groups) to test generalisation
outside the training support.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from cyberstar.errors import UsageError
from cyberstar.orchestrator.generator import lifetimes
from cyberstar.orchestrator.heuristics import FirstFit
from cyberstar.orchestrator.model import Instance, Machine, Request
from cyberstar.orchestrator.search import place_all

# Seeds at and above this are reserved for training and validation.
TRAIN_SEED_BASE = 100_000

# Demand direction of each NF profile, as fractions of a machine's (bandwidth, compute, memory);
# each request perturbs its profile's direction.
PROFILES = {
    "nat": (1.0, 0.15, 0.05),
    "lb": (0.15, 0.15, 1.0),
    "vpn": (0.3, 1.0, 0.1),
    "fw": (0.6, 0.5, 0.4),
}


@dataclass(frozen=True)
class Ranges:
    flavours: tuple[int, int] = (2, 4)
    machines: tuple[int, int] = (16, 120)
    tenants: tuple[int, int] = (40, 1000)
    threshold: tuple[float, float] = (0.4, 0.85)
    gmin: tuple[int, int] = (1, 3)
    gspan: tuple[int, int] = (0, 2)  # gmax - gmin
    overlap: tuple[float, float, float] = (0.1, 0.6, 0.3)  # probabilities of O = 0, 1, 2
    profiles: tuple[int, int] = (2, 4)
    load: tuple[float, float] = (0.1, 0.4)  # total demand / pool capacity, busiest resource
    sigma: tuple[float, float] = (0.3, 1.3)  # log-normal spread of request sizes
    steps: int = 48


DISTRIBUTIONS: dict[str, Ranges] = {
    "mix": Ranges(),
    "mix-small": Ranges(machines=(10, 24), tenants=(15, 80)),
    "mix-wide": Ranges(
        flavours=(4, 6),
        machines=(100, 160),
        tenants=(400, 1500),
        threshold=(0.8, 0.95),
        gmin=(2, 3),
        gspan=(1, 2),
        overlap=(0.0, 0.5, 0.5),
        load=(0.25, 0.45),
        sigma=(1.0, 1.6),
    ),
}


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _flavours(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, float, str]]:
    """(capacity, price, kind) per flavour. Prices are per-resource unit prices (drawn per
    instance) times the capacity, with 15 % noise; the median flavour costs 1."""
    caps = np.column_stack(
        [
            np.exp(rng.uniform(np.log(2_000), np.log(40_000), count)),  # Mbit/s
            rng.choice([4.0, 8.0, 16.0, 32.0, 64.0], count),  # vCPU
            np.exp(rng.uniform(np.log(8), np.log(512), count)),  # GB
        ]
    ).round(0)
    unit = rng.dirichlet([1.0, 1.0, 1.0]) / caps.mean(axis=0)
    prices = (caps @ unit) * rng.lognormal(0.0, 0.15, count)
    prices = (prices / np.median(prices)).round(3)
    return [(caps[t], float(prices[t]), f"f{t}") for t in range(count)]


def _pool(rng: np.random.Generator, r: Ranges) -> list[Machine]:
    flavours = _flavours(rng, _integer(rng, r.flavours))
    total = _integer(rng, r.machines)
    share = rng.dirichlet([2.0] * len(flavours))
    counts = np.maximum(1, np.floor(share * total)).astype(int)
    kinds = [t for t, c in enumerate(counts) for _ in range(c)]
    order = rng.permutation(len(kinds))
    out = []
    for i, j in enumerate(order):
        cap, price, kind = flavours[kinds[j]]
        out.append(Machine(f"m{i}", float(cap[0]), float(cap[1]), float(cap[2]), price, kind))
    return out


def _fit_to_pool(demand: np.ndarray, usable: np.ndarray, gmax: int) -> np.ndarray:
    """Scale a request down (keeping its shape) until gmax machines of the pool carry it, split
    evenly, with 10 % to spare: the gmax-th roomiest machine for this request sets the scale."""
    room = np.min(0.9 * gmax * usable / np.maximum(demand, 1e-12), axis=1)
    return demand * min(1.0, float(np.sort(room)[-gmax]))


def _sharding_room(machines: int, gmin: int, overlap: int) -> int:
    """Half the most requests of gmin machines whose groups pairwise share at most O machines on
    half the pool (the (O+1)-subset counting argument): sharding alone never fills the pool."""
    k = overlap + 1
    if gmin < k:
        return 10**9
    return math.comb(machines // 2, k) // math.comb(gmin, k) // 2


def _requests(
    names: list[str], kinds: np.ndarray, raw: np.ndarray, usable: np.ndarray, gmax: int
) -> list[Request]:
    out = []
    for i, demand in enumerate(raw):
        d = _fit_to_pool(demand, usable, gmax)
        out.append(
            Request(
                f"r{i}",
                f"t{i}",
                str(names[kinds[i]]),
                round(float(d[0]), 3),
                round(float(d[1]), 4),
                round(float(d[2]), 4),
            )
        )
    return out


def draw(name: str, seed: int) -> Instance:
    if name not in DISTRIBUTIONS:
        raise UsageError(
            f"--family: unknown distribution {name!r}; choose from {', '.join(DISTRIBUTIONS)}"
        )
    r = DISTRIBUTIONS[name]
    rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
    machines = _pool(rng, r)
    threshold = round(_uniform(rng, r.threshold), 3)
    gmin = _integer(rng, r.gmin)
    gmax = min(gmin + _integer(rng, r.gspan), len(machines))
    overlap = int(rng.choice(len(r.overlap), p=r.overlap))
    tenants = min(_integer(rng, r.tenants), _sharding_room(len(machines), gmin, overlap))
    names = [str(n) for n in rng.choice(list(PROFILES), _integer(rng, r.profiles), replace=False)]
    mix = rng.dirichlet([1.5] * len(names))
    sigma = _uniform(rng, r.sigma)
    load = _uniform(rng, r.load)

    caps = np.array([m.capacity for m in machines])
    usable = threshold * caps
    mean_cap = threshold * caps.mean(axis=0)
    kinds = rng.choice(len(names), size=tenants, p=mix)
    directions = np.array([PROFILES[names[k]] for k in kinds]) * rng.lognormal(
        0.0, 0.3, (tenants, 3)
    )
    sizes = rng.lognormal(0.0, sigma, tenants)
    raw = directions * sizes[:, None] * mean_cap
    # Scale so the busiest resource asks for `load` of the pool's usable capacity.
    raw *= load / np.max(raw.sum(axis=0) / (threshold * caps.sum(axis=0)))
    requests = _requests(names, kinds, raw, usable, gmax)
    # Heavy tails and sharding can still exhaust a small pool: cut the requests until first fit
    # places them all, so that every algorithm's cost is that of the same set of requests.
    probe = Instance(threshold, gmin, gmax, overlap, machines, requests)
    while len(probe.requests) > 1 and place_all(probe, FirstFit()).rejected:
        probe.requests = probe.requests[: len(probe.requests) * 3 // 4]
    requests = probe.requests
    meta = {
        "family": name,
        "seed": seed,
        "draw": {
            "flavours": len({m.kind for m in machines}),
            "machines": len(machines),
            "tenants": len(requests),
            "threshold": threshold,
            "gmin": gmin,
            "gmax": gmax,
            "max_overlap": overlap,
            "profiles": dict(zip(names, [round(float(x), 3) for x in mix], strict=True)),
            "sigma": round(sigma, 3),
            "load": round(load, 3),
        },
        "ranges": asdict(r),
    }
    dynamic = lifetimes(rng, requests, r.steps)
    return Instance(threshold, gmin, gmax, overlap, machines, requests, dynamic, meta)
