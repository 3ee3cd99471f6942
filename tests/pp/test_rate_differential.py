"""The tenant_rate meter as delivered rates on bmv2 and on the XDP node: the same P4Runtime
configuration (same rules, same MeterEntry) and the same offered traffic on each, frames counted
by a receiver on the far port; and `cyberstar pp tenants` reading either target.

Where time cannot be made deterministic (both targets run on their own clocks) the meter is
compared by what it delivers over an interval. Hand computation: a tenant offering O = 3R
packets/s (at least 2R on a loaded machine) for T seconds into a bucket of B packets filled at
R packets/s gets B + R·T through (the bucket starts full). Each target must deliver within
[0.9·R·T, B + R·(T + tick) + 2] (tick: the XDP clock's 10 ms; bmv2 counts microseconds), and
the two must agree within TOLERANCE of R·T.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from finsy.proto import p4r

from cyberstar import netns
from cyberstar.lab import traffic
from cyberstar.lab.pp_process import CYBERSTAR, start_pp_node
from cyberstar.p4rt.codec import update
from cyberstar.packets import tcp_frame
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pp.tenants import COLUMNS

pytestmark = pytest.mark.root
TENANT = 7
RATE, BURST = 250, 50  # packets/s, packets: 200 ms at the rate, so a stall of a loaded
# switch (bmv2 runs in user space) up to 200 ms does not cost tokens
OFFERED = 3 * RATE
SECONDS = 4.0
TICK = 0.01
TOLERANCE = 0.1  # of RATE·SECONDS
DST = "10.0.0.5"
SMAC, DMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def rules() -> list:
    return [
        build_entry(PIPELINE, "next_hop", {"nexthop_id": 2}, "set_next_hop",
                    {"port": 2, "smac": SMAC, "dmac": DMAC}),
        build_entry(PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0,
                    "dst_addr": "10.0.0.0/8"}, "set_tenant", {"tenant_id": TENANT}),
        build_entry(PIPELINE, "flow_table",
                    {"tenant_id": TENANT, "src_addr": "192.168.1.2", "dst_addr": DST,
                     "protocol": 6, "src_port": 40000, "dst_port": 80},
                    "forward", {"nexthop_id": 2}),
    ]  # fmt: skip


def meter_update() -> p4r.Update:
    cell = p4r.MeterEntry(
        meter_id=PIPELINE.meters[0].id, index=p4r.Index(index=TENANT),
        config=p4r.MeterConfig(cir=RATE, cburst=BURST, pir=RATE, pburst=BURST),
    )  # fmt: skip
    return p4r.Update(type=p4r.Update.MODIFY, entity=p4r.Entity(meter_entry=cell))


def delivered(kind: str) -> tuple[int, traffic.Sent]:
    """What a `kind` PP node delivers of OFFERED packets/s for SECONDS, and what was sent."""
    with netns.with_pp_ports(f"cs-rd{kind[0]}-{os.getpid()}") as ns:
        node = start_pp_node(kind, ns, ["pp1", "pp2"])
        try:
            c = node.primary_with_pipeline()
            c.write([update(p4r.Update.INSERT, PIPELINE, e) for e in rules()])
            c.write([meter_update()])
            frame = tcp_frame("02:00:00:00:00:0a", SMAC, "192.168.1.2", DST, 40000, 80,
                              b"x" * 18, flags=0x10)  # fmt: skip
            rx = traffic.Receiver(ns, "peer2")
            try:
                sent = traffic.result(traffic.send(ns, "peer1", SECONDS, OFFERED, frame))
                time.sleep(0.5)  # bmv2's queues drain
            finally:
                counts = rx.stop()
            shown = subprocess.run(
                [*CYBERSTAR, "pp", "tenants", "--grpc", node.address, "--tenant", str(TENANT),
                 *node.certs.flags("admin", "lab-admin")],
                capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
            )  # fmt: skip
        finally:
            node.stop()
    # `pp tenants` on either target: the meter as configured, and counters that agree with the
    # receiver (every packet the meter passed reached it)
    assert shown.returncode == 0, shown.stderr
    row = dict(zip(COLUMNS, shown.stdout.splitlines()[1].split(), strict=True))
    assert (row["TENANT"], row["METER/s"]) == (str(TENANT), str(RATE)), shown.stdout
    got = counts.get(DST, 0)
    assert int(row["PACKETS"]) - int(row["RATE_DROPS"]) == got, (kind, shown.stdout, got)
    assert int(row["PACKETS"]) <= sent.sent, (kind, shown.stdout, sent)
    return got, sent


def test_bmv2_and_xdp_deliver_the_meter_rate_alike(bmv2_tools) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, BPF)")
    results = {kind: delivered(kind) for kind in ("bmv2", "xdp")}
    report = f"(delivered, sent) per target: {results}"
    for kind, (got, sent) in results.items():
        # over its rate all along (a loaded machine may slow the sender under OFFERED)
        assert sent.sent >= 2 * RATE * sent.elapsed, f"{kind}: sender too slow, {report}"
        low = 0.9 * RATE * sent.elapsed
        high = BURST + RATE * (sent.elapsed + TICK) + 2
        assert low <= got <= high, f"{kind}: {got} not in [{low:.0f}, {high:.0f}]; {report}"
    (bmv2, _), (xdp, _) = results["bmv2"], results["xdp"]
    assert abs(bmv2 - xdp) <= TOLERANCE * RATE * SECONDS, report
