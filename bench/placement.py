"""Placement benchmark (paper §8.3, Figure 13) and the ablation that says where the gain comes from.

Static mode (requests placed once, in file order; cost = sum of the prices of used machines), for
every family and test seed:
  ff, bf          the paper's baselines (first fit, weighted best fit with weights 1,1,1)
  bf_tuned        best fit with weights tuned per family on tuning seeds (never the test seeds):
                  the best of a grid over the weight simplex (step 0.2) by mean cost
  drl_untrained_lexicographic
                  the agent with its learned term zeroed under Algorithm 2's ranking (fewest newly
                  used machines first): the shaped immediate reward (the price of newly used
                  machines and the potential F, drl_state.py) and the filtering search
  drl_untrained   the same with the model's own ranking (its opening penalty, if it has one):
                  what the trained agent is without its network
  drl             the trained agent (the packaged model unless --model)
  bound           the best lower bound: the MILP optimum on `small`; elsewhere the larger of the
                  cover bound (whole machines covering the demand) and the column-generation
                  (Lagrangian/Farley) bound (--bound-time)
Dynamic mode (families with a `dynamic` section; cost = price x machine-hours): ff, bf and drl
with the reactive reservation (trailing 6-hour peak), bf and drl with Holt-Winters prediction, at
each reservation headroom of --headrooms; and the dynamic lower bound (bounds.dynamic_bound: per
step, the cover bound of the requests then active at their actual load).
Per family: mean and 95 % confidence interval (Student t over the seeds) of each cost, of the
trained agent's saving against the best of ff, bf and bf_tuned on the same seed, of its gain
over the untrained agent, of its distance to the bound, and of prediction's gain.
Seeds: tests 0..N (never used for training, validation or tuning; training seeds start at
100 000, validation at 50 000, tuning at 10 000).

  .venv/bin/python bench/placement.py [--families paper-a,mix] [--seeds 0,1,2] [--draws 10]
      [--model F] [--bound-time S] [--no-dynamic] [--headrooms 0.1,0.2] [--table out.md]
      [--plot out.png]

JSON on stdout; the ablation table and the dynamic table (markdown) on stderr, and in --table
FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from cyberstar.orchestrator.azure import AZURE_FAMILIES
from cyberstar.orchestrator.bounds import column_generation_bound, dynamic_bound
from cyberstar.orchestrator.checker import check_placement
from cyberstar.orchestrator.cli import generate_family
from cyberstar.orchestrator.distribution import DISTRIBUTIONS
from cyberstar.orchestrator.drl import DrlPolicy, load_model
from cyberstar.orchestrator.generator import FAMILIES
from cyberstar.orchestrator.heuristics import BestFit, FirstFit
from cyberstar.orchestrator.ilp import solve_ilp
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
    "azure-heavy",
    "small",
    "mix",
    "mix-wide",
)
# Families whose requests, all placed at once at their declared demand, exceed the pool: only
# dynamic mode (requests come and go) is meaningful for them.
DYNAMIC_ONLY = ("azure-heavy",)
TUNING_SEED_BASE = 10_000
STATIC = ("ff", "bf", "bf_tuned", "drl_untrained_lexicographic", "drl_untrained", "drl")
# The untrained agents and the trained one, run as they are given.
AGENTS = STATIC[3:]
DYNAMIC = {
    "ff": ("ff", "peak"),
    "bf": ("bf", "peak"),
    "bf+prediction": ("bf", "holt-winters"),
    "drl": ("drl", "peak"),
    "drl+prediction": ("drl", "holt-winters"),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def weight_grid(step: float = 0.2) -> list[tuple[float, float, float]]:
    n = round(1 / step)
    return [(a / n, b / n, (n - a - b) / n) for a in range(n + 1) for b in range(n + 1 - a)]


def tune_bf(family: str, seeds: list[int]) -> dict:
    """Weights with the lowest mean cost (relative to BF 1,1,1) over the tuning seeds."""
    instances = [generate_family(family, s) for s in seeds]
    reference = np.array([place_all(i, BestFit()).cost for i in instances])
    best = None
    for w in weight_grid():
        if sum(w) == 0:
            continue
        costs = np.array([place_all(i, BestFit(w)).cost for i in instances])
        score = float(np.mean(costs / reference))
        if best is None or score < best["relative_cost"]:
            best = {"weights": list(w), "relative_cost": round(score, 4)}
    return {**best, "tuning_seeds": seeds}


def static_run(instance, policy) -> dict:
    cpu = time.process_time()
    placement = place_all(instance, policy)
    cpu = time.process_time() - cpu
    report = check_placement(instance, placement)
    if not report.ok:
        raise SystemExit(f"{policy.name}: placement fails the checker: {report.violations[:3]}")
    return {
        "cost": round(placement.cost, 4),
        "rejected": len(placement.rejected),
        "ms_per_decision": placement.stats.get("decision_ms_mean"),
        "ms_p99": placement.stats.get("decision_ms_p99"),
        # CPU time is what a decision costs; wall time also counts waiting for a shared core.
        "cpu_ms_per_decision": round(1e3 * cpu / max(len(instance.requests), 1), 4),
        "placement": placement,
    }


def bound_run(instance, family: str, best, args) -> dict:
    if family == "small":
        result = solve_ilp(instance, time_limit=args.ilp_time_limit)
        out = result.to_json()
        exact = result.status == "optimal" and not result.detail.get("rejected")
        out["kind"] = "milp-optimum" if exact else "milp-bound"
        out["bound"] = result.objective if exact else result.bound
        return out
    if best["rejected"]:
        return {"kind": "none", "bound": None, "reason": "no heuristic placed every request"}
    result = column_generation_bound(instance, best["placement"], time_limit=args.bound_time)
    return result.to_json()


def dynamic_runs(instance, policies: dict, headrooms: list[float]) -> dict:
    """Each dynamic policy at each headroom, and the dynamic lower bound (`dynamic_bound`)."""
    bound = dynamic_bound(instance)
    out = {"bound": round(bound, 2), "by_headroom": {}}
    for headroom in headrooms:
        runs = {}
        for name, (algo, predictor) in DYNAMIC.items():
            settings = SimSettings(predictor=predictor, headroom=headroom)
            r = simulate(instance, policies[algo], settings)
            runs[name] = {
                "cost": round(r.cost, 2),
                "above_bound": round(r.cost / bound - 1, 4) if bound > 0 else None,
                "machine_hours": round(r.machine_hours, 1),
                "reallocations": r.reallocations,
                "overload_machine_steps": r.overload_machine_steps,
                "rejected": r.rejected,
                "predictor": predictor,
                "ms_per_decision": r.decisions.get("decision_ms_mean"),
            }
        gain = 1 - runs["drl+prediction"]["cost"] / runs["drl"]["cost"]
        out["by_headroom"][str(headroom)] = {"runs": runs, "prediction_gain": round(gain, 4)}
    return out


def mean_ci(values: list[float]) -> dict | None:
    """Mean and the half-width of its 95 % confidence interval (Student t)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return None
    half = (
        float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
        if len(v) > 1
        else None
    )
    return {
        "mean": round(float(v.mean()), 4),
        "ci95": None if half is None else round(half, 4),
        "n": len(v),
    }


def collect_rows(rows: list[dict], path: list[str]) -> list:
    """The value at `path` in each row (None where a row lacks it)."""
    out = []
    for row in rows:
        v = row
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        out.append(v)
    return out


def dynamic_summary(rows: list[dict], headrooms: list[float]) -> dict:
    def collect(path: list[str]) -> list:
        return collect_rows(rows, path)

    out = {
        "prediction_gain": mean_ci(collect(["prediction_gain"])),
        "dynamic_bound": mean_ci(collect(["dynamic", "bound"])),
        "dynamic": {},
    }
    for h in map(str, headrooms):
        at = ["dynamic", "by_headroom", h]
        out["dynamic"][h] = {
            "prediction_gain": mean_ci(collect([*at, "prediction_gain"])),
            **{
                name: {
                    key: mean_ci(collect([*at, "runs", name, key]))
                    for key in ("cost", "above_bound", "overload_machine_steps")
                }
                for name in DYNAMIC
            },
        }
    return out


def run_dynamic_family(family: str, seeds: list[int], policies: dict, args) -> dict:
    """Dynamic mode only (a family whose requests all at once exceed the pool)."""
    rows = []
    for seed in seeds:
        start = time.monotonic()
        instance = generate_family(family, seed)
        row = {"seed": seed, "requests": len(instance.requests)}
        row["dynamic"] = dynamic_runs(instance, policies, args.headrooms)
        row["prediction_gain"] = row["dynamic"]["by_headroom"][str(args.headrooms[0])][
            "prediction_gain"
        ]
        rows.append(row)
        first = row["dynamic"]["by_headroom"][str(args.headrooms[0])]["runs"]
        costs = " ".join(f"{name} {r['cost']}" for name, r in first.items())
        log(f"{family} seed {seed}: dynamic {costs} ({time.monotonic() - start:.0f}s)")
    return {"summary": dynamic_summary(rows, args.headrooms), "seeds": rows}


def run_family(family: str, seeds: list[int], policies: dict, args) -> dict:
    if family in DYNAMIC_ONLY:
        return run_dynamic_family(family, seeds, policies, args)
    tuning = tune_bf(family, [TUNING_SEED_BASE + k for k in range(args.tuning_seeds)])
    tuned = BestFit(tuple(tuning["weights"]))
    rows = []
    for seed in seeds:
        start = time.monotonic()
        instance = generate_family(family, seed)
        runs = {
            "ff": static_run(instance, policies["ff"]),
            "bf": static_run(instance, policies["bf"]),
            "bf_tuned": static_run(instance, tuned),
            **{name: static_run(instance, policies[name]) for name in AGENTS},
        }
        heuristics = [runs[k] for k in ("ff", "bf", "bf_tuned") if not runs[k]["rejected"]]
        best = min(heuristics or [runs["ff"]], key=lambda r: r["cost"])
        bound = bound_run(instance, family, best, args)
        drl, untrained = runs["drl"]["cost"], runs["drl_untrained"]["cost"]
        relative = {k: round(v["cost"] / best["cost"], 4) for k, v in runs.items()}
        if bound.get("bound"):
            relative["bound"] = round(bound["bound"] / best["cost"], 4)
        row = {
            "seed": seed,
            "requests": len(instance.requests),
            "machines": len(instance.machines),
            "static": {
                k: {x: y for x, y in v.items() if x != "placement"} for k, v in runs.items()
            },
            "bound": bound,
            "best_heuristic_cost": best["cost"],
            "relative_to_best_heuristic": relative,
            "drl_saving_vs_best_heuristic": round(1 - drl / best["cost"], 4),
            "untrained_saving_vs_best_heuristic": round(1 - untrained / best["cost"], 4),
            "learning_gain": round(1 - drl / untrained, 4),
            "drl_above_bound": round(drl / bound["bound"] - 1, 4) if bound.get("bound") else None,
            "best_heuristic_above_bound": round(best["cost"] / bound["bound"] - 1, 4)
            if bound.get("bound")
            else None,
        }
        if not args.no_dynamic and instance.dynamic is not None and family not in DISTRIBUTIONS:
            row["dynamic"] = dynamic_runs(instance, policies, args.headrooms)
            first = row["dynamic"]["by_headroom"][str(args.headrooms[0])]
            row["prediction_gain"] = first["prediction_gain"]
        rows.append(row)
        s = row["static"]
        log(
            f"{family} seed {seed}: ff {s['ff']['cost']} bf {s['bf']['cost']} bf_tuned "
            f"{s['bf_tuned']['cost']} untrained {untrained} drl {drl} bound "
            f"{bound.get('bound')} ({bound.get('kind')}) ({time.monotonic() - start:.0f}s)"
        )

    def collect(path: list[str]) -> list:
        return collect_rows(rows, path)

    summary = {name: mean_ci(collect(["static", name, "cost"])) for name in STATIC}
    summary["bound"] = mean_ci(collect(["bound", "bound"]))
    summary["best_heuristic"] = mean_ci(collect(["best_heuristic_cost"]))
    summary["relative_to_best_heuristic"] = {
        name: mean_ci(collect(["relative_to_best_heuristic", name])) for name in (*STATIC, "bound")
    }
    summary["bound_kinds"] = sorted({str(k) for k in collect(["bound", "kind"])})
    for key in (
        "drl_saving_vs_best_heuristic",
        "untrained_saving_vs_best_heuristic",
        "learning_gain",
        "drl_above_bound",
        "best_heuristic_above_bound",
    ):
        summary[key] = mean_ci(collect([key]))
    # No placement costs less than the bound: the most any can save on the best heuristic.
    rooms = [round(1 - b, 4) for b in collect(["relative_to_best_heuristic", "bound"]) if b]
    summary["room_below_best_heuristic"] = mean_ci(rooms)
    summary["room_below_best_heuristic_largest"] = max(rooms) if rooms else None
    summary["rejected"] = {name: int(sum(collect(["static", name, "rejected"]))) for name in STATIC}
    summary["drl_ms_per_decision"] = mean_ci(collect(["static", "drl", "ms_per_decision"]))
    summary["drl_ms_p99"] = mean_ci(collect(["static", "drl", "ms_p99"]))
    summary["drl_cpu_ms_per_decision"] = mean_ci(collect(["static", "drl", "cpu_ms_per_decision"]))
    if any("dynamic" in r for r in rows):
        summary.update(dynamic_summary(rows, args.headrooms))
    out = {"summary": summary, "bf_tuning": tuning, "seeds": rows}
    if family not in DISTRIBUTIONS:
        lifetimes = generate_family(family, seeds[0]).dynamic.lifetimes.values()
        out["predictor_accuracy"] = [a.to_json() for a in evaluate(lf.load for lf in lifetimes)]
    return out


def _cell(stat: dict | None, percent: bool = False, digits: int = 1) -> str:
    if stat is None:
        return "n/a"
    scale, unit = (100, " %") if percent else (1, "")
    text = f"{stat['mean'] * scale:.{digits}f}"
    if stat.get("ci95") is not None:
        text += f" ± {stat['ci95'] * scale:.{digits}f}"
    return text + unit


def _room_cell(summary: dict) -> str:
    largest = summary.get("room_below_best_heuristic_largest")
    text = _cell(summary.get("room_below_best_heuristic"), True)
    return text if largest is None else f"{text} ({largest * 100:.1f} %)"


def table(results: dict) -> str:
    """One row per family. FF ... bound: cost relative to the best of FF, BF and BF tuned on the
    same seed (mean ± 95 % CI over seeds); then the most any placement can save against that
    best (the bound's room; the largest seed's in brackets), the trained agent's saving, its
    gain over the untrained agent, its distance above the bound, prediction's saving in dynamic
    mode, and the CPU time per decision."""
    head = (
        "| family | seeds | best heuristic (cost) | FF | BF | BF tuned "
        "| untrained agent, Algorithm 2's ranking | untrained agent "
        "| trained agent | best bound | most any placement saves (largest seed) "
        "| trained vs best heuristic | learning gain "
        "| trained above bound | prediction gain (dynamic) | ms/decision (CPU) |"
    )
    lines = [head, "|" + "---|" * 16]
    for family, r in results.items():
        s = r["summary"]
        if "drl" not in s:
            continue  # dynamic mode only
        rel = s["relative_to_best_heuristic"]
        cells = [_cell(rel[k], digits=3) for k in STATIC]
        lines.append(
            f"| {family} | {s['drl']['n']} | {_cell(s['best_heuristic'])} | "
            + " | ".join(cells)
            + f" | {_cell(rel['bound'], digits=3)} ({', '.join(s['bound_kinds'])}) | "
            f"{_room_cell(s)} | "
            f"{_cell(s['drl_saving_vs_best_heuristic'], True)} | "
            f"{_cell(s['learning_gain'], True)} | {_cell(s['drl_above_bound'], True)} | "
            f"{_cell(s.get('prediction_gain'), True)} | "
            f"{_cell(s['drl_cpu_ms_per_decision'], digits=2)} |"
        )
    return "\n".join(lines) + "\n"


def dynamic_table(results: dict) -> str:
    """One row per family and headroom: the dynamic lower bound and each policy's cost (price x
    machine-hours, mean ± 95 % CI over seeds), prediction's saving, and the overloaded
    machine-steps (actual load above the usable capacity) without and with prediction."""
    head = (
        "| family | headroom | seeds | dynamic bound | FF | BF | BF + prediction | DRL "
        "| DRL + prediction "
        "| prediction gain | DRL + prediction above bound | overloaded machine-steps: "
        "DRL / DRL + prediction |"
    )
    lines = [head, "|" + "---|" * 12]
    for family, r in results.items():
        s = r["summary"]
        for h, d in s.get("dynamic", {}).items():
            costs = " | ".join(_cell(d[name]["cost"]) for name in DYNAMIC)
            lines.append(
                f"| {family} | {h} | {s['dynamic_bound']['n']} | {_cell(s['dynamic_bound'])} | "
                f"{costs} | {_cell(d['prediction_gain'], True)} | "
                f"{_cell(d['drl+prediction']['above_bound'], True)} | "
                f"{_cell(d['drl']['overload_machine_steps'])} / "
                f"{_cell(d['drl+prediction']['overload_machine_steps'])} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


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
    """(a) static cost of every ablation row relative to the best heuristic of the same seed,
    mean and 95 % CI over seeds; (b) dynamic mode: DRL with prediction relative to without."""
    plt = pyplot()
    families = [f for f in results if "relative_to_best_heuristic" in results[f]["summary"]]
    bars = [
        ("FF", "ff"),
        ("BF", "bf"),
        ("BF tuned", "bf_tuned"),
        ("untrained agent, Algorithm 2's ranking", "drl_untrained_lexicographic"),
        ("untrained agent", "drl_untrained"),
        ("trained agent", "drl"),
        ("lower bound", "bound"),
    ]
    fig, (a, b) = plt.subplots(1, 2, figsize=(15, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(bars)
    x = np.arange(len(families))
    for k, (label, key) in enumerate(bars):
        stats_ = [results[f]["summary"]["relative_to_best_heuristic"][key] for f in families]
        means = [st["mean"] if st else np.nan for st in stats_]
        errors = [(st["ci95"] or 0.0) if st else 0.0 for st in stats_]
        a.bar(x + k * width, means, width, yerr=errors, capsize=2, label=label)
    a.axhline(1.0, color="grey", linewidth=0.8)
    a.axhline(0.85, color="grey", linewidth=0.8, linestyle="--")
    a.set_xticks(x + width * (len(bars) - 1) / 2, families, rotation=30)
    a.set_ylabel("cost / best of FF, BF, BF tuned")
    a.set_title("(a) static placement: ablation (mean, 95 % CI over seeds)")
    a.set_ylim(0, 1.5)
    a.legend(ncol=3, fontsize="small", loc="upper left")
    dyn = [f for f in results if "prediction_gain" in results[f]["summary"]]
    if dyn:
        gains = [results[f]["summary"]["prediction_gain"] for f in dyn]
        b.bar(
            np.arange(len(dyn)),
            [100 * g["mean"] for g in gains],
            yerr=[100 * (g["ci95"] or 0) for g in gains],
            capsize=2,
        )
        b.set_xticks(np.arange(len(dyn)), dyn, rotation=30)
        b.set_ylabel("cost saved by prediction (%)")
        b.set_title("(b) dynamic: DRL + Holt-Winters vs DRL")
        b.axhline(0, color="grey", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    known = [*FAMILIES, *DISTRIBUTIONS, *AZURE_FAMILIES]
    parser.add_argument(
        "--families",
        help=f"from {', '.join(known)} (default: all but {', '.join(DYNAMIC_ONLY)} with "
        "--no-dynamic)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="test seeds of the families (0,1,2)")
    parser.add_argument(
        "--draws", type=int, default=10, help="test seeds 0..N-1 of the mix distributions (10)"
    )
    parser.add_argument("--tuning-seeds", type=int, default=3, help="seeds to tune BF on (3)")
    parser.add_argument("--model", help="DRL model (default: the packaged one)")
    parser.add_argument(
        "--bound-time", type=float, default=30.0, help="column generation seconds (30)"
    )
    parser.add_argument("--ilp-time-limit", type=float, default=120.0)
    parser.add_argument("--no-dynamic", action="store_true", help="static mode only")
    parser.add_argument(
        "--headrooms",
        default="0.1",
        help="dynamic mode: reservation headrooms to run, comma-separated; the first is the "
        "main table's (0.1)",
    )
    parser.add_argument("--table", help="also write the ablation table (markdown) here")
    parser.add_argument("--plot", help="draw the ablation as a PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.families is None:
        skip = DYNAMIC_ONLY if args.no_dynamic else ()
        families = [f for f in DEFAULT_FAMILIES if f not in skip]
    else:
        families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in known]
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}")
    if args.no_dynamic and any(f in DYNAMIC_ONLY for f in families):
        parser.error(f"--no-dynamic: {', '.join(DYNAMIC_ONLY)} run in dynamic mode only")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    try:
        args.headrooms = [float(h) for h in args.headrooms.split(",") if h]
    except ValueError:
        parser.error(f"--headrooms: expected numbers separated by commas, got {args.headrooms}")
    if not args.headrooms or min(args.headrooms) < 0:
        parser.error(f"--headrooms: expected numbers >= 0, got {args.headrooms}")
    if args.plot:
        pyplot()  # fail before the long run, not after it
    drl, info = load_model(args.model)
    policies = {
        "ff": FirstFit(),
        "bf": BestFit(),
        "drl": drl,
        "drl_untrained_lexicographic": DrlPolicy(None, replace(drl.config, opening_penalty=None)),
        "drl_untrained": DrlPolicy(None, drl.config),
    }
    started = time.monotonic()
    results = {}
    for f in families:
        family_seeds = list(range(args.draws)) if f in DISTRIBUTIONS else seeds
        results[f] = run_family(f, family_seeds, policies, args)
    output = {
        "command": " ".join(["bench/placement.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": str(args.model or "packaged"),
        "model_recipe": info.get("recipe"),
        "seconds": round(time.monotonic() - started, 1),
        "families": results,
    }
    json.dump(output, sys.stdout, indent=1)
    sys.stdout.write("\n")
    text = table(results) + "\n" + dynamic_table(results)
    log(text)
    if args.table:
        Path(args.table).write_text(text)
    if args.plot:
        plot(results, args.plot)
        log(f"plot written to {Path(args.plot).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
