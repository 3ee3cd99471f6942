"""Real demand: tenant arrival batches from the public Azure VM trace (AzurePublicDataset V1, as
processed by huaweicloud/trace_generation_rnn; see the data set's README).

The data is read at run time from `AZURE_TRACE_DIR` (or the `--trace` option); nothing is copied
into the repository. Mapping to NF requests (documented in docs/orchestration.md), seeded:
- one tenant batch = one NF request; its VMs' flavours give total vCPU and GB;
- the trace has no NF type or bandwidth: the type is NAT with probability `nat_fraction`, else
  LB; NAT bandwidth = 80 Mbit/s per vCPU, LB memory = 0.12 GB per VM GB, each times a
  log-normal factor (sigma 0.5); the other resources follow the generator's NAT/LB rules
  (LB bandwidth = 15 Mbit/s per GB of LB memory);
- a request lives as long as its longest-lived VM; a lifetime bin becomes a uniform draw inside
  the bin; a censored VM (still running at the censoring time) outlives the window;
- the load profile is the generator's diurnal curve on the trace's hour of day.
An instance is the requests of a `steps`-hour window starting at a random 5-minute line, thinned
uniformly at random to `tenants` requests, in arrival order.

Family `azure-heavy` is the same mapping with every request's demand ten times as large (800 Mbit/s
per vCPU, 1.2 GB per VM GB, before the cap): at the base scale the shuffle-sharding overlap limit,
not the load, sets how many machines a step needs, so no reservation can change the cost; at ten
times the load sets it.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cyberstar.errors import UsageError
from cyberstar.orchestrator.generator import (
    FamilySettings,
    cap_demands,
    diurnal_load,
    machine_pool,
)
from cyberstar.orchestrator.model import Dynamic, Instance, Lifetime, Request

DEFAULT_TRACE_DIR = Path("/work/shared/data/azure-v1-tenant-arrivals")
ARRIVALS = "v1.dev.txt"
CENSOR_SECONDS = 2_100_000  # lifetimes longer than this are censored in the trace
LIFETIMES = f"v1.dev.c{CENSOR_SECONDS}.txt"
BIN_SECONDS = 300


@dataclass(frozen=True)
class Batch:
    arrival: int  # seconds in the trace's clock
    vcpu: float
    memory_gb: float
    lifetime: float | None  # seconds; None if censored (still running at the censoring time)


def trace_dir(path: str | Path | None = None) -> Path:
    chosen = Path(path or os.environ.get("AZURE_TRACE_DIR") or DEFAULT_TRACE_DIR)
    missing = [
        f
        for f in (ARRIVALS, LIFETIMES, "flav_map.txt", "v1.interval_map.txt")
        if not (chosen / f).is_file()
    ]
    if missing:
        raise UsageError(
            f"--trace: the Azure trace is not at {chosen} (missing {', '.join(missing)}); "
            "set AZURE_TRACE_DIR or pass --trace DIR pointing at azure-v1-tenant-arrivals"
        )
    return chosen


def _batches(line: str) -> list[list[str]]:
    out = []
    for part in line.split("|"):
        tokens = [t for t in part.split(",") if t.strip()]
        if tokens:
            out.append([t.strip() for t in tokens])
    return out


@lru_cache(maxsize=2)
def load_batches(directory: Path) -> tuple[Batch, ...]:
    """All batches of the trace, in arrival order, with lifetimes drawn from their bins by a
    fixed seed (so every family seed sees the same trace)."""
    flavours = {}
    for line in (directory / "flav_map.txt").read_text().split("\n"):
        if line.strip():
            spec, letter = line.split()
            vcpu, gb = spec.split(",")
            flavours[letter] = (float(vcpu), float(gb))
    bins: dict[int, list[int]] = {}
    for line in (directory / "v1.interval_map.txt").read_text().split("\n"):
        if line.strip():
            seconds, b = line.split()
            bins.setdefault(int(b), []).append(int(seconds))
    ranges = {b: (min(v), max(v) + BIN_SECONDS) for b, v in bins.items()}
    rng = np.random.default_rng(0)
    arrivals = (directory / ARRIVALS).read_text().split("\n")
    lives = (directory / LIFETIMES).read_text().split("\n")
    out: list[Batch] = []
    for n, (a, life) in enumerate(zip(arrivals, lives, strict=False)):
        if not a.strip():
            continue
        t_a, rest_a = a.split(" ", 1)
        t_l, rest_l = life.split(" ", 1)
        if t_a != t_l:
            raise UsageError(f"--trace: line {n + 1} of {ARRIVALS} and {LIFETIMES} disagree")
        for vms, lts in zip(_batches(rest_a), _batches(rest_l), strict=True):
            vcpu = sum(flavours[f][0] for f in vms)
            gb = sum(flavours[f][1] for f in vms)
            lifetime: float | None = 0.0
            for token in lts:
                if token.startswith("C"):
                    lifetime = None
                    break
                lo, hi = ranges[int(token[1:])]
                lifetime = max(lifetime, float(rng.uniform(lo, hi)))
            out.append(Batch(int(t_a), vcpu, gb, lifetime))
    return tuple(out)


AZURE = FamilySettings(tenants=600, steps=72)
# family → multiplier of every request's demand (drawn as for `azure`, then capped)
AZURE_FAMILIES = {"azure": 1.0, "azure-heavy": 10.0}


def azure_instance(
    seed: int,
    settings: FamilySettings = AZURE,
    path: str | Path | None = None,
    family: str = "azure",
) -> Instance:
    s = settings
    scale = AZURE_FAMILIES[family]
    batches = load_batches(trace_dir(path))
    rng = np.random.default_rng([zlib.crc32(b"azure"), seed])
    first, last = batches[0].arrival, batches[-1].arrival + BIN_SECONDS
    window = s.steps * 3600
    if last - first < window:
        raise UsageError(f"--steps: the trace covers {(last - first) / 3600:.0f} hours only")
    start = first + BIN_SECONDS * int(rng.integers(0, (last - first - window) // BIN_SECONDS + 1))
    inside = [b for b in batches if start <= b.arrival < start + window]
    pick = np.sort(rng.choice(len(inside), size=min(s.tenants, len(inside)), replace=False))
    machines = machine_pool(rng, s.machines)
    requests, lives = [], {}
    for k, j in enumerate(pick):
        b = inside[j]
        rid = f"r{k}"
        noise = float(rng.lognormal(0.0, 0.5))
        if rng.random() < s.nat_fraction:
            nf = "nat"
            bandwidth = 80.0 * scale * b.vcpu * noise
            memory = 0.1 + 0.4 * bandwidth / 1000 * rng.uniform(0.5, 1.5)
            compute = 0.05 + 0.3 * bandwidth / 1000 * rng.uniform(0.5, 1.5)
        else:
            nf = "lb"
            memory = 0.12 * scale * b.memory_gb * noise
            bandwidth = 15.0 * memory * rng.uniform(0.5, 1.5)
            compute = 0.05 + 0.04 * memory * rng.uniform(0.5, 1.5)
        requests.append(
            Request(
                rid,
                f"az{b.arrival}-{j}",
                nf,
                round(bandwidth, 3),
                round(compute, 4),
                round(memory, 4),
            )
        )
        arrive = (b.arrival - start) // 3600
        end = s.steps if b.lifetime is None else (b.arrival - start + b.lifetime) / 3600
        depart = int(min(s.steps, max(arrive + 1, np.ceil(end))))
        hour0 = (b.arrival // 3600) % 24
        load = diurnal_load(rng, nf, hour0, depart - arrive)
        lives[rid] = Lifetime(int(arrive), depart, tuple(float(v) for v in load))
    requests, clipped = cap_demands(requests, machines, s)
    meta = {
        "family": family,
        "seed": seed,
        "settings": asdict(s),
        "demand_scale": scale,
        "clipped": clipped,
        "trace": {"window_start_seconds": start, "batches_in_window": len(inside)},
    }
    dynamic = Dynamic(step_seconds=3600.0, steps=s.steps, lifetimes=lives)
    return Instance(s.threshold, s.gmin, s.gmax, s.max_overlap, machines, requests, dynamic, meta)
