"""Per-tenant rate state over P4Runtime: what a PP node answers and what `cyberstar pp
tenants` shows.

The token buckets are standard P4Runtime objects: the `tenant_rate` meter's cells (MeterEntry:
the rate each tenant is held to now) and the `tenant_packets` / `tenant_rate_drops` counters
(CounterEntry). The credit policy's state lives in the agent, so a node running one serves it as
an architecture-specific extern, `TenantCredit` messages (`proto/p4rt_tenants.proto`) in
ExternEntry reads of type `TENANT_CREDIT`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from finsy.proto import p4r
from google.protobuf import any_pb2

from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.meters import MeterConfig
from cyberstar.pipeline.model import Pipeline
from cyberstar.pp.ratelimit import RatePolicy
from cyberstar.proto import p4rt_tenants_pb2 as pb

TENANT_CREDIT = 0x81  # the first architecture-specific extern type id (P4Runtime §6.3)
TENANT_CREDIT_ID = TENANT_CREDIT << 24 | 1  # its one instance
_TYPE_URL = "type.googleapis.com/" + pb.TenantCredit.DESCRIPTOR.full_name


def credit_entities(policy: RatePolicy) -> Iterator[p4r.Entity]:
    """One ExternEntry per tenant of `policy`: the node's answer to a TENANT_CREDIT read."""
    for tenant, s in policy.tenants.items():
        p = s.policy
        msg = pb.TenantCredit(
            tenant=tenant, state=s.state.value, credit=s.credit, base=p.base, burst=p.burst,
            rate=s.rate, arrival=s.arrival, delivered=s.delivered, credit_cap=p.cap,
            unlimited=p.unlimited, debt_limit=p.debt_limit,
        )  # fmt: skip
        entry = any_pb2.Any(type_url=_TYPE_URL, value=msg.SerializeToString())
        yield p4r.Entity(
            extern_entry=p4r.ExternEntry(
                extern_type_id=TENANT_CREDIT, extern_id=TENANT_CREDIT_ID, entry=entry
            )
        )


@dataclass
class TenantView:
    """One tenant as `pp tenants` shows it: the data plane's meter cell and counters, and the
    policy's state when the node runs one."""

    tenant: int
    meter: MeterConfig | None = None
    packets: int = 0
    rate_drops: int = 0
    credit: pb.TenantCredit | None = None


def read_tenants(
    client: P4RuntimeClient,
    pipeline: Pipeline,
    tenants: list[int] | None = None,
    scan: bool = False,
) -> tuple[list[TenantView], bool]:
    """The tenants of the node's rate policy and `tenants`, by id, read cell by cell; with
    `scan`, or when there are none, every tenant with a configured meter cell or a packet
    counted (a read of every cell: seconds on a loaded node). Also whether the node runs a rate
    policy (False: it does not serve the credit extern, or serves no tenants)."""
    try:
        credits = client.read(
            [p4r.Entity(extern_entry=p4r.ExternEntry(extern_type_id=TENANT_CREDIT))]
        )
    except P4RuntimeError:
        credits = []  # a target without the extern (bmv2): meters and counters only
    views: dict[int, TenantView] = {}
    for e in credits:
        msg = pb.TenantCredit()
        if e.extern_entry.entry.Unpack(msg):
            views[msg.tenant] = TenantView(msg.tenant, credit=msg)
    for t in tenants or []:
        views.setdefault(t, TenantView(t))
    meter = pipeline.meters[0]
    arrivals, drops = pipeline.counter(meter.arrivals).id, pipeline.counter(meter.drops).id
    wanted = [] if scan or not views else sorted(views)
    index = [p4r.Index(index=t) for t in wanted] or [None]
    entities = []
    for i in index:
        entities += [
            p4r.Entity(meter_entry=p4r.MeterEntry(meter_id=meter.id, index=i)),
            p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=arrivals, index=i)),
            p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=drops, index=i)),
        ]
    for e in client.read(entities):
        if e.HasField("meter_entry"):
            me = e.meter_entry
            if me.HasField("config"):
                c = me.config
                view = views.setdefault(me.index.index, TenantView(me.index.index))
                view.meter = MeterConfig(c.cir, c.cburst, c.pir, c.pburst)
            continue
        ce = e.counter_entry
        t, packets = ce.index.index, ce.data.packet_count
        if packets or t in views:
            view = views.setdefault(t, TenantView(t))
            if ce.counter_id == arrivals:
                view.packets = packets
            else:
                view.rate_drops = packets
    return [views[t] for t in sorted(views)], bool(credits)


COLUMNS = ("TENANT", "STATE", "CREDIT", "BASE/s", "BURST/s", "METER/s", "ARRIVAL/s",
           "DELIVERED/s", "PACKETS", "RATE_DROPS")  # fmt: skip


def format_table(views: list[TenantView]) -> str:
    """A text table, one line per tenant; '-' where the node has no policy for the tenant or
    its meter cell is not configured (then it is not limited)."""
    rows = [COLUMNS]
    for v in views:
        c = v.credit
        policy = [c.state, f"{c.credit:.0f}", f"{c.base:.0f}", f"{c.burst:.0f}"] if c else ["-"] * 4
        measured = [f"{c.arrival:.0f}", f"{c.delivered:.0f}"] if c else ["-"] * 2
        meter = str(v.meter.pir) if v.meter else "-"
        rows.append((str(v.tenant), *policy, meter, *measured, str(v.packets), str(v.rate_drops)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    )  # fmt: skip
