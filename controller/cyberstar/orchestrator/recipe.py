"""The training recipe of the packaged placement model, reproducible from one command:

  make placement-model      # = cyberstar place train --recipe packaged --out models/drl.pt

Every episode draws a fresh instance: from the broad distribution `mix` (distribution.py) with
probability 1 - `family_share`, else from one of the generator's named families. Seeds:
training episodes use TRAIN_SEED_BASE + episode, validation VALIDATION_SEED_BASE + j, and every
benchmark or test seed is below VALIDATION_SEED_BASE, so no evaluated instance (and, for `mix`,
no evaluated parameter draw) was seen in training or model selection. The `azure` family (real
arrivals) and the `mix-wide` distribution are never trained on: they measure generalisation to
data and parameters outside the training support.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from cyberstar.orchestrator.distribution import TRAIN_SEED_BASE, draw
from cyberstar.orchestrator.drl import AgentConfig
from cyberstar.orchestrator.generator import generate
from cyberstar.orchestrator.model import Instance
from cyberstar.orchestrator.training import TrainSettings, train

VALIDATION_SEED_BASE = 50_000

TRAINING_FAMILIES = (
    "paper-a",
    "paper-b",
    "paper-c",
    "nat10",
    "nat30",
    "nat50",
    "nat70",
    "nat90",
)


@dataclass(frozen=True)
class Recipe:
    settings: TrainSettings
    config: AgentConfig = field(default_factory=AgentConfig)
    distribution: str = "mix"
    families: tuple[str, ...] = TRAINING_FAMILIES
    family_share: float = 0.3
    validation_draws: int = 8
    validation_families: tuple[str, ...] = ("paper-b", "nat10", "nat50", "nat90")


RECIPES: dict[str, Recipe] = {
    "packaged": Recipe(TrainSettings(episodes=200, seed=0)),
    # Seconds on small instances: for trying the pipeline, not for use.
    "smoke": Recipe(
        TrainSettings(
            episodes=4, seed=0, batch=4, branch=0.3, horizon=4, max_requests=40, validate_every=2
        ),
        distribution="mix-small",
        family_share=0.0,
        validation_draws=2,
        validation_families=(),
    ),
}


def episode_source(recipe: Recipe) -> Callable[[int], Instance]:
    def source(episode: int) -> Instance:
        rng = np.random.default_rng([recipe.settings.seed, episode])
        seed = TRAIN_SEED_BASE + episode
        if recipe.families and rng.random() < recipe.family_share:
            return generate(recipe.families[int(rng.integers(len(recipe.families)))], seed)
        return draw(recipe.distribution, seed)

    return source


def validation_set(recipe: Recipe) -> list[Instance]:
    draws = [
        draw(recipe.distribution, VALIDATION_SEED_BASE + j) for j in range(recipe.validation_draws)
    ]
    return draws + [generate(f, VALIDATION_SEED_BASE) for f in recipe.validation_families]


def run(recipe_name: str, progress: bool = True, on_validation=None):
    """Train by the named recipe; returns (network, config, info)."""
    recipe = RECIPES[recipe_name]
    net, info = train(
        episode_source(recipe),
        recipe.settings,
        recipe.config,
        validation_set(recipe),
        progress=progress,
        on_validation=on_validation,
    )
    info["recipe"] = {
        "name": recipe_name,
        # Lists, not tuples: the .pt keeps what the .json next to it says.
        **{
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(recipe).items()
            if k not in ("settings", "config")
        },
        "train_seeds": f"{TRAIN_SEED_BASE}..{TRAIN_SEED_BASE + recipe.settings.episodes - 1}",
        "validation_seed_base": VALIDATION_SEED_BASE,
    }
    return net, recipe.config, info
