"""Placement benchmark (paper §8.3, Figure 13): prints JSON for every instance family.

Static mode (requests placed once, in file order; cost = sum of prices of used machines):
FF, weighted BF, DRL (the packaged model unless --model), and the ILP optimum on the `small`
family or a proven lower bound (cover LP) on the large ones; rejected counts and decision time
per request. `bf_best_of_10` is BF with the best of 10 random weight vectors chosen in hindsight
on the instance itself (the paper's Figure 13b tuning), an oracle reported for context only.
Dynamic mode (one week of arrivals, departures and diurnal load; cost = price x machine-hours):
FF, BF and DRL with the reactive reservation (trailing 6-hour peak), DRL with the last measured
load, and DRL with Holt-Winters prediction. Test seeds default to 0..2; the packaged model was
trained on seeds 1000+ and validated on 2000 (see controller/cyberstar/orchestrator/models/).

  .venv/bin/python bench/placement.py [--families paper-a,nat50] [--seeds 0,1,2] [--plot f.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cyberstar.orchestrator.checker import check_placement
from cyberstar.orchestrator.cli import generate_family
from cyberstar.orchestrator.drl import load_model
from cyberstar.orchestrator.generator import FAMILIES
from cyberstar.orchestrator.heuristics import BestFit, FirstFit
from cyberstar.orchestrator.ilp import cover_bound, solve_ilp
from cyberstar.orchestrator.predictor import evaluate
from cyberstar.orchestrator.search import place_all
from cyberstar.orchestrator.simulator import SimSettings, simulate

DEFAULT_FAMILIES = (
    "paper-a",
    "paper-b",
    "paper-c",
    "nat10",
    "nat30",
    "nat50",
    "nat70",
    "nat90",
    "azure",
    "small",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def static_run(instance, policy) -> dict:
    placement = place_all(instance, policy)
    report = check_placement(instance, placement)
    if not report.ok:
        raise SystemExit(f"{policy.name}: placement fails the checker: {report.violations[:3]}")
    return {
        "cost": round(placement.cost, 4),
        "rejected": len(placement.rejected),
        "ms_per_decision": placement.stats.get("decision_ms_mean"),
        "ms_p99": placement.stats.get("decision_ms_p99"),
    }


def bf_best_of_10(instance) -> dict:
    rng = np.random.default_rng(0)
    best = None
    for _ in range(10):
        weights = tuple(rng.dirichlet([1.0, 1.0, 1.0]).round(3))
        run = static_run(instance, BestFit(weights))
        if best is None or run["cost"] < best["cost"]:
            best = {**run, "weights": list(weights)}
    return best


def ilp_run(instance, family: str, time_limit: float) -> dict:
    if family == "small":
        result = solve_ilp(instance, time_limit=time_limit)
        if result.placement is not None:
            assert check_placement(instance, result.placement).ok
        out = result.to_json()
        out["kind"] = "milp"
        return out
    bound = cover_bound(instance)
    return {"kind": "cover-lp", "status": "lower_bound_only", "bound": round(bound, 4)}


def dynamic_runs(instance, drl) -> dict:
    runs = {
        "ff": (FirstFit(), "peak"),
        "bf": (BestFit(), "peak"),
        "drl": (drl, "peak"),
        "drl_last_value": (drl, "last"),
        "drl+prediction": (drl, "holt-winters"),
    }
    out = {}
    for name, (policy, predictor) in runs.items():
        r = simulate(instance, policy, SimSettings(predictor=predictor))
        out[name] = {
            "cost": round(r.cost, 2),
            "machine_hours": round(r.machine_hours, 1),
            "reallocations": r.reallocations,
            "overload_machine_steps": r.overload_machine_steps,
            "rejected": r.rejected,
            "predictor": predictor,
            "ms_per_decision": r.decisions.get("decision_ms_mean"),
        }
    return out


def gain(better: float, worse: float) -> float:
    return round(1.0 - better / worse, 4) if worse else 0.0


def run_family(family: str, seeds: list[int], drl, args) -> dict:
    per_seed = []
    for seed in seeds:
        start = time.monotonic()
        instance = generate_family(family, seed)
        static = {
            "ff": static_run(instance, FirstFit()),
            "bf": static_run(instance, BestFit()),
            "drl": static_run(instance, drl),
            "bf_best_of_10": bf_best_of_10(instance),
            "ilp": ilp_run(instance, family, args.ilp_time_limit),
        }
        best_heuristic = min(static["ff"]["cost"], static["bf"]["cost"])
        row = {
            "seed": seed,
            "requests": len(instance.requests),
            "static": static,
            "drl_gain_vs_best_of_ff_bf": gain(static["drl"]["cost"], best_heuristic),
        }
        ilp = static["ilp"]
        reference = ilp.get("objective") if ilp.get("status") == "optimal" else ilp.get("bound")
        if reference:
            row["drl_above_ilp"] = round(static["drl"]["cost"] / reference - 1.0, 4)
            row["ilp_reference"] = "optimum" if ilp.get("status") == "optimal" else "lower bound"
        if not args.no_dynamic and instance.dynamic is not None:
            row["dynamic"] = dynamic_runs(instance, drl)
            d = row["dynamic"]
            row["prediction_gain_machine_cost"] = gain(
                d["drl+prediction"]["cost"], d["drl"]["cost"]
            )
        per_seed.append(row)
        log(
            f"{family} seed {seed}: ff {static['ff']['cost']} bf {static['bf']['cost']} drl "
            f"{static['drl']['cost']} gain {row['drl_gain_vs_best_of_ff_bf']:+.3f} "
            f"({time.monotonic() - start:.0f}s)"
        )
    accuracy = evaluate(
        lf.load for lf in generate_family(family, seeds[0]).dynamic.lifetimes.values()
    )

    def mean(path: list[str]) -> float | None:
        values = []
        for row in per_seed:
            v = row
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if v is not None:
                values.append(v)
        return round(float(np.mean(values)), 4) if values else None

    summary = {
        "ff": mean(["static", "ff", "cost"]),
        "bf": mean(["static", "bf", "cost"]),
        "drl": mean(["static", "drl", "cost"]),
        "bf_best_of_10": mean(["static", "bf_best_of_10", "cost"]),
        "ilp_optimum_or_bound": mean(["static", "ilp", "objective"])
        if family == "small"
        else mean(["static", "ilp", "bound"]),
        "rejected_ff_bf_drl": [mean(["static", a, "rejected"]) for a in ("ff", "bf", "drl")],
        "drl_ms_per_decision": mean(["static", "drl", "ms_per_decision"]),
        "drl_gain_vs_best_of_ff_bf": mean(["drl_gain_vs_best_of_ff_bf"]),
        "drl_above_ilp": mean(["drl_above_ilp"]),
    }
    if not args.no_dynamic:
        for name in ("ff", "bf", "drl", "drl_last_value", "drl+prediction"):
            summary[f"dynamic_{name}"] = mean(["dynamic", name, "cost"])
        summary["dynamic_reallocations_drl_vs_pred"] = [
            mean(["dynamic", "drl", "reallocations"]),
            mean(["dynamic", "drl+prediction", "reallocations"]),
        ]
        summary["dynamic_overloads_drl_vs_pred"] = [
            mean(["dynamic", "drl", "overload_machine_steps"]),
            mean(["dynamic", "drl+prediction", "overload_machine_steps"]),
        ]
        summary["prediction_gain_machine_cost"] = mean(["prediction_gain_machine_cost"])
    return {
        "summary": summary,
        "predictor_accuracy": [a.to_json() for a in accuracy],
        "seeds": per_seed,
    }


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            "--plot needs matplotlib, which is not installed; add it to the "
            "environment (pip install matplotlib) or drop --plot"
        ) from exc
    return plt


def plot(results: dict, path: str) -> None:
    plt = pyplot()
    families = [f for f in results if not f.startswith("nat")]
    mixes = sorted(f for f in results if f.startswith("nat"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.2
    for k, (name, key) in enumerate(
        [("FF", "ff"), ("BF", "bf"), ("DRL", "drl"), ("ILP / bound", "ilp_optimum_or_bound")]
    ):
        values = [results[f]["summary"][key] or 0 for f in families]
        base = [results[f]["summary"]["ff"] for f in families]
        a.bar(
            np.arange(len(families)) + k * width,
            np.array(values) / np.array(base),
            width,
            label=name,
        )
    a.set_xticks(np.arange(len(families)) + 1.5 * width, families)
    a.set_ylabel("cost / FF cost")
    a.set_title("(a) static placement cost")
    a.set_ylim(0, 1.3)
    a.legend(ncol=4, loc="upper center", fontsize="small")
    if mixes:
        x = [int(f[3:]) for f in mixes]
        for name, key in [
            ("BF", "bf"),
            ("BF best of 10", "bf_best_of_10"),
            ("DRL", "drl"),
            ("FF", "ff"),
        ]:
            b.plot(x, [results[f]["summary"][key] for f in mixes], marker="o", label=name)
        b.set_xlabel("NAT requests (%)")
        b.set_ylabel("cost")
        b.set_title("(b) NAT/LB mixes")
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families",
        default=",".join(DEFAULT_FAMILIES),
        help=f"comma-separated, from {', '.join([*FAMILIES, 'azure'])}",
    )
    parser.add_argument("--seeds", default="0,1,2", help="test seeds (default 0,1,2)")
    parser.add_argument("--model", help="DRL model (default: the packaged one)")
    parser.add_argument("--ilp-time-limit", type=float, default=120.0)
    parser.add_argument("--no-dynamic", action="store_true", help="static mode only")
    parser.add_argument("--plot", help="write a Figure-13-like PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES and f != "azure"]
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.plot:
        pyplot()  # fail before the long run, not after it
    drl, info = load_model(args.model)
    started = time.monotonic()
    results = {f: run_family(f, seeds, drl, args) for f in families}
    overall = [r["summary"]["drl_gain_vs_best_of_ff_bf"] for r in results.values()]
    output = {
        "command": " ".join(["bench/placement.py", *(argv or sys.argv[1:])]),
        "model": str(args.model or "packaged"),
        "model_trained_on": sorted({f"{m['family']}:{m['seed']}" for m in info["instances"]}),
        "seeds": seeds,
        "seconds": round(time.monotonic() - started, 1),
        "mean_drl_gain_vs_best_of_ff_bf": round(float(np.mean(overall)), 4),
        "families": results,
    }
    json.dump(output, sys.stdout, indent=1)
    sys.stdout.write("\n")
    if args.plot:
        plot(results, args.plot)
        log(f"plot written to {Path(args.plot).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
