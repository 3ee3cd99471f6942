"""`cyberstar place ...`: NF placement from the command line.

  cyberstar place --algo {ff,bf,ilp,drl} --instance I.json --out P.json [--model F] [--time-limit S]
  cyberstar place check    --instance I.json --placement P.json
  cyberstar place train    --recipe packaged --out MODEL.pt
  cyberstar place train    --instances DIR --out MODEL.pt --epochs N [--seed S]
  cyberstar place generate --family F --seed S --out I.json
  cyberstar place simulate --instance I.json --algo A [--predictor P]

Results go to stdout as JSON, logs and progress to stderr. Exit codes: 0 success; 1 a placement
that fails the check, or no placement found; 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from cyberstar.errors import UsageError
from cyberstar.verbs import Verb

log = logging.getLogger(__name__)

ALGOS = ("ff", "bf", "ilp", "drl")


def _emit(data: dict) -> None:
    json.dump(data, sys.stdout, indent=1, default=float)
    sys.stdout.write("\n")


def _weights(text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise UsageError(f"--weights: expected three non-negative numbers B,C,M, got {text!r}")
    return values  # type: ignore[return-value]


def make_policy(algo: str, model: str | None = None, weights: str | None = None):
    """The online policy for an algorithm name (ILP is offline: see `solve_ilp`)."""
    from cyberstar.orchestrator.heuristics import BestFit, FirstFit

    if algo == "ff":
        return FirstFit()
    if algo == "bf":
        w = _weights(weights)
        return BestFit(w) if w else BestFit()
    if algo == "drl":
        from cyberstar.orchestrator.drl import load_model

        return load_model(model)[0]
    raise UsageError(f"--algo: {algo!r} is not an online algorithm; choose ff, bf or drl")


def cmd_place(args: argparse.Namespace) -> int:
    from cyberstar.orchestrator.files import load_instance, save_placement
    from cyberstar.orchestrator.search import place_all

    for option in ("algo", "instance", "out"):
        if getattr(args, option) is None:
            raise UsageError(f"--{option}: required (see `cyberstar place --help`)")
    if args.time_limit is not None and args.time_limit <= 0:
        raise UsageError(f"--time-limit: expected seconds > 0, got {args.time_limit}")
    instance = load_instance(args.instance)
    start = time.perf_counter()
    if args.algo == "ilp":
        from cyberstar.orchestrator.ilp import solve_ilp

        result = solve_ilp(instance, time_limit=args.time_limit or 60.0)
        if result.placement is None:
            # No ILP incumbent (too large, or the time ran out first): keep the proven bound
            # and hand back the cheaper heuristic placement, labelled as such, with its gap.
            from cyberstar.orchestrator.heuristics import BestFit, FirstFit

            candidates = [place_all(instance, p) for p in (FirstFit(), BestFit())]
            placement = min(candidates, key=lambda p: (len(p.rejected), p.cost))
            if placement.rejected:
                _emit({"algo": "ilp", **result.to_json()})
                log.error("ilp: no placement of every request (status %s)", result.status)
                return 1
            result.objective = placement.cost
            result.detail["incumbent_from"] = placement.algo
            log.warning(
                "ilp: status %s; the placement written is %s's", result.status, placement.algo
            )
            placement.algo = f"ilp({result.status}, incumbent {placement.algo})"
        else:
            placement = result.placement
        summary = {"algo": "ilp", **result.to_json()}
        placement.stats.update(result.to_json())
    else:
        placement = place_all(instance, make_policy(args.algo, args.model, args.weights))
        summary = {"algo": args.algo}
    save_placement(placement, args.out)
    summary.update(
        {
            "cost": placement.cost,
            "placed": len(placement.assignments),
            "rejected": len(placement.rejected),
            "seconds": round(time.perf_counter() - start, 3),
            **{k: v for k, v in placement.stats.items() if k.startswith("decision")},
            "out": str(args.out),
        }
    )
    _emit(summary)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from cyberstar.orchestrator.checker import check_placement
    from cyberstar.orchestrator.files import check_placement_ids, load_instance, load_placement

    instance = load_instance(args.instance)
    placement = load_placement(args.placement)
    check_placement_ids(instance, placement, args.placement)
    report = check_placement(instance, placement)
    _emit(report.to_json())
    return 0 if report.ok else 1


def _instances_in(directory: str, option: str):
    from cyberstar.orchestrator.files import load_instance

    path = Path(directory)
    if not path.is_dir():
        raise UsageError(f"{option}: {directory} is not a directory")
    files = sorted(path.glob("*.json"))
    if not files:
        raise UsageError(f"{option}: no *.json instance files in {directory}")
    return [load_instance(f) for f in files]


def cmd_train(args: argparse.Namespace) -> int:
    from cyberstar.orchestrator.drl import AgentConfig, save_model

    if (args.recipe is None) == (args.instances is None):
        raise UsageError("train: give either --recipe NAME or --instances DIR (with --epochs)")
    if args.recipe is not None:
        from cyberstar.orchestrator.recipe import run

        net, config, info = run(args.recipe, progress=not args.quiet)
    else:
        import numpy as np

        from cyberstar.orchestrator.training import TrainSettings, train

        if args.epochs is None or args.epochs < 1:
            raise UsageError(f"--epochs: expected at least 1 with --instances, got {args.epochs}")
        instances = _instances_in(args.instances, "--instances")
        validation = _instances_in(args.validation, "--validation") if args.validation else None
        order = np.random.default_rng(args.seed).permutation
        epochs = [order(len(instances)) for _ in range(args.epochs)]
        sequence = [int(i) for epoch in epochs for i in epoch]
        settings = TrainSettings(
            episodes=len(sequence), seed=args.seed, validate_every=len(instances)
        )
        config = AgentConfig()
        net, info = train(
            lambda k: instances[sequence[k]], settings, config, validation, progress=not args.quiet
        )
        info["instances"] = [inst.meta for inst in instances]
        info["validation"] = [inst.meta for inst in validation or []]
    info["command"] = " ".join(["cyberstar", *sys.argv[1:]]) if sys.argv else ""
    out = Path(args.out)
    save_model(out, net, config, info)
    recipe = out.with_suffix(".json")
    recipe.write_text(
        json.dumps({"model": out.name, "agent": config.__dict__, **info}, indent=1) + "\n"
    )
    _emit({"model": str(out), "recipe": str(recipe), "history": info["history"]})
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from cyberstar.orchestrator.files import save_instance

    overrides = {
        "tenants": args.tenants,
        "machines": args.machines,
        "nat_fraction": args.nat_fraction,
    }
    out = Path(args.out)
    seeds = range(args.seed, args.seed + args.count)
    into_directory = args.count > 1 or out.is_dir()
    written = []
    for seed in seeds:
        instance = generate_family(args.family, seed, args.trace, **overrides)
        path = out / f"{args.family}-{seed}.json" if into_directory else out
        try:
            if into_directory:
                out.mkdir(parents=True, exist_ok=True)
            save_instance(instance, path)
        except OSError as e:
            raise UsageError(
                f"--out: cannot write {path}: {e.strerror or e}; give a file in a writable "
                "directory (or a directory, where each instance is written as FAMILY-SEED.json)"
            ) from e
        written.append(
            {
                "path": str(path),
                "requests": len(instance.requests),
                "machines": len(instance.machines),
            }
        )
    _emit({"family": args.family, "written": written})
    return 0


def generate_family(family: str, seed: int, trace: str | None = None, **overrides):
    from dataclasses import replace

    from cyberstar.orchestrator.azure import AZURE, AZURE_FAMILIES, azure_instance
    from cyberstar.orchestrator.distribution import DISTRIBUTIONS, draw
    from cyberstar.orchestrator.generator import generate

    if family in AZURE_FAMILIES:
        settings = replace(AZURE, **{k: v for k, v in overrides.items() if v is not None})
        settings.validate()
        return azure_instance(seed, settings, trace, family)
    if family in DISTRIBUTIONS:
        if any(v is not None for v in overrides.values()):
            raise UsageError(f"--family {family}: draws its own sizes; drop the overrides")
        return draw(family, seed)
    return generate(family, seed, **overrides)


def cmd_simulate(args: argparse.Namespace) -> int:
    from cyberstar.orchestrator.files import load_instance
    from cyberstar.orchestrator.simulator import SimSettings, simulate

    if args.horizon < 1:
        raise UsageError(f"--horizon: expected at least 1, got {args.horizon}")
    if not 0 <= args.lower < 1:
        raise UsageError(f"--lower: expected a fraction in [0, 1), got {args.lower}")
    if args.headroom < 0:
        raise UsageError(f"--headroom: expected a number >= 0, got {args.headroom}")
    instance = load_instance(args.instance)
    policy = make_policy(args.algo, args.model, args.weights)
    settings = SimSettings(
        predictor=args.predictor, horizon=args.horizon, headroom=args.headroom, lower=args.lower
    )
    result = simulate(instance, policy, settings).to_json()
    if args.bound:
        from cyberstar.orchestrator.bounds import dynamic_bound

        bound = dynamic_bound(instance)
        result["dynamic_bound"] = round(bound, 4)
        result["above_bound"] = round(result["cost"] / bound - 1, 4) if bound > 0 else None
    _emit(result)
    return 0


def place_arguments(place: argparse.ArgumentParser) -> None:
    place.add_argument("--algo", choices=ALGOS, help="placement algorithm")
    place.add_argument("--instance", help="INSTANCE.json (format: docs/orchestration.md)")
    place.add_argument("--out", help="PLACEMENT.json to write")
    place.add_argument("--model", help="DRL model file (default: the packaged model)")
    place.add_argument("--time-limit", type=float, help="ILP time limit in seconds (default 60)")
    place.add_argument("--weights", help="best-fit weights B,C,M (default 1,1,1)")


def check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("--instance", required=True, help="INSTANCE.json")
    check.add_argument("--placement", required=True, help="PLACEMENT.json")


def train_arguments(train: argparse.ArgumentParser) -> None:
    from cyberstar.orchestrator.recipe import RECIPES

    train.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="a named recipe that draws its own instances (packaged: the shipped model)",
    )
    train.add_argument("--instances", help="directory of training INSTANCE.json")
    train.add_argument(
        "--validation", help="directory of validation instances: keep the best epoch on them"
    )
    train.add_argument(
        "--out",
        required=True,
        help="model file to write (.pt); the recipe is written next to it (.json)",
    )
    train.add_argument("--epochs", type=int, help="passes over the --instances")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def generate_arguments(gen: argparse.ArgumentParser) -> None:
    from cyberstar.orchestrator.azure import AZURE_FAMILIES
    from cyberstar.orchestrator.distribution import DISTRIBUTIONS
    from cyberstar.orchestrator.generator import FAMILIES

    gen.add_argument(
        "--family", required=True, choices=[*FAMILIES, *DISTRIBUTIONS, *AZURE_FAMILIES]
    )
    gen.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    gen.add_argument(
        "--count", type=int, default=1, help="instances to write; above 1, --out is a directory"
    )
    gen.add_argument(
        "--out",
        required=True,
        help="INSTANCE.json, or a directory (always with --count above 1): FAMILY-SEED.json there",
    )
    gen.add_argument("--tenants", type=int, help="override the family's number of tenants")
    gen.add_argument("--machines", type=int, help="override the family's number of machines")
    gen.add_argument("--nat-fraction", type=float, help="override the family's NAT share")
    gen.add_argument(
        "--trace",
        help="azure families: trace directory (default $AZURE_TRACE_DIR or "
        "/work/shared/data/azure-v1-tenant-arrivals)",
    )


def simulate_arguments(sim: argparse.ArgumentParser) -> None:
    from cyberstar.orchestrator.predictor import PREDICTORS

    sim.add_argument("--instance", required=True, help="INSTANCE.json with a dynamic section")
    sim.add_argument("--algo", required=True, choices=("ff", "bf", "drl"))
    sim.add_argument("--model", help="DRL model file (default: the packaged model)")
    sim.add_argument("--weights", help="best-fit weights B,C,M")
    sim.add_argument(
        "--predictor",
        choices=tuple(PREDICTORS),
        default="peak",
        help="load estimate: last/peak (reactive) or a forecast (default peak)",
    )
    sim.add_argument("--horizon", type=int, default=2, help="forecast steps reserved (default 2)")
    sim.add_argument("--headroom", type=float, default=0.1, help="reservation margin (0.1)")
    sim.add_argument("--lower", type=float, default=0.3, help="scale-down threshold (0.3)")
    sim.add_argument(
        "--bound",
        action="store_true",
        help="also print the dynamic lower bound (per step, the cover bound of the live requests "
        "at their actual load) and how far above it the run's cost is",
    )


PLACE = Verb(
    help="place NF requests on machines (ff, bf, ilp, drl); check, train, generate, simulate",
    description="Place the requests of INSTANCE.json in file order with one algorithm and "
    "write PLACEMENT.json; or run one of the verbs below (`cyberstar place VERB --help`).",
    epilog="examples:\n"
    "  cyberstar place --algo drl --instance i.json --out p.json\n"
    "  cyberstar place check --instance i.json --placement p.json\n"
    "  cyberstar place generate --family paper-b --seed 0 --out i.json\n"
    "  cyberstar place train --recipe packaged --out model.pt\n"
    "  cyberstar place simulate --instance i.json --algo drl --predictor holt-winters\n"
    "exit codes: 0 ok, 1 check failed or no placement found, 2 bad input",
    raw_text=True,
    arguments=place_arguments,
    run=cmd_place,
)
CHECK = Verb(
    help="validate a placement against every constraint",
    arguments=check_arguments,
    run=cmd_check,
)
TRAIN = Verb(
    help="train the DRL agent's network: a recipe, or Double DQN on --instances",
    arguments=train_arguments,
    run=cmd_train,
)
GENERATE = Verb(
    help="write instances of a benchmark family",
    arguments=generate_arguments,
    run=cmd_generate,
)
SIMULATE = Verb(
    help="dynamic mode: arrivals, departures, scaling",
    arguments=simulate_arguments,
    run=cmd_simulate,
)
