"""Per-tenant credit-based rate management (paper §7.2, Figure 6): the policy, without I/O.

Every interval the agent measures each tenant's arrival rate `a` and delivered rate `d`
(packets/s, from the data plane's `tenant_packets` and `tenant_rate_drops` counters), calls
`RatePolicy.step`, and writes the rates it returns to the `tenant_rate` meter. Rates are in
packets per second, credits in packets.

Accounting (as burstable instances account CPU credits):
* A tenant earns credit at its base rate and spends it at its delivered rate: each interval
  of `dt` seconds adds `(base - d) * dt` — positive while it runs under its base, negative
  above it. The balance is capped at `credit_cap` (default: `CREDIT_CAP_SECONDS` of base).
* Standard mode: a tenant bursts only while its balance is positive. Unlimited mode: the
  balance may fall to `-debt_limit`, a debt that later running under base pays back first.
* The node's remaining resource R is its capacity minus every tenant's delivered rate over the
  last interval, each counted up to its base (what a bursting tenant borrows beyond its base
  stays available to the tenants lending it). "intense": R < `INTENSE` of the capacity;
  "adequate": not intense; "abundant" (for tenant i): R ≥ base_i.
* Spare capacity for bursting: the capacity minus what the tenants not bursting reserve (a
  tenant in Smin its use, up to its base: it lends the rest; one in Sbase its base) minus the
  bursting tenants' bases, shared equally among the bursting tenants (borrowing up to a
  ceiling, as HTB does).

States and the rate each sets (Figure 6b, transitions checked every interval, in this order):
* Sbase (the start): rate = base. Heavy (a > base) with credit → Sburst; light (a ≤ base) and
  resources abundant → Smin.
* Smin: rate = base (the tenant is never held under its base; its unused share counts as free
  for the others). Resources adequate: heavy with credit → Sburst, light but not abundant →
  Sbase. Resources intense: stays.
* Sburst: rate = min(burst, base + its share of the spare capacity). Credit exhausted (≤ 0,
  or ≤ -debt_limit in unlimited mode) → Smin; light → Smin if resources are intense, else
  Sbase.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from cyberstar.pipeline.meters import MeterConfig

CREDIT_CAP_SECONDS = 60.0  # default balance cap: a minute of base rate
METER_BURST_SECONDS = 0.05  # a meter bucket holds 50 ms at the rate: clock ticks, batching
INTENSE = 0.05  # resources are intense when less than this share of the capacity is unused


class State(enum.Enum):
    MIN = "Smin"
    BASE = "Sbase"
    BURST = "Sburst"


@dataclass(frozen=True)
class TenantPolicy:
    """A tenant's parameters: base (its fair or subscribed rate), burst (the highest rate it
    may reach on idle capacity), the credit cap, and the debt an unlimited tenant may run."""

    base: float
    burst: float
    credit_cap: float | None = None
    unlimited: bool = False
    debt_limit: float = 0.0
    initial_credit: float = 0.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.burst < self.base:
            raise ValueError(f"need 0 < base <= burst, found base {self.base}, burst {self.burst}")
        if self.debt_limit < 0 or (self.debt_limit and not self.unlimited):
            raise ValueError("a debt limit (>= 0) needs unlimited mode")

    @property
    def cap(self) -> float:
        return self.credit_cap if self.credit_cap is not None else self.base * CREDIT_CAP_SECONDS

    @property
    def floor(self) -> float:
        """The lowest balance: 0, or minus the debt limit in unlimited mode."""
        return -self.debt_limit if self.unlimited else 0.0


@dataclass
class TenantState:
    policy: TenantPolicy
    state: State = State.BASE
    credit: float = 0.0
    rate: float = 0.0  # what the meter is set to
    arrival: float = 0.0  # last measured
    delivered: float = 0.0
    earned: float = 0.0  # totals, for accounting and tests
    spent: float = 0.0


@dataclass(frozen=True)
class Measurement:
    """One tenant's rates over the last interval, packets/s."""

    arrival: float
    delivered: float


@dataclass
class RatePolicy:
    """The state machine for one PP node's tenants."""

    capacity: float  # packets/s the node processes
    tenants: dict[int, TenantState] = field(default_factory=dict)

    @classmethod
    def fair(cls, capacity: float, bursts: dict[int, float]) -> RatePolicy:
        """Every tenant's base is the capacity shared equally (the paper's equal weights)."""
        base = capacity / max(1, len(bursts))
        return cls(capacity, {t: _new(TenantPolicy(base, max(b, base))) for t, b in bursts.items()})

    def add(self, tenant: int, policy: TenantPolicy) -> None:
        self.tenants[tenant] = _new(policy)

    def step(self, dt: float, measured: dict[int, Measurement]) -> dict[int, float]:
        """Account the last `dt` seconds, move each tenant's state, and return every tenant's
        new rate."""
        for t, s in self.tenants.items():
            m = measured.get(t, Measurement(0.0, 0.0))
            s.arrival, s.delivered = m.arrival, m.delivered
            change = (s.policy.base - m.delivered) * dt
            credit = min(s.policy.cap, s.credit + change)
            if change > 0:
                s.earned += max(0.0, credit - s.credit)
            else:
                s.spent -= change
            s.credit = credit
        remaining = self.capacity - sum(
            min(s.delivered, s.policy.base) for s in self.tenants.values()
        )
        for s in self.tenants.values():
            s.state = _next(s, remaining, remaining < INTENSE * self.capacity)
        bursting = [s for s in self.tenants.values() if s.state is State.BURST]
        reserved = sum(_reserve(s) for s in self.tenants.values() if s.state is not State.BURST)
        spare = self.capacity - reserved - sum(s.policy.base for s in bursting)
        share = max(spare, 0.0) / max(1, len(bursting))
        for s in self.tenants.values():
            burst = s.state is State.BURST
            s.rate = min(s.policy.burst, s.policy.base + share) if burst else s.policy.base
        return {t: s.rate for t, s in self.tenants.items()}


def meter_config(rate: float) -> MeterConfig:
    """The tenant_rate cell that enforces `rate`: one rate (cir = pir), a bucket of
    METER_BURST_SECONDS at that rate."""
    burst = max(1, math.ceil(rate * METER_BURST_SECONDS))
    return MeterConfig(cir=round(rate), cburst=burst, pir=round(rate), pburst=burst)


def _new(policy: TenantPolicy) -> TenantState:
    return TenantState(policy, credit=policy.initial_credit, rate=policy.base)


def _reserve(s: TenantState) -> float:
    return min(s.arrival, s.policy.base) if s.state is State.MIN else s.policy.base


def _next(s: TenantState, remaining: float, intense: bool) -> State:
    p = s.policy
    heavy = s.arrival > p.base
    has_credit = s.credit > p.floor
    abundant = remaining >= p.base
    if s.state is State.BASE:
        if heavy and has_credit:
            return State.BURST
        if not heavy and abundant:
            return State.MIN
        return State.BASE
    if s.state is State.MIN:
        if intense:
            return State.MIN
        if heavy and has_credit:
            return State.BURST
        if not heavy and not abundant:
            return State.BASE
        return State.MIN
    # Sburst
    if not has_credit:
        return State.MIN
    if not heavy:
        return State.MIN if intense else State.BASE
    return State.BURST
