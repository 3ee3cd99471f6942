"""The credit state machine (paper §7.2, Figure 6b), on a simulated clock.

One test per transition of Figure 6b, then properties over random load: a tenant's excess
over its base never exceeds the credit it earned under base (plus what it started with, its
debt allowance and one interval's overshoot), and a tenant alone on the node gets its burst.
The "data plane" here delivers min(arrival, the rate the policy set an interval before).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyberstar.pp.ratelimit import Measurement, RatePolicy, State, TenantPolicy

DT = 0.1


def node(*policies: TenantPolicy, capacity: float = 1000.0) -> RatePolicy:
    p = RatePolicy(capacity)
    for i, pol in enumerate(policies, start=1):
        p.add(i, pol)
    return p


def run(p: RatePolicy, arrivals: dict[int, float], steps: int = 1) -> None:
    """`steps` intervals of constant arrival rates; delivered is capped by the current rate."""
    for _ in range(steps):
        p.step(DT, {t: Measurement(a, min(a, p.tenants[t].rate)) for t, a in arrivals.items()})


def state(p: RatePolicy, t: int) -> State:
    return p.tenants[t].state


# ---- Figure 6b, transition by transition --------------------------------------------------


def test_base_to_burst_when_heavy_with_credit_and_not_without() -> None:
    p = node(TenantPolicy(500, 900), TenantPolicy(500, 900))
    run(p, {1: 800, 2: 500})
    assert state(p, 1) is State.BASE  # no credit yet
    p = node(TenantPolicy(500, 900, initial_credit=100), TenantPolicy(500, 900))
    run(p, {1: 800, 2: 0})
    assert state(p, 1) is State.BURST


def test_base_to_min_when_light_and_resources_abundant() -> None:
    p = node(TenantPolicy(500, 900), TenantPolicy(500, 900))
    run(p, {1: 100, 2: 0})  # tenant 2 idle: the node has tenant 1's base to spare
    assert state(p, 1) is State.MIN
    p = node(TenantPolicy(500, 900), TenantPolicy(500, 900))
    run(p, {1: 100, 2: 500})  # tenant 2 uses its base: nothing spare
    assert state(p, 1) is State.BASE


def test_min_to_burst_or_base_when_adequate_and_stays_when_intense() -> None:
    p = node(TenantPolicy(500, 900), TenantPolicy(500, 900))
    run(p, {1: 100, 2: 0}, steps=10)  # tenant 1 earns (500 - 100) * 1 s = 400 packets
    assert state(p, 1) is State.MIN and p.tenants[1].credit == pytest.approx(400)
    run(p, {1: 800, 2: 0})  # heavy, resources adequate (tenant 2 idle), credit: burst
    assert state(p, 1) is State.BURST
    p = node(TenantPolicy(500, 900), TenantPolicy(500, 900), capacity=1000)
    run(p, {1: 100, 2: 0})
    assert state(p, 1) is State.MIN and state(p, 2) is State.MIN
    run(p, {1: 100, 2: 500})  # tenant 2 back to its base: 400 left, under tenant 1's base
    assert state(p, 1) is State.BASE  # adequate, not abundant: Sbase
    p = node(TenantPolicy(500, 900), TenantPolicy(500, 900), capacity=1000)
    p.tenants[1].state = State.MIN
    run(p, {1: 800, 2: 500})  # tenant 2 at base: no free capacity for tenant 1
    assert state(p, 1) is State.MIN


def test_burst_ends_when_credit_runs_out() -> None:
    p = node(TenantPolicy(500, 900, initial_credit=80), TenantPolicy(500, 900))
    run(p, {1: 900, 2: 0})
    assert state(p, 1) is State.BURST and p.tenants[1].rate == 900
    run(p, {1: 900, 2: 0})  # delivered 900: spends 40 per interval
    assert p.tenants[1].credit == pytest.approx(40)
    run(p, {1: 900, 2: 0}, steps=2)
    assert p.tenants[1].credit <= 0 and state(p, 1) is State.MIN
    assert p.tenants[1].rate == 500  # back to its base


def test_burst_to_min_when_light_and_intense_else_to_base() -> None:
    p = node(TenantPolicy(500, 900, initial_credit=1000), TenantPolicy(500, 900))
    run(p, {1: 900, 2: 0})
    assert state(p, 1) is State.BURST
    run(p, {1: 460, 2: 500})  # light; 40 of 1000 left: intense
    assert state(p, 1) is State.MIN
    p = node(TenantPolicy(500, 900, initial_credit=1000), TenantPolicy(500, 900))
    run(p, {1: 900, 2: 0})
    run(p, {1: 100, 2: 0})  # light, resources free, credit left
    assert state(p, 1) is State.BASE


def test_burst_takes_only_what_the_others_leave() -> None:
    p = node(TenantPolicy(300, 900, initial_credit=1000), TenantPolicy(300, 900),
             TenantPolicy(300, 900), capacity=900)  # fmt: skip
    run(p, {1: 900, 2: 300, 3: 0})
    run(p, {1: 900, 2: 300, 3: 0})
    # tenant 3 idle (Smin, reserves 0), tenant 2 at base: 900 - 300 - 0 - 300 = 300 spare
    assert state(p, 1) is State.BURST and p.tenants[1].rate == pytest.approx(600)


def test_unlimited_runs_into_bounded_debt_and_pays_it_back() -> None:
    p = node(TenantPolicy(500, 900, unlimited=True, debt_limit=100), TenantPolicy(500, 900))
    run(p, {1: 900, 2: 0})  # no credit, but debt allowed
    assert state(p, 1) is State.BURST
    run(p, {1: 900, 2: 0}, steps=4)
    assert -140 <= p.tenants[1].credit <= -100 and state(p, 1) is State.MIN
    assert p.tenants[1].credit == pytest.approx(-120)
    run(p, {1: 0, 2: 0}, steps=3)  # under base: 50 per interval pays the debt first
    assert p.tenants[1].credit == pytest.approx(30)


def test_credit_is_capped() -> None:
    p = node(TenantPolicy(500, 900, credit_cap=300), TenantPolicy(500, 900))
    run(p, {1: 0, 2: 0}, steps=100)
    assert p.tenants[1].credit == pytest.approx(300)
    assert p.tenants[1].earned == pytest.approx(300)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="base <= burst"):
        TenantPolicy(500, 100)
    with pytest.raises(ValueError, match="unlimited"):
        TenantPolicy(500, 900, debt_limit=10)


# ---- properties over random load ----------------------------------------------------------

LOADS = st.lists(st.sampled_from([0.0, 100.0, 300.0, 500.0, 700.0, 1000.0, 2000.0]),
                 min_size=1, max_size=60)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(a=LOADS, b=LOADS, unlimited=st.booleans())
def test_excess_over_base_never_exceeds_earned_credit(a, b, unlimited) -> None:
    debt = 50.0 if unlimited else 0.0
    p = node(TenantPolicy(500, 900, unlimited=unlimited, debt_limit=debt),
             TenantPolicy(500, 900), capacity=1000)  # fmt: skip
    excess = {1: 0.0, 2: 0.0}
    for i in range(max(len(a), len(b))):
        arrivals = {1: a[i % len(a)], 2: b[i % len(b)]}
        rates = {t: p.tenants[t].rate for t in (1, 2)}
        for t in (1, 2):
            excess[t] += max(0.0, min(arrivals[t], rates[t]) - 500) * DT
        run(p, arrivals)
    for t in (1, 2):
        s = p.tenants[t]
        overshoot = (s.policy.burst - s.policy.base) * DT  # one interval past the last credit
        assert excess[t] <= s.earned + s.policy.debt_limit + overshoot + 1e-6
        assert s.spent == pytest.approx(excess[t])  # the policy's own books agree


@settings(max_examples=100, deadline=None)
@given(earn=st.integers(5, 40), burst_len=st.integers(1, 30))
def test_a_tenant_alone_gets_its_burst_while_credit_lasts(earn, burst_len) -> None:
    p = node(TenantPolicy(300, 800), TenantPolicy(300, 800), TenantPolicy(300, 800),
             capacity=900)  # fmt: skip
    run(p, {1: 100, 2: 0, 3: 0}, steps=earn)  # tenant 1 earns 20 per interval
    for _ in range(burst_len):
        before = p.tenants[1].credit
        run(p, {1: 2000, 2: 0, 3: 0})
        if before > 0 and p.tenants[1].state is State.BURST:
            assert p.tenants[1].rate == 800  # the others idle: its burst rate
    assert p.tenants[1].rate >= 300  # never under its base


def test_fair_bases_share_the_capacity_equally() -> None:
    p = RatePolicy.fair(900.0, {1: 600.0, 2: 100.0, 3: 900.0})
    assert [s.policy.base for s in p.tenants.values()] == [300.0, 300.0, 300.0]
    assert [s.policy.burst for s in p.tenants.values()] == [600.0, 300.0, 900.0]  # >= base
    assert all(s.state is State.BASE and s.rate == 300.0 for s in p.tenants.values())


def test_rate_policy_file(tmp_path) -> None:
    from cyberstar.pp.ratemanager import load_rate_policy
    from cyberstar.yamlconf import ConfigError

    good = tmp_path / "rates.yaml"
    good.write_text(
        "capacity: 900\ntenants:\n  - id: 7\n    burst: 600\n"
        "  - id: 8\n    base: 100\n    unlimited: true\n    debt_limit: 50\n"
    )
    loaded = load_rate_policy(good)
    assert loaded.interval == 0.1
    t7, t8 = loaded.policy.tenants[7].policy, loaded.policy.tenants[8].policy
    assert (t7.base, t7.burst, t7.unlimited) == (450, 600, False)  # base: capacity / 2
    assert (t8.base, t8.burst, t8.debt_limit) == (100, 100, 50)
    bad = tmp_path / "bad.yaml"
    bad.write_text("capacity: 900\ntenants:\n  - id: 7\n    burst: 600\n    bursst: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: .*bursst"):
        load_rate_policy(bad)
    bad.write_text("capacity: 900\ntenants:\n  - id: 7\n    base: 500\n    burst: 100\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: tenants\[0\]: need 0 < base <= burst"):
        load_rate_policy(bad)
