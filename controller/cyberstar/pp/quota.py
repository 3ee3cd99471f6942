"""Per-tenant quotas on a PP node's flow-table entries (`pp serve --flow-quota`).

A tenant at its quota gets RESOURCE_EXHAUSTED for a further INSERT, and the data plane drops
(and counts, as `flow_quota`) its flow-table misses instead of punting them: no rule could be
installed for them, and they must not load the slow path or take another tenant's room.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from cyberstar.errors import UsageError


class FlowQuota:
    """Limits by tenant (`default` for tenants without their own), and the entries each tenant
    holds. `on_full(tenant, full)` is told when a tenant reaches its quota or drops below it."""

    def __init__(self, default: int | None = None, tenants: dict[int, int] | None = None) -> None:
        self.default = default
        self.tenants = dict(tenants or {})
        self.held: Counter[int] = Counter()
        self._full: set[int] = set()
        self.on_full: Callable[[int, bool], None] = lambda _tenant, _full: None

    @property
    def limited(self) -> bool:
        """Whether any tenant has a limit."""
        return self.default is not None or bool(self.tenants)

    def limit(self, tenant: int) -> int | None:
        return self.tenants.get(tenant, self.default)

    def room(self, tenant: int, pending: int = 0) -> bool:
        """Whether `tenant` may hold one more entry beyond `pending` ones not yet counted."""
        limit = self.limit(tenant)
        return limit is None or self.held[tenant] + pending < limit

    def add(self, tenant: int, n: int = 1) -> None:
        self.held[tenant] += n
        self._publish(tenant)

    def remove(self, tenant: int, n: int = 1) -> None:
        self.held[tenant] -= n
        if self.held[tenant] <= 0:
            del self.held[tenant]
        self._publish(tenant)

    def clear(self) -> None:
        self.held.clear()
        for tenant in list(self._full):
            self._publish(tenant)

    def _publish(self, tenant: int) -> None:
        limit = self.limit(tenant)
        full = limit is not None and self.held[tenant] >= limit
        if full != (tenant in self._full):
            (self._full.add if full else self._full.discard)(tenant)
            self.on_full(tenant, full)


def parse_quotas(specs: list[str], max_tenant: int) -> FlowQuota:
    """`N` (every tenant) and `TENANT=N` (one tenant), as `--flow-quota` gives them."""
    default, tenants = None, {}
    for spec in specs:
        tenant, sep, count = spec.rpartition("=")
        try:
            n = int(count)
            t = int(tenant) if sep else None
        except ValueError:
            raise UsageError(
                f"--flow-quota {spec!r}: expected N (every tenant) or TENANT=N"
            ) from None
        if n < 0 or (t is not None and not 0 <= t <= max_tenant):
            raise UsageError(f"--flow-quota {spec!r}: N must be >= 0 and TENANT 0..{max_tenant}")
        if t is None:
            default = n
        else:
            tenants[t] = n
    return FlowQuota(default, tenants)
