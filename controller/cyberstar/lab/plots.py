"""PNG plots of a scenario run, drawn from the clients' own counts, the daemons' metrics and
the operator's records (the same numbers as report.json).

* `timeline`: requests per second per tenant, packets per second per PP node, open
  connections; every event marked.
* `connections` (paper Figure 7): open connections and the connection rate over time.
* `pp_throughput` (Figure 8b): packets per second of each PP node, from its own counters.
* `tenant_rates` (Figure 11): requests per second per tenant, and packets per tenant the
  PP nodes classified.
* `scaling_times` (Figure 8a): from the scaling signal to the new node's first packet, per
  scale-out, split into boot, programming by FM, and first traffic.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

from cyberstar.lab.report import ClientLogs
from cyberstar.lab.telemetry import Series

EVENT_STYLE = {
    "pp_scale_out": ("tab:green", "PP scale-out"),
    "pp_scale_in": ("tab:olive", "PP scale-in"),
    "pp_crash": ("tab:red", "PP crash"),
    "fm_failover": ("tab:purple", "FM failover"),
    "sc_scale_out": ("tab:cyan", "SC scale-out"),
    "sc_scale_in": ("tab:brown", "SC scale-in"),
    "burst": ("tab:orange", "burst"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def binned(line: list[dict], key: str, width: float) -> tuple[list[float], list[float]]:
    """Per-second rate of counter `key` in bins of `width` seconds."""
    bins: dict[int, float] = defaultdict(float)
    for r in line:
        bins[int(r["t"] // width)] += r.get(key, 0) or 0
    xs = sorted(bins)
    return [(b + 0.5) * width for b in xs], [bins[b] / width for b in xs]


def counter_rates(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for (t1, v1), (t2, v2) in itertools.pairwise(points):
        if t2 > t1:
            xs.append((t1 + t2) / 2)
            ys.append(max(0.0, v2 - v1) / (t2 - t1))
    return xs, ys


def pp_rates(
    series: Series, metric: str = "cyberstar_pp_packets_total"
) -> dict[str, tuple[list[float], list[float]]]:
    """Packets per second per PP node (all verdicts), from its own counters."""
    per_node: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (source, _), pts in series.select(metric).items():
        for t, v in pts:
            per_node[source][t] += v  # sum the verdicts of one scrape
    out = {}
    for node, by_t in per_node.items():
        out[node] = counter_rates(sorted(by_t.items()))
    return dict(sorted(out.items(), key=lambda kv: int(kv[0][2:]) if kv[0][2:].isdigit() else 0))


def mark_events(ax, events: list[dict], label: bool = False) -> None:
    seen = set()
    for ev in events:
        color, name = EVENT_STYLE.get(ev["kind"], ("gray", ev["kind"]))
        kw = {"label": name} if label and name not in seen else {}
        seen.add(name)
        ax.axvline(ev["t"], color=color, linestyle="--", linewidth=1, **kw)
        if "joined_at" in ev:  # a scale-out: the signal (dashed), the node joins (dotted)
            kw = {"label": "PP joins ECMP"} if label and "joins" not in seen else {}
            seen.add("joins")
            ax.axvline(ev["joined_at"], color=color, linestyle=":", linewidth=1.5, **kw)
        if ev["kind"] == "burst" and "duration_s" in ev:
            ax.axvspan(ev["t"], ev["t"] + ev["duration_s"], color=color, alpha=0.08)


def draw(
    which: tuple[str, ...], report: dict, logs: ClientLogs, series: Series, out_dir: Path
) -> list[Path]:
    plt = _pyplot()
    drawers = {
        "timeline": _timeline,
        "connections": _connections,
        "pp_throughput": _pp_throughput,
        "tenant_rates": _tenant_rates,
        "scaling_times": _scaling_times,
        "tenant_credit": _tenant_credit,
    }
    written = []
    for name in which:
        fig = drawers[name](plt, report, logs, series)
        if fig is None:
            continue
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _title(report: dict, what: str) -> str:
    return f"{report['scenario']}: {what}"


def _timeline(plt, report: dict, logs: ClientLogs, series: Series):
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    events = report["events"]
    ax = axes[0]
    for tenant in logs.tenants():
        xs, ys = binned(logs.timeline(tenant), "responses", 0.5)
        ax.plot(xs, ys, label=f"tenant {tenant}")
    ax.set_ylabel("requests answered / s\n(clients' count)")
    ax.set_title(_title(report, "traffic, PP nodes and events"))
    mark_events(ax, events, label=True)
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    ax = axes[1]
    for node, (xs, ys) in pp_rates(series).items():
        ax.plot(xs, ys, label=node)
    ax.set_ylabel("packets / s per PP node\n(its own counters)")
    mark_events(ax, events)
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax = axes[2]
    for tenant in logs.tenants():
        line = logs.timeline(tenant)
        ax.plot([r["t"] for r in line], [r["active"] for r in line], label=f"{tenant} open")
        resets = [r["t"] for r in line if r["reset"]]
        fails = [r["t"] for r in line if r["failed"]]
        if resets:
            ax.plot(resets, [0] * len(resets), "rx", label=f"{tenant} reset")
        if fails:
            ax.plot(fails, [0] * len(fails), "k^", label=f"{tenant} failed")
    ax.set_ylabel("open connections")
    ax.set_xlabel("seconds")
    mark_events(ax, events)
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    fig.tight_layout()
    return fig


def _connections(plt, report: dict, logs: ClientLogs, series: Series):
    fig, ax = plt.subplots(figsize=(9, 4.5))
    total: dict[float, float] = defaultdict(float)
    for tenant in logs.tenants():
        for r in logs.timeline(tenant):
            total[r["t"]] += r["active"]
    ts = sorted(total)
    ax.plot(ts, [total[t] for t in ts], label="open connections (clients)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("open connections")
    ax2 = ax.twinx()
    for tenant in logs.tenants():
        xs, ys = binned(logs.timeline(tenant), "established", 1.0)
        ax2.plot(xs, ys, ":", label=f"{tenant}: established / s")
    ax2.set_ylabel("new connections / s")
    ax.set_title(_title(report, "connection ramp"))
    mark_events(ax, report["events"])
    fig.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def _pp_throughput(plt, report: dict, logs: ClientLogs, series: Series):
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for node, (xs, ys) in pp_rates(series).items():
        ax.plot(xs, ys, label=node)
    ax.set_xlabel("seconds")
    ax.set_ylabel("packets / s (each node's counters)")
    ax.set_title(_title(report, "throughput per PP node"))
    mark_events(ax, report["events"], label=True)
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    fig.tight_layout()
    return fig


def _tenant_rates(plt, report: dict, logs: ClientLogs, series: Series):
    per_tenant = series.select("cyberstar_pp_tenant_packets_total")
    fig, axes = plt.subplots(
        2 if per_tenant else 1, 1, figsize=(9, 6 if per_tenant else 3.5), sharex=True, squeeze=False
    )
    ax = axes[0][0]
    for tenant in logs.tenants():
        xs, ys = binned(logs.timeline(tenant), "responses", 0.5)
        ax.plot(xs, ys, label=f"tenant {tenant}")
    ax.set_ylabel("requests answered / s\n(clients' count)")
    ax.set_title(_title(report, "per-tenant rates"))
    mark_events(ax, report["events"], label=True)
    ax.legend(loc="upper left", fontsize=8)
    if per_tenant:
        ax = axes[1][0]
        ids = {str(t["id"]): name for name, t in report["topology"]["tenants"].items()}
        # each node's rate per tenant, averaged in 1 s bins, then summed over the nodes
        summed: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        for (_, labels), pts in per_tenant.items():
            tenant = ids.get(dict(labels).get("tenant", ""), dict(labels).get("tenant", "?"))
            bins: dict[int, list[float]] = defaultdict(list)
            for t, rate in zip(*counter_rates(pts), strict=True):
                bins[int(t // 1)].append(rate)
            for b, rates in bins.items():
                summed[tenant][b] += sum(rates) / len(rates)
        for tenant, by_bin in sorted(summed.items()):
            xs = sorted(by_bin)
            ax.plot([b + 0.5 for b in xs], [by_bin[b] for b in xs], label=f"tenant {tenant}")
        ax.set_ylabel("packets / s classified\n(PP counters, all nodes)")
        mark_events(ax, report["events"])
        ax.legend(loc="upper left", fontsize=8)
    axes[-1][0].set_xlabel("seconds")
    fig.tight_layout()
    return fig


def _by_node_and_tenant(series: Series, metric: str) -> dict[tuple[str, str], list]:
    """`metric`'s points per (PP node, tenant), the series of every state label merged."""
    out: dict[tuple[str, str], list] = defaultdict(list)
    for (source, labels), pts in series.select(metric).items():
        out[(source, dict(labels).get("tenant", "?"))] += pts
    return {k: sorted(v) for k, v in sorted(out.items())}


def _tenant_credit(plt, report: dict, logs: ClientLogs, series: Series):
    """The paper's Figure 10: each tenant's arrival rate and the rate its PP node's credit
    policy allows it, and its credit, as the agents report them (`cyberstar_pp_tenant_*`)."""
    allowed = _by_node_and_tenant(series, "cyberstar_pp_tenant_rate")
    if not allowed:
        return None
    ids = {str(t["id"]): name for name, t in report["topology"]["tenants"].items()}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for (node, tenant), pts in _by_node_and_tenant(
        series, "cyberstar_pp_tenant_arrival_rate"
    ).items():
        name = f"tenant {ids.get(tenant, tenant)} on {node}"
        (line,) = top.plot(*zip(*pts, strict=True), label=f"{name}: arrivals")
        if (node, tenant) in allowed:
            xs, ys = zip(*allowed[node, tenant], strict=True)
            top.step(xs, ys, where="post", color=line.get_color(), linestyle="--",
                     label=f"{name}: rate allowed")  # fmt: skip
    for (node, tenant), pts in _by_node_and_tenant(series, "cyberstar_pp_tenant_credit").items():
        bottom.plot(*zip(*pts, strict=True), label=f"tenant {ids.get(tenant, tenant)} on {node}")
    top.set_ylabel("packets / s")
    top.set_title(_title(report, "per-tenant rate and credit"))
    bottom.set_ylabel("credit (packets)")
    bottom.set_xlabel("seconds")
    for ax in (top, bottom):
        mark_events(ax, report["events"], label=ax is top)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def _scaling_times(plt, report: dict, logs: ClientLogs, series: Series):
    outs = [r for r in report["measurements"]["pp_scale_out"] if "error" not in r]
    if not outs:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{i + 1}: {r['node']}" for i, r in enumerate(outs)]
    bottom = [0.0] * len(outs)
    for key, label in (
        ("queued_s", "queued behind the previous action"),
        ("boot_s", "boot (the agent loads XDP, listens)"),
        ("program_s", "FM programs it; it joins ECMP"),
        ("join_to_traffic_s", "traffic reaches it"),
    ):
        values = [r.get(key, 0.0) for r in outs]
        if any(values):
            ax.bar(labels, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("seconds from the scaling signal")
    ax.set_title(_title(report, "PP scale-out: signal to traffic"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
