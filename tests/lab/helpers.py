"""What the lab tests read from a run's telemetry."""

from __future__ import annotations

import json
from pathlib import Path


def forwarded(out: Path, node: str, start: float, end: float) -> float:
    """Packets `node` forwarded between `start` and `end` (its own counter, as scraped)."""
    wanted = ("cyberstar_pp_packets_total", {"verdict": "forward"})
    points = [
        (t, v)
        for t, src, metric, labels, v in map(json.loads, (out / "telemetry.jsonl").open())
        if src == node and (metric, labels) == wanted and start <= t <= end
    ]
    return points[-1][1] - points[0][1] if len(points) >= 2 else 0.0
