"""Per-tenant traffic prediction for dynamic mode (§8.3: the DRL agent with traffic prediction).

Each predictor is incremental: `observe(y)` once per step with the load just measured, then
`forecast(h)` for the next h steps. Start simple, as the issue asks: last value (what a reactive
system uses, the baseline), seasonal naive (the same hour yesterday), additive Holt-Winters.
`evaluate` measures them on load series so the choice is made on numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


class LastValue:
    name = "last"

    def __init__(self):
        self.last: float | None = None

    def observe(self, y: float) -> None:
        self.last = y

    def forecast(self, horizon: int) -> np.ndarray:
        return np.full(horizon, np.nan if self.last is None else self.last)


class TrailingPeak:
    """The highest load of the last `window` steps: the conservative reactive rule (an operator's
    water level) that a system without a forecast uses so that a rising load does not overload
    a machine before the next rebalancing."""

    name = "peak"

    def __init__(self, window: int = 6):
        self.window = window
        self.history: list[float] = []

    def observe(self, y: float) -> None:
        self.history.append(y)
        if len(self.history) > self.window:
            del self.history[0]

    def forecast(self, horizon: int) -> np.ndarray:
        return np.full(horizon, max(self.history) if self.history else np.nan)


class SeasonalNaive:
    """y(t + h) = y(t + h - season); the last value until one season has been seen."""

    name = "seasonal"

    def __init__(self, season: int = 24):
        self.season = season
        self.history: list[float] = []

    def observe(self, y: float) -> None:
        self.history.append(y)
        if len(self.history) > 2 * self.season:
            del self.history[: -self.season]

    def forecast(self, horizon: int) -> np.ndarray:
        n = len(self.history)
        if n == 0:
            return np.full(horizon, np.nan)
        if n < self.season:
            return np.full(horizon, self.history[-1])
        return np.array([self.history[n - self.season + (h % self.season)] for h in range(horizon)])


class HoltWinters:
    """Additive Holt-Winters with fixed smoothing constants; seasonal naive until initialised
    (one season of history)."""

    name = "holt-winters"

    def __init__(
        self, season: int = 24, alpha: float = 0.3, beta: float = 0.02, gamma: float = 0.3
    ):
        self.season = season
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.warmup = SeasonalNaive(season)
        self.level: float | None = None
        self.trend = 0.0
        self.seasonal = np.zeros(season)
        self.t = 0

    def observe(self, y: float) -> None:
        self.t += 1
        if self.level is None:
            self.warmup.observe(y)
            if len(self.warmup.history) == self.season:
                first = np.array(self.warmup.history)
                self.level = float(first.mean())
                self.seasonal = first - self.level
            return
        i = (self.t - 1) % self.season
        previous = self.level
        self.level = self.alpha * (y - self.seasonal[i]) + (1 - self.alpha) * (
            self.level + self.trend
        )
        self.trend = self.beta * (self.level - previous) + (1 - self.beta) * self.trend
        self.seasonal[i] = self.gamma * (y - self.level) + (1 - self.gamma) * self.seasonal[i]

    def forecast(self, horizon: int) -> np.ndarray:
        if self.level is None:
            return self.warmup.forecast(horizon)
        idx = (self.t + np.arange(horizon)) % self.season
        return self.level + self.trend * np.arange(1, horizon + 1) + self.seasonal[idx]


PREDICTORS = {
    "last": LastValue,
    "peak": TrailingPeak,
    "seasonal": SeasonalNaive,
    "holt-winters": HoltWinters,
}
# Estimators that use no forecast (reactive); the others are predictors.
REACTIVE = ("last", "peak")


def make_predictor(name: str):
    return PREDICTORS[name]()


@dataclass
class Accuracy:
    predictor: str
    mae: float  # mean absolute error of the one-step forecast, in units of the mean load
    under: float  # fraction of steps where the forecast was below the actual load
    points: int

    def to_json(self) -> dict:
        return {
            "predictor": self.predictor,
            "mae": round(self.mae, 4),
            "under": round(self.under, 4),
            "points": self.points,
        }


def evaluate(
    series: Iterable[Sequence[float]], names: Iterable[str] = tuple(PREDICTORS)
) -> list[Accuracy]:
    """One-step-ahead accuracy over every series, skipping each series' first step."""
    series = [np.asarray(s, dtype=float) for s in series if len(s) > 1]
    out = []
    scale = float(np.mean(np.concatenate(series))) if series else 1.0
    for name in names:
        errors, under = [], 0
        for s in series:
            p = make_predictor(name)
            p.observe(s[0])
            for y in s[1:]:
                f = float(p.forecast(1)[0])
                errors.append(abs(f - y))
                under += f < y
                p.observe(y)
        n = len(errors)
        out.append(
            Accuracy(
                name,
                float(np.mean(errors)) / scale if n else 0.0,
                float(under) / n if n else 0.0,
                n,
            )
        )
    return out
