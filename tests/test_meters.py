"""The per-tenant meter (tenant_rate): exact in the reference model, where time is an input,
and as delivered packets over measured intervals in the XDP program, where it is the kernel's.

Expected counts are hand computations from the token-bucket definition: a bucket of B packets
filled at R packets/s passes B packets at once, then one every 1/R s.
"""

from __future__ import annotations

import time

import pytest

from cyberstar import packets
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.meters import MeterConfig
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.ref.model import RefModel

MS = 1_000_000
TENANT = 7
RULES = [
    build_entry(PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0,
                "dst_addr": "10.0.0.0/8"}, "set_tenant", {"tenant_id": TENANT}),
    build_entry(PIPELINE, "flow_table", {"tenant_id": TENANT, "src_addr": "192.168.1.2",
                "dst_addr": "10.0.0.5", "protocol": 6, "src_port": 40000, "dst_port": 80},
                "forward", {"nexthop_id": 2}),
    build_entry(PIPELINE, "next_hop", {"nexthop_id": 2}, "set_next_hop",
                {"port": 2, "smac": "02:00:00:00:00:01", "dmac": "02:00:00:00:00:02"}),
]  # fmt: skip
FRAME = packets.tcp_frame(
    "02:00:00:00:00:0a", "02:00:00:00:00:01", "192.168.1.2", "10.0.0.5", 40000, 80, b"x" * 6
)


def one_rate(rate: int, burst: int) -> MeterConfig:
    return MeterConfig(cir=rate, cburst=burst, pir=rate, pburst=burst)


def model(config: MeterConfig | None) -> RefModel:
    m = RefModel()
    m.install(RULES)
    if config is not None:
        m.set_meter("tenant_rate", TENANT, config)
    return m


def verdicts(m: RefModel, times_ns: list[int]) -> list[str]:
    return [m.process(FRAME, 1, now_ns=t).verdict for t in times_ns]


def test_unconfigured_tenant_is_not_limited() -> None:
    m = model(None)
    assert verdicts(m, [0] * 1000) == ["forward"] * 1000
    assert m.counters["tenant_packets"][TENANT] == [1000, 1000 * len(FRAME)]


def test_a_burst_passes_then_one_packet_per_interval() -> None:
    m = model(one_rate(rate=1000, burst=5))  # one packet per ms after a burst of 5
    assert verdicts(m, [10 * MS] * 8) == ["forward"] * 5 + ["drop"] * 3
    assert verdicts(m, [10 * MS + 999_999]) == ["drop"]  # the next token is due at 11 ms
    assert verdicts(m, [11 * MS, 11 * MS]) == ["forward", "drop"]
    assert verdicts(m, [13 * MS, 13 * MS, 13 * MS]) == ["forward", "forward", "drop"]
    # idle long enough, the bucket is full again, and no fuller
    assert verdicts(m, [100 * MS] * 7) == ["forward"] * 5 + ["drop"] * 2
    drops = m.counters["tenant_rate_drops"][TENANT][0]
    assert drops == 3 + 1 + 1 + 1 + 2
    reason = PIPELINE.drop_reason("rate_limited")
    assert m.counters["drop_reasons"][reason][0] == drops


def test_yellow_is_not_dropped_and_charges_only_the_peak() -> None:
    # committed 1 packet at once, peak 3: packets 2 and 3 are yellow and pass
    m = model(MeterConfig(cir=1000, cburst=1, pir=1000, pburst=3))
    assert verdicts(m, [5 * MS] * 4) == ["forward", "forward", "forward", "drop"]


@pytest.mark.parametrize("rate, burst", [(0, 10), (1000, 0)])
def test_a_rate_or_burst_of_zero_drops_everything(rate: int, burst: int) -> None:
    m = model(one_rate(rate, burst))
    assert verdicts(m, [MS * i for i in range(1, 50)]) == ["drop"] * 49


def test_another_tenant_is_not_affected() -> None:
    m = model(one_rate(rate=1000, burst=1))
    m.install([build_entry(PIPELINE, "tenant_classify",
                           {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.5/32"},
                           "set_tenant", {"tenant_id": 8})])  # fmt: skip
    assert verdicts(m, [MS] * 3) == ["punt"] * 3  # tenant 8 has no flow entry: a miss
    assert m.counters["tenant_packets"][8][0] == 3


# ---- the XDP program: the kernel's clock, so counts over measured time, with tolerances ----


@pytest.mark.root
def test_xdp_meter_passes_the_burst_then_the_rate(xdp_target) -> None:
    prog = xdp_target.prog
    prog.clear()
    xdp_target.install(RULES)
    prog.set_ingress_port(1, 1)  # test runs arrive on the loopback
    xdp_target._ingress = 1
    prog.set_meter("tenant_rate", TENANT, one_rate(rate=2000, burst=50))
    try:
        # 200 000 packets in one test run take a few ms: about the burst and rate x elapsed
        before = prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0]
        start = time.monotonic()
        prog.run(FRAME, repeat=200_000)
        elapsed = time.monotonic() - start
        passed = prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0] - before
        tick = 0.01  # the XDP meter's clock ticks (jiffies): at most 10 ms
        assert 50 <= passed <= 50 + 2000 * (elapsed + tick) + 2
        dropped = prog.counter_cell("tenant_rate_drops", TENANT)[0]
        assert passed + dropped == 200_000
        # then a steady 0.5 s: about rate x time pass (a test run per packet, ~5x the rate)
        before = prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0]
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 0.5:
            prog.run(FRAME)
            sent += 1
        elapsed = time.monotonic() - start
        passed = prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0] - before
        assert sent > 2 * 2000 * elapsed, "the sender was too slow to test the rate"
        assert 0.9 * 2000 * elapsed <= passed <= 2000 * (elapsed + tick) + 50 + 2
    finally:
        prog.set_meter("tenant_rate", TENANT, None)
    # unconfigured again: no limit
    before = prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0]
    prog.run(FRAME, repeat=1000)
    assert prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0] - before == 1000


# ---- P4Runtime MeterEntry on the XDP node (the device behind `pp serve`) ------------------


@pytest.mark.root
def test_meter_entries_over_p4runtime_configure_the_cells(xdp_target) -> None:
    from finsy.proto import p4r
    from grpc import StatusCode

    from cyberstar.pp.device import XdpDevice

    prog = xdp_target.prog
    prog.clear()
    device = XdpDevice(prog, [])
    meter = PIPELINE.meters[0]

    def update(kind, index: int | None, config: p4r.MeterConfig | None = None) -> p4r.Update:
        me = p4r.MeterEntry(meter_id=meter.id)
        if index is not None:
            me.index.index = index
        if config is not None:
            me.config.CopyFrom(config)
        return p4r.Update(type=kind, entity=p4r.Entity(meter_entry=me))

    cfg = p4r.MeterConfig(cir=2000, cburst=50, pir=2000, pburst=50)
    assert device.write([update(p4r.Update.MODIFY, TENANT, cfg)]) == [None]

    def read_cell() -> p4r.Entity:
        request = p4r.MeterEntry(meter_id=meter.id, index=p4r.Index(index=TENANT))
        chunks = device.read(p4r.Entity(meter_entry=request))  # serialized ReadResponses
        (entity,) = [e for c in chunks for e in p4r.ReadResponse.FromString(c).entities]
        return entity

    assert read_cell().meter_entry.config == cfg
    # the data plane now limits tenant 7 (the burst, then the rate)
    xdp_target.install(RULES)
    prog.set_ingress_port(1, 1)
    xdp_target._ingress = 1
    before = prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0]
    prog.run(FRAME, repeat=10_000)
    assert prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0] - before < 200
    errors = device.write([
        update(p4r.Update.INSERT, TENANT, cfg),
        update(p4r.Update.MODIFY, meter.size, cfg),
        update(p4r.Update.MODIFY, None, cfg),
        update(p4r.Update.MODIFY, 1, p4r.MeterConfig(cir=10, cburst=1, pir=5, pburst=1)),
    ])  # fmt: skip
    assert [e.code for e in errors] == [
        StatusCode.INVALID_ARGUMENT, StatusCode.OUT_OF_RANGE, StatusCode.INVALID_ARGUMENT,
        StatusCode.INVALID_ARGUMENT,
    ]  # fmt: skip
    # a MODIFY without config resets the cell: no limit
    assert device.write([update(p4r.Update.MODIFY, TENANT)]) == [None]
    assert not read_cell().meter_entry.HasField("config")
    before = prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0]
    prog.run(FRAME, repeat=10_000)
    assert prog.counter_cell("verdicts", PIPELINE.verdict("forward"))[0] - before == 10_000


@pytest.mark.root
def test_rate_manager_reads_the_counters_and_sets_the_meter(xdp_target) -> None:
    """The policy loop on the program: measured rates come from tenant_packets and
    tenant_rate_drops, the rates it decides land in tenant_rate (read back as written)."""
    from cyberstar.codegen.xdp_layout import METER_CONFIG
    from cyberstar.pipeline.meters import gcra_pair
    from cyberstar.pp.ratelimit import RatePolicy, State, TenantPolicy, meter_config
    from cyberstar.pp.ratemanager import RateManager

    prog = xdp_target.prog
    prog.clear()
    xdp_target.install(RULES)
    prog.set_ingress_port(1, 1)
    xdp_target._ingress = 1
    now = [100.0]
    policy = RatePolicy(4000.0)
    policy.add(TENANT, TenantPolicy(1000.0, 3000.0, initial_credit=10_000))
    policy.add(8, TenantPolicy(1000.0, 3000.0))
    manager = RateManager(prog, policy, PIPELINE.meters[0], clock=lambda: now[0])

    def cell() -> dict[str, int]:
        return METER_CONFIG.unpack(bytes(prog._map("tenant_rate")[TENANT]))

    peak, _ = gcra_pair(meter_config(1000.0))
    assert cell()["peak_increment"] == peak.increment  # the base rate, from the start
    prog.run(FRAME, repeat=200)  # 200 packets in "one second": 200 packets/s
    now[0] += 1.0
    measured = manager.tick()
    assert measured[TENANT].arrival == pytest.approx(200)
    assert measured[8].arrival == 0
    before = prog.counter_cell("tenant_rate_drops", TENANT)[0]
    prog.run(FRAME, repeat=2500)  # heavy: over the 1000 base; the bucket (50 ms) drops most
    now[0] += 1.0
    measured = manager.tick()
    assert measured[TENANT].arrival == pytest.approx(2500)
    dropped = prog.counter_cell("tenant_rate_drops", TENANT)[0] - before
    assert dropped > 0
    assert measured[TENANT].delivered == pytest.approx(2500 - dropped)
    assert policy.tenants[TENANT].state is State.BURST  # heavy, with credit, capacity free
    peak, _ = gcra_pair(meter_config(3000.0))
    assert cell()["peak_increment"] == peak.increment  # its burst rate now
