"""What one FM batch of first packets costs the slow path's daemons, split into a part paid
once per batch (the messages between the processes and each one's wake-up) and a part paid
per first packet in it, fitted over `bench/slowpath.py`'s saturating runs, whose thread
counts (8, 16, 64) give FM batches of different sizes.

The CPU a connection costs is then `fixed / batch + per_packet`, and a budget per connection
allows a fixed cost of at most `(budget - per_packet) * batch` at a given batch size: what the
per-batch part would have to shrink to for the budget to hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchCost:
    fixed_us: float  # per batch, whatever its size
    per_packet_us: float  # per first packet in the batch

    def per_connection_us(self, packets_per_batch: float) -> float:
        return self.fixed_us / packets_per_batch + self.per_packet_us

    def fixed_allowed_us(self, budget_us: float, packets_per_batch: float) -> float:
        """The largest fixed cost per batch with which a connection in batches of
        `packets_per_batch` costs at most `budget_us` (negative: no fixed cost is small
        enough, the per-packet part alone exceeds the budget)."""
        return (budget_us - self.per_packet_us) * packets_per_batch


def fit(points: Sequence[tuple[float, float]]) -> BatchCost:
    """Least squares of `µs per batch = fixed + per_packet * packets` over (packets per batch,
    µs of CPU per connection) pairs, one per run."""
    if len({round(b, 6) for b, _ in points}) < 2:
        raise ValueError(
            f"expected runs at two batch sizes at least, found {sorted(b for b, _ in points)}: "
            "run more than one thread count"
        )
    if any(b <= 0 for b, _ in points):
        raise ValueError(f"expected positive batch sizes, found {[b for b, _ in points]}")
    xs = [b for b, _ in points]
    ys = [b * us for b, us in points]  # µs per batch
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    per_packet = sxy / sxx
    return BatchCost(fixed_us=mean_y - per_packet * mean_x, per_packet_us=per_packet)
