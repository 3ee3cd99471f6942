"""The credit policy (`cyberstar.pp.ratelimit`) run on an XDP program's counters and meter.

Every interval: each tenant's arrival and delivered rates from the data plane's counters
(`arrivals` and `drops` of the meter: tenant_packets, tenant_rate_drops), one policy step,
and the new rates written into the meter's cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cyberstar.pipeline.model import IndexedMeter
from cyberstar.pp.ratelimit import Measurement, RatePolicy, TenantPolicy, meter_config
from cyberstar.xdp.program import XdpProgram
from cyberstar.yamlconf import load_yaml, read_text


@dataclass
class RateManager:
    prog: XdpProgram
    policy: RatePolicy
    meter: IndexedMeter
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._last = self.clock()
        self._counts = {t: self._read(t) for t in self.policy.tenants}
        for t, s in self.policy.tenants.items():
            self.prog.set_meter(self.meter.name, t, meter_config(s.rate))

    def _read(self, tenant: int) -> tuple[int, int]:
        arrived = self.prog.counter_cell(self.meter.arrivals, tenant)[0]
        return arrived, self.prog.counter_cell(self.meter.drops, tenant)[0]

    def tick(self) -> dict[int, Measurement]:
        """Measure since the last tick, step the policy, write the rates; the measurements."""
        now = self.clock()
        dt, self._last = max(now - self._last, 1e-9), now
        measured = {}
        for t in self.policy.tenants:
            arrived, dropped = self._read(t)
            a, d = arrived - self._counts[t][0], dropped - self._counts[t][1]
            self._counts[t] = (arrived, dropped)
            measured[t] = Measurement(a / dt, (a - d) / dt)
        for t, rate in self.policy.step(dt, measured).items():
            self.prog.set_meter(self.meter.name, t, meter_config(rate))
        return measured


@dataclass(frozen=True)
class RatePolicyFile:
    """`pp serve --rate-policy FILE`: the node's capacity, the interval, the tenants."""

    policy: RatePolicy
    interval: float


def load_rate_policy(path: Path) -> RatePolicyFile:
    """A YAML file:

        capacity: 1000000     # packets/s the node processes
        interval: 0.1         # seconds between policy steps (default 0.1)
        tenants:
          - id: 7
            burst: 900000     # packets/s it may reach on idle capacity
            base: 300000      # default: capacity / number of tenants
            credit_cap: 0     # packets (default: a minute of base)
            unlimited: false  # may go into debt
            debt_limit: 0     # packets, unlimited only

    Errors name the file, the line and the key."""
    top = load_yaml(read_text(path), str(path))
    capacity = top.number("capacity", lo=1.0)
    interval = top.number("interval", 0.1, lo=0.01)
    tenants = top.sections("tenants")
    top.done()
    if not tenants:
        raise top.error("tenants", "list at least one tenant")
    policy = RatePolicy(capacity)
    for i, sec in enumerate(tenants):
        tenant = sec.int("id", hi=(1 << 16) - 1)
        if tenant in policy.tenants:
            raise top.item_error("tenants", i, f"tenant {tenant} given twice")
        base = sec.number("base", capacity / len(tenants), lo=1.0)
        unlimited = sec.raw("unlimited", False)
        if not isinstance(unlimited, bool):
            raise sec.error("unlimited", f"expected true or false, found {unlimited!r}")
        values = (sec.number("burst", base), sec.number("credit_cap", 0.0) or None, unlimited,
                  sec.number("debt_limit", 0.0))  # fmt: skip
        sec.done()
        try:
            params = TenantPolicy(base, *values)
        except ValueError as exc:
            raise top.item_error("tenants", i, str(exc)) from None
        policy.add(tenant, params)
    return RatePolicyFile(policy, interval)
