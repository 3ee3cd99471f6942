"""Independent placement checker: every constraint of Eq. (2)-(6) and the cost of Eq. (1).

Deliberately shares no code with the algorithms (no cluster state, no sharding index): the
overlap rule is checked pairwise, by counting for every pair of requests the machines they share.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from cyberstar.orchestrator.model import RESOURCES, Instance, Placement

# Relative slack for floating-point sums of split demands.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Violation:
    kind: str  # unknown-request, unknown-machine, duplicate, missing, group-size, capacity,
    # overlap, cost
    message: str


@dataclass
class CheckReport:
    cost: float
    placed: int
    rejected: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "cost": self.cost,
            "placed": self.placed,
            "rejected": self.rejected,
            "violations": [{"kind": v.kind, "message": v.message} for v in self.violations],
        }


def check_placement(
    instance: Instance, placement: Placement, max_reported: int = 50
) -> CheckReport:
    machines = {m.id: m for m in instance.machines}
    requests = {r.id: r for r in instance.requests}
    found: list[Violation] = []

    def add(kind: str, message: str) -> None:
        found.append(Violation(kind, message))

    for rid in placement.rejected:
        if rid not in requests:
            add("unknown-request", f"rejected request {rid!r} is not in the instance")
        elif rid in placement.assignments:
            add("duplicate", f"request {rid!r} is both assigned and rejected")
    for rid, count in Counter(placement.rejected).items():
        if count > 1:
            add("duplicate", f"request {rid!r} is rejected {count} times")
    covered = set(placement.assignments) | set(placement.rejected)
    for rid in requests:
        if rid not in covered:
            add("missing", f"request {rid!r} is neither assigned nor rejected")

    load: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    on_machine: dict[str, list[str]] = defaultdict(list)
    for rid, mids in placement.assignments.items():
        request = requests.get(rid)
        if request is None:
            add("unknown-request", f"assigned request {rid!r} is not in the instance")
            continue
        if len(set(mids)) != len(mids):
            add("duplicate", f"request {rid!r} lists a machine twice: {mids}")
        bad = [m for m in mids if m not in machines]
        for mid in bad:
            add("unknown-machine", f"request {rid!r} is assigned to unknown machine {mid!r}")
        group = sorted(set(mids) - set(bad))
        g = len(set(mids))
        if not instance.gmin <= g <= instance.gmax:
            add(
                "group-size",
                f"request {rid!r} is on {g} machines, outside [gmin={instance.gmin}, "
                f"gmax={instance.gmax}]",
            )
        if g == 0:
            continue
        for mid in group:
            for k, amount in enumerate(request.demand):
                load[mid][k] += amount / g
            on_machine[mid].append(rid)

    for mid, used in load.items():
        machine = machines[mid]
        for k, name in enumerate(RESOURCES):
            limit = instance.threshold * machine.capacity[k]
            if used[k] > limit * (1 + TOLERANCE) + TOLERANCE:
                add(
                    "capacity",
                    f"machine {mid!r} {name} {used[k]:.6g} exceeds threshold*capacity {limit:.6g}",
                )

    # Pairwise overlap, counted machine by machine: cost is sum over machines of (hosted choose 2).
    shared: Counter[tuple[str, str]] = Counter()
    for rids in on_machine.values():
        shared.update(combinations(sorted(rids), 2))
    for (a, b), count in sorted(shared.items()):
        if count > instance.max_overlap:
            add(
                "overlap",
                f"requests {a!r} and {b!r} share {count} machines, more than max_overlap="
                f"{instance.max_overlap}",
            )

    cost = float(sum(machines[mid].price for mid in on_machine))
    if abs(cost - placement.cost) > 1e-6 * max(1.0, cost):
        add("cost", f"stated cost {placement.cost:.6g} differs from the recomputed cost {cost:.6g}")

    report = CheckReport(
        cost=cost,
        placed=sum(1 for rid in placement.assignments if rid in requests),
        rejected=len(set(placement.rejected)),
    )
    report.violations = found[:max_reported]
    if len(found) > max_reported:
        report.violations.append(
            Violation("truncated", f"{len(found) - max_reported} more violations not shown")
        )
    return report
