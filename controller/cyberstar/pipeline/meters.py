"""Meter semantics shared by every target's model of it: a two-rate three-color marker
(RFC 2698) computed as two GCRA (virtual scheduling) tests.

A rate R units/s with burst B units is a token bucket of depth B filled at R. Equivalently,
each cell keeps a theoretical arrival time TAT: a packet of L units at time t conforms when
max(TAT, t) + L·I ≤ t + B·I, with I = 1e9 / R ns per unit, and then TAT = max(TAT, t) + L·I.
The peak test runs first: a packet failing it is red and charges neither; one failing the
committed test is yellow and charges only the peak; otherwise green. A cell never configured
is green. Times are nanoseconds; the reference model takes them as an input. The XDP program
reads jiffies (one tick, 1-10 ms, of resolution: a bucket refills by a tick's worth of tokens
at once) and runs only the peak test, the one that can drop a packet.
"""

from __future__ import annotations

from dataclasses import dataclass

GREEN, YELLOW, RED = 0, 1, 2  # as v1model/bmv2 number them
NEVER = 1 << 62  # the increment of a rate of 0 or a burst of 0: nothing conforms


@dataclass(frozen=True)
class MeterConfig:
    """P4Runtime's MeterConfig: committed and peak rates (units/s) and bursts (units)."""

    cir: int
    cburst: int
    pir: int
    pburst: int


@dataclass(frozen=True)
class Gcra:
    """One rate as a GCRA test: ns per unit and the bucket depth in ns."""

    increment: int
    depth: int

    @classmethod
    def of(cls, rate: int, burst: int) -> Gcra:
        if rate <= 0 or burst <= 0:
            return cls(NEVER, 0)
        increment = max(1, 10**9 // rate)
        return cls(increment, min(burst * increment, NEVER))


def gcra_pair(config: MeterConfig) -> tuple[Gcra, Gcra]:
    """(peak, committed) of a configuration."""
    return Gcra.of(config.pir, config.pburst), Gcra.of(config.cir, config.cburst)


@dataclass
class MeterCell:
    """One meter cell's configuration and state, for the reference model."""

    config: MeterConfig | None = None
    peak_tat: int = 0
    committed_tat: int = 0

    def color(self, now_ns: int, units: int) -> int:
        if self.config is None:
            return GREEN
        peak, committed = gcra_pair(self.config)
        peak_tat = _conforming(self.peak_tat, now_ns, units, peak)
        if peak_tat is None:
            return RED
        self.peak_tat = peak_tat
        committed_tat = _conforming(self.committed_tat, now_ns, units, committed)
        if committed_tat is None:
            return YELLOW
        self.committed_tat = committed_tat
        return GREEN


def _conforming(tat: int, now: int, units: int, g: Gcra) -> int | None:
    """The new TAT if a packet of `units` conforms, else None."""
    cost = units * g.increment
    if cost > g.depth:
        return None
    start = max(tat, now)
    return start + cost if start + cost <= now + g.depth else None
