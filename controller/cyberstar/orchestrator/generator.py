"""Instance families like the paper's §8.3: a pool of 100 machines of three flavours, hundreds to
1 000+ tenants with heavy-tailed demands, and NAT/LB mixes (NAT bandwidth-heavy, LB memory-heavy).

Everything is drawn from one `numpy.random.Generator` seeded by `seed`, so (family, seed) fixes
the instance. Each request also gets a lifetime and an hourly load profile for dynamic mode
(`dynamic` section): declared demand is the tenant's peak; the load is a diurnal curve with a
per-tenant phase, amplitude and noise, scaled so its maximum over the lifetime is 1.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np

from cyberstar.errors import UsageError
from cyberstar.orchestrator.model import Dynamic, Instance, Lifetime, Machine, Request


@dataclass(frozen=True)
class Flavour:
    kind: str
    bandwidth: float  # Mbit/s
    compute: float  # vCPU
    memory: float  # GB
    price: float  # per hour, normalised to the general-purpose flavour


# Network-optimised, general-purpose and memory-optimised machines; prices follow the usual
# cloud premium for the specialised flavours.
FLAVOURS = (
    Flavour("network", 25_000, 16, 32, 1.25),
    Flavour("general", 10_000, 16, 64, 1.00),
    Flavour("memory", 10_000, 16, 128, 1.30),
)


@dataclass(frozen=True)
class FamilySettings:
    tenants: int = 600
    machines: int = 100
    nat_fraction: float = 0.5
    threshold: float = 0.5
    gmin: int = 2
    gmax: int = 4
    max_overlap: int = 1
    # Median demands; each tenant draws a log-normal multiplier with this sigma (heavy tail).
    nat_bandwidth: float = 250.0
    lb_memory: float = 2.5
    sigma: float = 1.2
    steps: int = 168  # dynamic mode: one week of hourly steps

    def validate(self) -> None:
        if self.tenants < 1 or self.machines < self.gmax:
            raise UsageError("generator: need tenants >= 1 and machines >= gmax")
        if not 0.0 <= self.nat_fraction <= 1.0:
            raise UsageError(f"generator: nat_fraction must be in [0, 1], got {self.nat_fraction}")


FAMILIES: dict[str, FamilySettings] = {
    # Data sets A, B, C of §8.3: hundreds, hundreds, and over 1 000 tenants on 100 machines.
    "paper-a": FamilySettings(tenants=300, nat_bandwidth=500.0, lb_memory=5.0),
    "paper-b": FamilySettings(tenants=600),
    "paper-c": FamilySettings(tenants=1200, nat_bandwidth=130.0, lb_memory=1.3),
    # Figure 13b: NAT share from 10 % to 90 %.
    **{f"nat{p}": FamilySettings(tenants=600, nat_fraction=p / 100) for p in (10, 30, 50, 70, 90)},
    # Small enough for the exact ILP.
    "small": FamilySettings(
        tenants=20, machines=12, gmax=3, nat_bandwidth=1500.0, lb_memory=15.0, steps=48
    ),
}


def family_settings(name: str, **overrides) -> FamilySettings:
    if name not in FAMILIES:
        raise UsageError(f"--family: unknown family {name!r}; choose from {', '.join(FAMILIES)}")
    settings = replace(FAMILIES[name], **{k: v for k, v in overrides.items() if v is not None})
    settings.validate()
    return settings


def machine_pool(rng: np.random.Generator, count: int) -> list[Machine]:
    kinds = [FLAVOURS[i % len(FLAVOURS)] for i in range(count)]
    order = rng.permutation(count)
    return [
        Machine(f"m{i}", f.bandwidth, f.compute, f.memory, f.price, f.kind)
        for i, f in enumerate(kinds[j] for j in order)
    ]


def draw_request(rng: np.random.Generator, s: FamilySettings, index: int) -> Request:
    """NAT: bandwidth-heavy (per-flow state is small); LB: memory-heavy (connection tables and
    backend pools), moderate bandwidth. Compute grows with both."""
    size = float(rng.lognormal(0.0, s.sigma))
    if rng.random() < s.nat_fraction:
        nf = "nat"
        bandwidth = s.nat_bandwidth * size
        memory = 0.1 + 0.4 * bandwidth / 1000 * rng.uniform(0.5, 1.5)
        compute = 0.05 + 0.3 * bandwidth / 1000 * rng.uniform(0.5, 1.5)
    else:
        nf = "lb"
        memory = s.lb_memory * size
        bandwidth = 0.15 * s.nat_bandwidth * size * rng.uniform(0.5, 1.5)
        compute = 0.05 + 0.04 * memory * rng.uniform(0.5, 1.5)
    return Request(
        f"r{index}", f"t{index}", nf, round(bandwidth, 3), round(compute, 4), round(memory, 4)
    )


def cap_demands(requests: list[Request], machines: list[Machine], s: FamilySettings):
    """Clip a request to what gmax of the smallest machines can carry, so every request is
    placeable on an empty pool; returns the clipped list and how many were clipped."""
    limit = 0.9 * s.gmax * s.threshold * np.min([m.capacity for m in machines], axis=0)
    out, clipped = [], 0
    for r in requests:
        d = np.minimum(np.array(r.demand), limit)
        if np.any(d < np.array(r.demand)):
            clipped += 1
            r = replace(r, bandwidth=float(d[0]), compute=float(d[1]), memory=float(d[2]))
        out.append(r)
    return out, clipped


def diurnal_load(rng: np.random.Generator, nf: str, start: int, length: int) -> np.ndarray:
    """Hourly load in (0, 1]: 1 + a*cos(2*pi*(hour - peak)/24) with AR(1) noise, max-normalised.
    NAT (outbound browsing, batch jobs) peaks mid-day, LB (consumer services) in the evening."""
    hours = np.arange(start, start + length)
    peak = rng.normal(14.0 if nf == "nat" else 20.0, 2.5)
    amplitude = rng.uniform(0.2, 0.7)
    curve = 1.0 + amplitude * np.cos(2 * np.pi * (hours - peak) / 24.0)
    noise = np.zeros(length)
    for k in range(1, length):
        noise[k] = 0.6 * noise[k - 1] + rng.normal(0.0, 0.05)
    trend = 1.0 + rng.normal(0.0, 0.1) * (hours - start) / 168.0
    load = np.clip(curve * trend + noise, 0.05, None)
    return np.round(load / load.max(), 3)


def lifetimes(rng: np.random.Generator, requests: list[Request], steps: int) -> Dynamic:
    """60 % of tenants are present at the start, the rest arrive uniformly over the horizon;
    lifetimes are log-normal (median two days), many outlast the horizon."""
    out: dict[str, Lifetime] = {}
    for r in requests:
        arrive = 0 if rng.random() < 0.6 else int(rng.integers(1, steps))
        life = max(1, int(rng.lognormal(np.log(48.0), 1.0)))
        depart = min(steps, arrive + life)
        load = diurnal_load(rng, r.nf, arrive, depart - arrive)
        out[r.id] = Lifetime(arrive, depart, tuple(float(v) for v in load))
    return Dynamic(step_seconds=3600.0, steps=steps, lifetimes=out)


def generate(family: str, seed: int, **overrides) -> Instance:
    """Instance of a named family; `overrides` replace FamilySettings fields (None = keep)."""
    settings = family_settings(family, **overrides)
    return generate_settings(settings, seed, family)


def generate_settings(s: FamilySettings, seed: int, family: str = "custom") -> Instance:
    rng = np.random.default_rng([zlib.crc32(family.encode()), seed])
    machines = machine_pool(rng, s.machines)
    requests = [draw_request(rng, s, i) for i in range(s.tenants)]
    requests, clipped = cap_demands(requests, machines, s)
    dynamic = lifetimes(rng, requests, s.steps)
    meta = {"family": family, "seed": seed, "settings": asdict(s), "clipped": clipped}
    return Instance(s.threshold, s.gmin, s.gmax, s.max_overlap, machines, requests, dynamic, meta)
