"""What a scenario run measured, and whether it met its `expect` section.

Connection counts, stalls and resets come from the load generators' own logs (the clients
count for themselves); scaling, crash and failover times from the operator's records;
throughput per PP node from the nodes' metrics and from the routers' interface counters.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from cyberstar.lab.loadgen import COUNTERS
from cyberstar.lab.scenario import Scenario
from cyberstar.lab.telemetry import Series

CRASH_WINDOW_S = 3.0  # a request sent this long after a crash still counts as affected by it
FAILOVER_WINDOW_S = 10.0


class ClientLogs:
    """The load generators' JSON-lines logs, read incrementally while they are written."""

    def __init__(self, files: dict[str, tuple[str, Path]]) -> None:
        self.files = files  # host → (tenant, log)
        self._offsets = dict.fromkeys(files, 0)
        self.intervals: dict[str, list[dict]] = defaultdict(list)  # host → records
        self.stalls: list[dict] = []  # with "host" and "tenant"
        self.summaries: dict[str, dict] = {}

    def poll(self) -> None:
        for host, (tenant, path) in self.files.items():
            try:
                with path.open() as f:
                    f.seek(self._offsets[host])
                    data = f.read()
            except OSError:
                continue
            complete = data[: data.rfind("\n") + 1]
            self._offsets[host] += len(complete.encode())
            for line in complete.splitlines():
                rec = json.loads(line)
                if "stall" in rec:
                    self.stalls.append({**rec["stall"], "host": host, "tenant": tenant})
                elif "summary" in rec:
                    self.summaries[host] = rec["summary"]
                else:
                    self.intervals[host].append(rec)

    def tenants(self) -> list[str]:
        return sorted({tenant for tenant, _ in self.files.values()})

    def timeline(self, tenant: str) -> list[dict]:
        """The tenant's intervals, summed over its hosts, in time order."""
        buckets: dict[float, dict] = defaultdict(lambda: defaultdict(float))
        for host, (t_name, _) in self.files.items():
            if t_name != tenant:
                continue
            for rec in self.intervals[host]:
                b = buckets[rec["t"]]
                for k in (*COUNTERS, "active", "lag"):
                    b[k] += rec.get(k) or 0
                for k in ("max_latency_ms", "loop_lag_ms"):
                    b[k] = max(b[k], rec.get(k) or 0)
        return [{"t": t, **dict(v)} for t, v in sorted(buckets.items())]

    def totals(self, tenant: str) -> dict:
        out: dict = dict.fromkeys(COUNTERS, 0)
        for host, (t_name, _) in self.files.items():
            if t_name != tenant:
                continue
            if host in self.summaries:
                for k in COUNTERS:
                    out[k] += self.summaries[host].get(k, 0)
            else:  # a generator that did not finish: what it reported so far
                for rec in self.intervals[host]:
                    for k in COUNTERS:
                        out[k] += rec.get(k, 0)
        out["scheduled"] = sum(
            self.summaries.get(h, {}).get("scheduled", 0)
            for h, (t_name, _) in self.files.items()
            if t_name == tenant
        )
        return out

    def connect_ms(self, tenant: str) -> dict[str, list]:
        return {
            h: self.summaries[h].get("connect_ms")
            for h, (t_name, _) in self.files.items()
            if t_name == tenant and h in self.summaries
        }

    def recent(self, window_s: float) -> dict[str, dict]:
        """Per tenant: rates over the last `window_s` and totals so far (progress lines)."""
        out = {}
        for tenant in self.tenants():
            line = self.timeline(tenant)
            if not line:
                continue
            end = line[-1]["t"]
            recent = [r for r in line if r["t"] > end - window_s]
            span = max(window_s, 1e-9)
            out[tenant] = {
                "established_per_s": sum(r["established"] for r in recent) / span,
                "responses_per_s": sum(r["responses"] for r in recent) / span,
                "active": int(line[-1]["active"]),
                "failed": int(sum(r["failed"] for r in line)),
                "reset": int(sum(r["reset"] for r in line)),
            }
        return out


def crash_impact(stalls: list[dict], t_crash: float, t_removed: float) -> dict:
    """How the connections a crash interrupted came back. Affected are the requests in flight
    when the node died and those sent into it before the health check took it out
    (`t_removed`); for each affected connection, the time from the crash to its answer. A
    request sent after the removal takes a live path: if it is slow, that is not the crash's
    doing (it is counted in `slow_after_removal`). Resets and failures are counted from the
    crash to CRASH_WINDOW_S after the removal."""
    resume: dict[tuple[str, int], float] = {}
    slow_after = 0
    for s in stalls:
        if s["kind"] != "slow_response":
            continue
        answered = s["t"] + s["latency_s"]
        if answered <= t_crash:
            continue
        if s["t"] <= t_removed:
            key = (s["host"], s["conn"])
            resume[key] = max(resume.get(key, 0.0), answered - t_crash)
        elif s["t"] <= t_removed + CRASH_WINDOW_S:
            slow_after += 1
    near = [s for s in stalls if t_crash <= s["t"] <= t_removed + CRASH_WINDOW_S]
    values = sorted(resume.values())
    return {
        "affected_connections": len(values),
        "max_resume_s": round(values[-1], 3) if values else 0.0,
        "median_resume_s": round(values[len(values) // 2], 3) if values else 0.0,
        "slow_after_removal": slow_after,
        "resets": sum(1 for s in near if s["kind"] == "reset"),
        "request_failures": sum(1 for s in near if s["kind"] == "failed"),
        "connect_failures": sum(1 for s in near if s["kind"] == "connect_failed"),
    }


def failover_impact(stalls: list[dict], t: float, failover_s: float) -> dict:
    window = [s for s in stalls if t <= s["t"] <= t + failover_s + FAILOVER_WINDOW_S]
    slow = [s for s in window if s["kind"] == "slow_response"]
    return {
        "established_lost": sum(1 for s in window if s["kind"] in ("reset", "failed")),
        "new_connections_failed": sum(1 for s in window if s["kind"] == "connect_failed"),
        "slowest_response_s": round(max((s["latency_s"] for s in slow), default=0.0), 3),
    }


def host_load(series: Series) -> dict:
    """How busy the whole machine was during the run (every process, not only the lab's)."""
    busy = [p for pts in series.select("cpu_busy_seconds", "host").values() for p in pts]
    total = [p for pts in series.select("cpu_seconds", "host").values() for p in pts]
    load = [v for pts in series.select("load1", "host").values() for _, v in pts]
    out: dict = {"cpus": os.cpu_count()}
    if len(busy) >= 2 and total[-1][1] > total[0][1]:
        out["cpu_busy"] = round((busy[-1][1] - busy[0][1]) / (total[-1][1] - total[0][1]), 3)
    if load:
        out["load1_mean"] = round(sum(load) / len(load), 2)
        out["load1_max"] = round(max(load), 2)
    return out


def build_report(
    scenario: Scenario,
    logs: ClientLogs,
    records: list[dict],
    net,
    decisions: list[dict],
    timings: dict,
    series: Series,
    health: dict,
) -> dict:
    tenants = {}
    for name in logs.tenants():
        tenants[name] = {"totals": logs.totals(name), "connect_ms": logs.connect_ms(name)}
    skipped = [r for r in records if "skipped" in r]
    records = [r for r in records if "skipped" not in r]
    scale_outs = [r for r in records if r["kind"] == "pp_scale_out"]
    lag = {name: [(r["t"], r["loop_lag_ms"]) for r in logs.timeline(name)] for name in tenants}

    def client_lag(start: float, end: float) -> float:
        """The load generators' worst own stall in [start, end]: latencies measured then
        include it."""
        return max((v for pts in lag.values() for t, v in pts if start <= t <= end), default=0)

    crashes = []
    for r in (r for r in records if r["kind"] == "pp_crash"):
        impact = crash_impact(logs.stalls, r["t"], r["t"] + r.get("removed_after_s", 10.0))
        impact["client_stall_ms"] = client_lag(r["t"], r["t"] + CRASH_WINDOW_S)
        crashes.append({**r, **impact})
    failovers = []
    for r in (r for r in records if r["kind"] == "fm_failover"):
        impact = failover_impact(logs.stalls, r["t"], r.get("failover_s", 0))
        impact["client_stall_ms"] = client_lag(r["t"], r["t"] + FAILOVER_WINDOW_S)
        failovers.append({**r, **impact})
    report = {
        "scenario": scenario.name,
        "description": scenario.description,
        "duration_s": scenario.duration_s,
        "timings": timings,
        "topology": {
            "groups": {g.name: [p.name for p in g.nodes] for g in net.groups.values()},
            "tenants": {
                t.name: {
                    "id": t.tenant_id,
                    "vip": t.vip,
                    "snat": t.snat_ip,
                    "clients": [c.name for c in t.clients],
                    "backends": [b.name for b in t.backends],
                }
                for t in net.tenants.values()
            },
            "fms": list(net.fms),
            "scgs": {g: [n.name for n in ns] for g, ns in net.scgs.items()},
        },
        "tenants": tenants,
        "harness": {
            "host": host_load(series),
            "max_client_stall_ms": client_lag(-1e9, 1e9),
            "intervals_with_client_stall_over_100ms": sum(
                1 for pts in lag.values() for _, v in pts if v > 100
            ),
        },
        "events": sorted(records, key=lambda r: r["t"]),
        "skipped_events": skipped,
        "autoscale_decisions": decisions,
        "health_check": health,
        "measurements": {
            "pp_scale_out": scale_outs,
            "pp_scale_in": [r for r in records if r["kind"] == "pp_scale_in"],
            "pp_crash": crashes,
            "fm_failover": failovers,
            "sc_scale": [r for r in records if r["kind"].startswith("sc_scale")],
        },
    }
    report["checks"] = checks(scenario, report)
    report["ok"] = all(c["ok"] for c in report["checks"])
    return report


def checks(scenario: Scenario, report: dict) -> list[dict]:
    e = scenario.expect
    out = []

    def check(name: str, expected: str, found, ok: bool) -> None:
        out.append({"check": name, "expected": expected, "found": found, "ok": bool(ok)})

    totals = [t["totals"] for t in report["tenants"].values()]
    if e.max_resets is not None:
        resets = sum(t["reset"] for t in totals)
        check(
            "connections reset (clients' count)",
            f"<= {e.max_resets}",
            resets,
            resets <= e.max_resets,
        )
    if e.max_failed is not None:
        failed = sum(t["failed"] for t in totals)
        check(
            "connections failed (clients' count)",
            f"<= {e.max_failed}",
            failed,
            failed <= e.max_failed,
        )
    m = report["measurements"]
    for r in m["pp_scale_out"]:
        if "error" in r:
            check(f"scale-out of {r.get('node', '?')}", "completes", r["error"], False)
        elif e.scale_out_traffic_s is not None:
            check(
                f"traffic reaches {r['node']} after it joins",
                f"<= {e.scale_out_traffic_s} s",
                r["join_to_traffic_s"],
                r["join_to_traffic_s"] <= e.scale_out_traffic_s,
            )
    for r in m["pp_crash"]:
        if "error" in r:
            check(f"crash of {r['node']} detected", "the node is removed", r["error"], False)
            continue
        if e.crash_resume_s is not None:
            check(
                f"connections interrupted by the crash of {r['node']} resume",
                f"<= {e.crash_resume_s} s",
                r["max_resume_s"],
                r["max_resume_s"] <= e.crash_resume_s,
            )
        check(
            f"no reset or failed request around the crash of {r['node']}",
            "0",
            r["resets"] + r["request_failures"],
            r["resets"] + r["request_failures"] == 0,
        )
    for r in m["fm_failover"]:
        if "error" in r:
            check("FM failover", "a standby takes over", r["error"], False)
        elif e.failover_lost is not None:
            check(
                "established connections lost across the FM failover",
                f"<= {e.failover_lost}",
                r["established_lost"],
                r["established_lost"] <= e.failover_lost,
            )
    for r in m["pp_scale_in"] + m["sc_scale"]:
        if "error" in r:
            check(f"{r['kind']} at {r['t']} s", "completes", r["error"], False)
    return out


def summary_lines(report: dict) -> list[str]:
    """The end-of-run summary a person reads."""
    lines = [
        f"scenario {report['scenario']}: {'all checks passed' if report['ok'] else 'CHECKS FAILED'}"
    ]
    t, host = report["timings"], report["harness"]["host"]
    lines.append(
        f"  bring-up {t.get('bring_up_s')} s, run {report['duration_s']} s; the machine's "
        f"{host['cpus']} CPUs were {host.get('cpu_busy', 0) * 100:.0f} % busy (load average "
        f"{host.get('load1_mean')}, every process counted)"
    )
    for name, data in report["tenants"].items():
        c = data["totals"]
        lines.append(
            f"  tenant {name}: {c['attempted']} connections attempted "
            f"({c['scheduled']} scheduled), {c['established']} established, "
            f"{c['completed']} completed, {c['failed']} failed, {c['reset']} reset; "
            f"{c['responses']} of {c['requests']} requests answered"
        )
    h = report["harness"]
    if h["max_client_stall_ms"] > 100:
        lines.append(
            f"  note: the load generators themselves stalled up to {h['max_client_stall_ms']} ms "
            f"({h['intervals_with_client_stall_over_100ms']} intervals over 100 ms): the host "
            "was short of CPU, and latencies measured then include that"
        )
    crashed = {r["node"] for r in report["measurements"]["pp_crash"]}
    for r in report["health_check"]["removed"]:
        if r["node"] not in crashed:
            lines.append(f"  note: the health check took {r['node']} out at {r['t']} s "
                         f"(silent {r['silent_s']} s) though no event crashed it")  # fmt: skip
    for r in report["health_check"]["restored"]:
        lines.append(f"  note: {r['node']} answered again and rejoined at {r['t']} s")
    for r in report["skipped_events"]:
        lines.append(f"  note: {r['kind']} at {r['t']} s did not run: {r['skipped']}")
    m = report["measurements"]
    for r in m["pp_scale_out"]:
        if "error" not in r:
            queued = f" after {r['queued_s']} s in the queue" if r.get("queued_s") else ""
            lines.append(
                f"  scale-out {r['node']}: boot {r['boot_s']} s{queued}, programmed by FM "
                f"{r['program_s']} s later, first packet {r['join_to_traffic_s']} s after "
                f"joining the ECMP group ({r['signal_to_traffic_s']} s after the signal), "
                f"forwarding {r['join_to_forward_s']} s after joining"
            )
    for r in m["pp_scale_in"]:
        if "error" not in r:
            lines.append(
                f"  scale-in {r['node']}: drained in {r['drain_s']} s "
                f"({r['pinned_at_start']} connections pinned at the start, "
                f"{r.get('forwarded_while_draining', 0):.0f} packets forwarded meanwhile, "
                f"{r['left_pinned']} left at the end)"
            )
    for r in m["pp_crash"]:
        if "error" not in r:
            lines.append(
                f"  crash {r['node']}: removed from ECMP after {r['removed_after_s']} s;"
                f" {r['affected_connections']} connections stalled, all back within "
                f"{r['max_resume_s']} s (median {r['median_resume_s']} s); "
                f"{r['resets']} resets"
            )
    for r in m["fm_failover"]:
        if "error" not in r:
            lines.append(
                f"  FM failover {r['killed']} → {r['new_leader']}: {r['failover_s']} s;"
                f" {r['established_lost']} established connections lost, "
                f"{r['new_connections_failed']} new connections failed"
            )
    for r in m["sc_scale"]:
        if "error" not in r:
            lines.append(
                f"  {r['kind']} {r['shard']} → {r['to']}: {r['moved_connections']} "
                f"connections moved in {r['move_s']} s "
                f"({r['signal_to_fin_s']} s from the signal)"
            )
    for c in report["checks"]:
        mark = "ok  " if c["ok"] else "FAIL"
        lines.append(f"  [{mark}] {c['check']}: {c['found']} (expected {c['expected']})")
    return lines
