"""The credit policy (`cyberstar.pp.ratelimit`) run on an XDP program's counters and meter.

Every interval: each tenant's arrival and delivered rates from the data plane's counters
(`arrivals` and `drops` of the meter: tenant_packets, tenant_rate_drops), one policy step,
and the new rates written into the meter's cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cyberstar.pipeline.model import IndexedMeter
from cyberstar.pp.ratelimit import Measurement, RatePolicy, meter_config
from cyberstar.xdp.program import XdpProgram


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
