"""The Azure families: `azure-heavy` is `azure` (same tenants, arrivals, lifetimes, loads) with
every request's demand ten times as large before the cap (docs/orchestration.md)."""

from __future__ import annotations

import pytest
from orch_cases import azure_available

from cyberstar.orchestrator.cli import generate_family

pytestmark = pytest.mark.skipif(
    not azure_available(), reason="Azure trace not found (set AZURE_TRACE_DIR)"
)


def test_heavy_is_the_same_trace_at_ten_times_the_demand():
    base, heavy = generate_family("azure", 3), generate_family("azure-heavy", 3)
    assert heavy.meta["family"] == "azure-heavy" and heavy.meta["demand_scale"] == 10.0
    assert base.meta["demand_scale"] == 1.0
    assert [(r.id, r.tenant, r.nf) for r in base.requests] == [
        (r.id, r.tenant, r.nf) for r in heavy.requests
    ]
    assert base.dynamic.lifetimes == heavy.dynamic.lifetimes
    assert base.machines == heavy.machines
    scaled = 0
    for b, h in zip(base.requests, heavy.requests, strict=True):
        # NAT: bandwidth is 80 Mbit/s per vCPU times the request's noise; LB: memory is 0.12 GB
        # per VM GB times it. The cap only lowers a demand.
        drawn, heavier = (b.bandwidth, h.bandwidth) if b.nf == "nat" else (b.memory, h.memory)
        if heavier == pytest.approx(10 * drawn, rel=2e-3, abs=5e-3):
            scaled += 1
        else:
            assert heavier < 10 * drawn, (b, h)
    # The cap lowers at most a tenth of them (35 to 45 of 600 on seeds 0 to 2).
    assert scaled >= 0.9 * len(base.requests)
