"""The autoscaling policy: scale PP groups and SC groups on the load their own metrics report.

Every `interval_s` the policy computes, from the samples the scraper took:

* per PP group: packets per second per member, summed over the members'
  `cyberstar_pp_packets_total` (every verdict) and divided by the member count;
* per tenant with an SC policy: rule requests per second per running SC group, from the SC
  nodes' `cyberstar_sc_requests_total` (heads count the requests they receive).

A load above `out_above` for `sustain_s` in a row scales out by one (a spare PP node; the next
SC group that is off, taking half of the tenant's largest shard); below `in_below` for
`sustain_s` scales in by one (the PP node that joined last, drained for `drain_s`; the last
shard moved out, merged back). The gap between the two thresholds and the sustain time are
the hysteresis; after any action the policy waits `cooldown_s` before judging that group again
(a new member needs time before its share of the load shows). Rates are taken over a window of
`sustain_s`, so a single scrape does not decide.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from cyberstar.lab.operator import Operator
from cyberstar.lab.scenario import AutoscaleSpec, PpPolicy, ScPolicy
from cyberstar.lab.telemetry import Series

log = logging.getLogger(__name__)


class Hysteresis:
    """Decides when to scale from a stream of (time, load) readings: "out" once the load has
    stayed above `out_above` for `sustain_s`, "in" once below `in_below` for `sustain_s`,
    nothing within `cooldown_s` of the last decision; a decision restarts both clocks."""

    def __init__(
        self, out_above: float, in_below: float, sustain_s: float, cooldown_s: float
    ) -> None:
        if in_below >= out_above:
            raise ValueError("in_below must be below out_above")
        self.out_above, self.in_below = out_above, in_below
        self.sustain_s, self.cooldown_s = sustain_s, cooldown_s
        self._high_since: float | None = None
        self._low_since: float | None = None
        self._last = -math.inf

    def decide(self, now: float, load: float) -> str | None:
        if load > self.out_above:
            self._high_since = now if self._high_since is None else self._high_since
        else:
            self._high_since = None
        if load < self.in_below:
            self._low_since = now if self._low_since is None else self._low_since
        else:
            self._low_since = None
        if now - self._last < self.cooldown_s:
            return None
        for since, direction in ((self._high_since, "out"), (self._low_since, "in")):
            if since is not None and now - since >= self.sustain_s:
                return direction
        return None

    def acted(self, now: float) -> None:
        self._last = now
        self._high_since = self._low_since = None


class Autoscaler:
    def __init__(
        self, spec: AutoscaleSpec, operator: Operator, series: Series, clock: Callable[[], float]
    ) -> None:
        self.spec = spec
        self.operator = operator
        self.series = series
        self.clock = clock
        self.decisions: list[dict] = []  # what the policy saw each time it acted
        self._trends: dict[str, Hysteresis] = {}
        self._busy: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="autoscaler")
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for w in self._workers:
            w.join(60)

    def _run(self) -> None:
        while not self._stop.wait(self.spec.interval_s):
            now = self.clock()
            for p in self.spec.pp:
                self._judge(f"pp:{p.group}", now, self.pp_load(p, now), p, self._pp_action)
            for s in self.spec.sc:
                self._judge(f"sc:{s.tenant}", now, self.sc_load(s, now), s, self._sc_action)

    def pp_load(self, policy: PpPolicy, now: float) -> float:
        members = self.operator.net.groups[policy.group].active
        if not members:
            return 0.0
        total = sum(
            self.series.rate("cyberstar_pp_packets_total", pp.name, policy.sustain_s, now)
            for pp in members
        )
        return total / len(members)

    def sc_load(self, policy: ScPolicy, now: float) -> float:
        running = {n.scg for nodes in self.operator.net.scgs.values() for n in nodes if n.running}
        if not running:
            return 0.0
        total = sum(
            self.series.rate("cyberstar_sc_requests_total", n.name, policy.sustain_s, now)
            for nodes in self.operator.net.scgs.values()
            for n in nodes
            if n.running
        )
        return total / len(running)

    def _judge(
        self,
        key: str,
        now: float,
        load: float,
        policy: PpPolicy | ScPolicy,
        action: Callable[[str, PpPolicy | ScPolicy, float], None],
    ) -> None:
        trend = self._trends.get(key)
        if trend is None:
            trend = self._trends[key] = Hysteresis(
                policy.out_above, policy.in_below, policy.sustain_s, policy.cooldown_s
            )
        direction = trend.decide(now, load)
        if direction is None or key in self._busy or not self._allowed(policy, direction):
            return
        trend.acted(now)
        self.decisions.append(
            {"t": round(now, 3), "target": key, "direction": direction, "load": round(load, 1)}
        )
        log.warning("autoscale %s %s at load %.0f", key, direction, load)
        self._busy.add(key)

        def work() -> None:
            try:
                action(direction, policy, load)
            finally:
                self._busy.discard(key)

        worker = threading.Thread(target=work, daemon=True, name=f"autoscale-{key}")
        worker.start()
        self._workers.append(worker)

    def _allowed(self, policy: PpPolicy | ScPolicy, direction: str) -> bool:
        net = self.operator.net
        if isinstance(policy, PpPolicy):
            group = net.groups[policy.group]
            n = len(group.active)
            if direction == "out":
                return n < policy.max_nodes and group.spare() is not None
            return n > policy.min_nodes
        tid = net.tenants[policy.tenant].tenant_id
        owners = self._owners(tid)
        if direction == "out":
            return self._next_scg(owners) is not None
        return len(owners) > 1

    def _owners(self, tenant_id: int) -> list[str]:
        try:
            shards = self.operator.net.fm_status()["shards"]
        except Exception:
            return []
        return sorted({g for s, g in shards.items() if s.split(":")[0] == str(tenant_id)})

    def _next_scg(self, owners: list[str]) -> str | None:
        return next(
            (
                g
                for g, nodes in self.operator.net.scgs.items()
                if g not in owners and not nodes[0].running
            ),
            None,
        )

    def _pp_action(self, direction: str, policy: PpPolicy | ScPolicy, load: float) -> None:
        assert isinstance(policy, PpPolicy)
        reason = f"autoscale: {load:.0f} packets/s per node"
        if direction == "out":
            self.operator.pp_scale_out(policy.group, reason=reason)
        else:
            self.operator.pp_scale_in(policy.group, drain_s=policy.drain_s, reason=reason)

    def _sc_action(self, direction: str, policy: PpPolicy | ScPolicy, load: float) -> None:
        assert isinstance(policy, ScPolicy)
        reason = f"autoscale: {load:.0f} requests/s per SC group"
        tid = self.operator.net.tenants[policy.tenant].tenant_id
        owners = self._owners(tid)
        if direction == "out":
            target = self._next_scg(owners)
            if target is not None:
                self.operator.sc_scale_out(policy.tenant, target, reason=reason)
        else:
            home = next(iter(self.operator.net.scgs))
            self.operator.sc_scale_in(policy.tenant, home, reason=reason)
