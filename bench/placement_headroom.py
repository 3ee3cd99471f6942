#!/usr/bin/env python3
"""How much the placement agent leaves to a learned term: one step of policy improvement by
exact rollouts (Bertsekas' rollout algorithm), on the quality test's family.

At every decision the rollout policy takes an agent's candidates (the untrained agent's, or with
`--base packaged` the packaged model's) — its best `--candidates` groups among those that newly
use the fewest machines, and its best group that newly uses more — places each on a copy of the
cluster, lets the same agent place every request after it, and keeps the candidate whose whole
placement costs least (ties: the agent's order). That is the choice a perfect estimate of the
agent's own future would make among the same candidates. It is not a placement algorithm to use:
a rollout per candidate per decision, ~0.15 s of CPU a request at 200 requests on 40 machines.

Prints JSON: per instance the costs of BF, the untrained agent, the packaged model and the
rollout policy, and their totals (the quality test's bar: the packaged model at least 3 % below
the untrained agent, `tests/orchestrator/test_orch_quality.py`).

Run: .venv/bin/python bench/placement_headroom.py [--candidates 2] [--base packaged] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import numpy as np

from cyberstar.orchestrator.cluster import Cluster, Lookahead
from cyberstar.orchestrator.drl import DrlPolicy, load_model, q_values, ranked_groups
from cyberstar.orchestrator.generator import generate
from cyberstar.orchestrator.heuristics import BestFit
from cyberstar.orchestrator.model import Instance
from cyberstar.orchestrator.search import place_all, queue_demand


def candidates(cluster: Cluster, demand: np.ndarray, agent: DrlPolicy, k: int) -> list:
    """The agent's best k groups among those newly using the fewest machines, then its best
    group newly using more (if any), in its own order."""
    q, _, _ = q_values(cluster, demand, agent.future if agent.net is not None else None)
    fewest, chosen, wider = None, [], None
    for group, _, _ in ranked_groups(cluster, demand, q, agent.config, None):
        new = int((~cluster.used[list(group)]).sum())
        fewest = new if fewest is None else fewest
        if new == fewest and len(chosen) < k:
            chosen.append(group)
        elif new > fewest:
            wider = group
            break
    return chosen + ([wider] if wider else [])


def finish(
    cluster: Cluster, instance: Instance, waiting: np.ndarray, start: int, agent: DrlPolicy
) -> float:
    """Cost after the agent places requests start.. on `cluster` (inf if one is rejected)."""
    for j in range(start, len(instance.requests)):
        request = instance.requests[j]
        demand = np.array(request.demand, dtype=float)
        cluster.lookahead = Lookahead(waiting[j], len(instance.requests) - j - 1)
        group = agent.choose(cluster, request, demand, None)
        if group is None:
            return float("inf")
        cluster.place(request.id, group, demand)
    return cluster.cost()


def rollout_cost(instance: Instance, agent: DrlPolicy, k: int) -> float:
    waiting = queue_demand(instance)
    cluster = Cluster(instance)
    for i, request in enumerate(instance.requests):
        demand = np.array(request.demand, dtype=float)
        cluster.lookahead = Lookahead(waiting[i], len(instance.requests) - i - 1)
        options = candidates(cluster, demand, agent, k)
        if len(options) > 1:
            costs = []
            for group in options:
                trial = cluster.copy()
                trial.place(request.id, group, demand)
                costs.append(finish(trial, instance, waiting, i + 1, agent))
            group = options[int(np.argmin(costs))]
        else:
            group = options[0] if options else agent.choose(cluster, request, demand, None)
        if group is None:
            return float("inf")
        cluster.place(request.id, group, demand)
    return cluster.cost()


def one_instance(job: tuple[str, int, int, int, int, str]) -> dict:
    family, seed, tenants, machines, k, base = job
    instance = generate(family, seed, tenants=tenants, machines=machines)
    packaged = load_model()[0]
    agent = packaged if base == "packaged" else DrlPolicy(None, packaged.config)
    t0 = time.process_time()
    rollout = rollout_cost(instance, agent, k)
    return {
        "family": family,
        "seed": seed,
        "bf": round(place_all(instance, BestFit()).cost, 2),
        "untrained": round(place_all(instance, DrlPolicy(None, packaged.config)).cost, 2),
        "packaged": round(place_all(instance, packaged).cost, 2),
        "rollout": round(rollout, 2),
        "rollout_cpu_s": round(time.process_time() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="nat10,nat50,nat90")
    ap.add_argument("--seeds", default="700,701,702")
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--machines", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=2, help="groups of the fewest-new class")
    ap.add_argument(
        "--base",
        choices=("untrained", "packaged"),
        default="untrained",
        help="the agent whose candidates and rollouts are used",
    )
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    jobs = [
        (family, int(seed), args.tenants, args.machines, args.candidates, args.base)
        for family in args.families.split(",")
        for seed in args.seeds.split(",")
    ]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(one_instance, jobs)
    totals = {
        key: round(sum(r[key] for r in rows), 2)
        for key in ("bf", "untrained", "packaged", "rollout")
    }
    out = {
        "instances": rows,
        "totals": totals,
        "packaged_vs_untrained": round(totals["packaged"] / totals["untrained"], 4),
        "rollout_vs_untrained": round(totals["rollout"] / totals["untrained"], 4),
        "candidates": args.candidates,
        "base": args.base,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
