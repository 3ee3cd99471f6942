"""`cyberstar lab run SCENARIO.yaml`: build the lab, drive the traffic, apply the events,
watch, and write the report.

```
 bring-up (LabNet.start) ─► t = 0: load generators start in the tenant hosts
                            scraper: every daemon's /metrics + router counters ─► telemetry.jsonl
                            events at their times (and the autoscaler) ─► Operator
                            a progress line every 2 s
 t = duration ─► load generators finish ─► report.json, PNG plots, checks (exit 1 if one fails)
```
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cyberstar.lab.autoscale import Autoscaler
from cyberstar.lab.operator import Operator
from cyberstar.lab.procs import LabError
from cyberstar.lab.report import ClientLogs, build_report
from cyberstar.lab.scenario import Event, Scenario, TopologySpec
from cyberstar.lab.telemetry import Scraper, Series
from cyberstar.lab.topo import LabNet, remove_stale_labs

log = logging.getLogger(__name__)
START_LEAD_S = 1.0  # the load generators start this long before t = 0
PROGRESS_S = 2.0
PP_PACKETS = "cyberstar_pp_packets_total"


def build_topology(net: LabNet, spec: TopologySpec) -> None:
    """Compose the lab a scenario's `topology` section declares (or its file builds)."""
    if spec.file is not None:
        module_spec = importlib.util.spec_from_file_location("cyberstar_lab_topology", spec.file)
        if module_spec is None or module_spec.loader is None:
            raise LabError(f"{spec.file}: not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "build"):
            raise LabError(f"{spec.file}: defines no build(net) function")
        module.build(net)
        return
    net.add_etcd()
    for i in range(1, spec.fms + 1):
        net.add_fm(f"fm{i}")
    for i in range(1, spec.scgs + spec.spare_scgs + 1):
        net.add_scg(f"scg{i}", spec.sc_nodes, running=i <= spec.scgs)
    backends = {
        b.name: b for b in (net.add_backend(f"web{i}") for i in range(1, spec.backends + 1))
    }
    groups = {
        g.name: net.add_pp_group(g.name, g.nodes, g.spares, g.kind, g.spare_kind, g.rate_policy)
        for g in spec.groups
    }
    for t in spec.tenants:
        net.add_tenant(
            t.name, t.tenant_id, groups[t.group], [backends[b] for b in t.backends], t.clients
        )


class ScenarioRun:
    def __init__(
        self, scenario: Scenario, out_dir: Path, say: Callable[[str], None] = print
    ) -> None:
        self.scenario = scenario
        self.out_dir = out_dir.resolve()  # daemons run elsewhere: no relative paths
        self.say = say
        self.t0 = math.inf
        self.timings: dict[str, float] = {}
        self.logs: ClientLogs | None = None
        self.series: Series | None = None

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> dict:
        s = self.scenario
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for old in ("work", "clients"):  # a previous run's logs would be appended to
            shutil.rmtree(self.out_dir / old, ignore_errors=True)
        removed = remove_stale_labs()
        if removed:
            self.say(f"removed {removed} leftovers of labs that were killed")
        started = time.monotonic()
        net = LabNet(workdir=self.out_dir / "work", idle_timeout_s=s.topology.idle_timeout_s)
        try:
            build_topology(net, s.topology)
            self._check_names(net)
            net.start(on_step=lambda m: self.say(f"[{time.monotonic() - started:5.1f} s] {m}"))
            self.timings["bring_up_s"] = round(time.monotonic() - started, 1)
            return self._drive(net)
        finally:
            t = time.monotonic()
            net.close()
            self.timings["tear_down_s"] = round(time.monotonic() - t, 1)

    def _check_names(self, net: LabNet) -> None:
        s = self.scenario
        for t in s.traffic:
            if t.tenant not in net.tenants:
                raise LabError(
                    f"{s.path}: traffic for tenant {t.tenant!r}, which the topology "
                    f"does not have ({', '.join(net.tenants)})"
                )
        for ev in s.events:
            node = ev.get("node")
            if node is not None and node not in net.pps:
                raise LabError(f"{s.path}:{ev.line}: no PP node {node!r} in the topology")
            for key, known in (("group", net.groups), ("to", net.scgs), ("tenant", net.tenants)):
                if ev.get(key) is not None and ev.get(key) not in known:
                    raise LabError(f"{s.path}:{ev.line}: no {key} {ev.get(key)!r} in the topology")

    def _drive(self, net: LabNet) -> dict:
        s = self.scenario
        self.t0 = time.monotonic() + START_LEAD_S
        series = Series(self.out_dir / "telemetry.jsonl")
        scraper = Scraper(
            series,
            lambda: self._targets(net),
            {"vsw": net.vsw.pid, "svc": net.svc.pid},
            self.clock,
            s.scrape_interval_s,
            net.ops.entered,
        )
        operator = Operator(net, self.clock)
        clients, files = self._start_load(net)
        scraper.start()
        autoscaler = None
        if s.autoscale is not None:
            autoscaler = Autoscaler(s.autoscale, operator, series, self.clock)
            autoscaler.start()
        events = threading.Thread(target=self._events, args=(operator,), daemon=True, name="events")
        events.start()
        logs = ClientLogs(files)
        next_line = PROGRESS_S
        while self.clock() < s.duration_s:
            time.sleep(min(0.2, max(0.0, s.duration_s - self.clock())))
            if self.clock() >= next_line:
                logs.poll()
                self.say(self._progress(net, series, logs))
                next_line += PROGRESS_S
        grace = max(t.request_timeout_s for t in s.traffic) + 10 if s.traffic else 5
        for host, daemon in clients.items():
            try:
                daemon.proc.wait(grace)
            except Exception:
                daemon.kill()
                self.say(f"{host}: the load generator did not finish in time; killed")
        operator.closing.set()
        if autoscaler is not None:
            autoscaler.stop()
        events.join(60)
        scraper.stop()
        series.close()
        logs.poll()
        self.logs, self.series = logs, series
        health = {
            "removed": [
                {"t": round(m - self.t0, 3), "node": n, "silent_s": round(silent, 3)}
                for m, n, silent in net.removed
            ],
            "restored": [{"t": round(m - self.t0, 3), "node": n} for m, n in net.restored],
        }
        return build_report(
            s,
            logs,
            operator.records,
            net,
            autoscaler.decisions if autoscaler else [],
            self.timings,
            series,
            health,
        )

    def _targets(self, net: LabNet) -> list[tuple[str, Callable[[], str]]]:
        out = []
        for pp in net.pps.values():
            if pp.running:
                out.append((pp.name, _fetcher(net, pp.metrics)))
        for fm in net.fms.values():
            if fm.running:
                out.append((fm.name, _fetcher(net, fm.http, token=True)))
        for nodes in net.scgs.values():
            for n in nodes:
                if n.running:
                    out.append((n.name, _fetcher(net, n.metrics)))
        return out

    def _start_load(self, net: LabNet) -> tuple[dict, dict]:
        """Start a load generator in every client host; returns their daemons and logs."""
        s = self.scenario
        clients, files = {}, {}
        (self.out_dir / "clients").mkdir(exist_ok=True)
        for traffic in s.traffic:
            tenant = net.tenants[traffic.tenant]
            n = len(tenant.clients)
            schedule = [(t, rate / n) for t, rate in s.schedule_for(traffic.tenant)]
            for i, host in enumerate(tenant.clients):
                out = self.out_dir / "clients" / f"{host.name}.jsonl"
                out.unlink(missing_ok=True)
                spec = {
                    "target": tenant.vip,
                    "port": 80,
                    "t0": self.t0,
                    "duration_s": s.duration_s,
                    "out": str(out),
                    "schedule": schedule,
                    "hold_s": traffic.hold_s if math.isfinite(traffic.hold_s) else 1e9,
                    "request_interval_s": traffic.request_interval_s,
                    "persistent": traffic.persistent // n + (i < traffic.persistent % n),
                    "probe_interval_s": traffic.probe_interval_s,
                    "connect_timeout_s": traffic.connect_timeout_s,
                    "request_timeout_s": traffic.request_timeout_s,
                    "report_interval_s": s.report_interval_s,
                }
                path = host.workdir / "loadgen.json"
                path.write_text(json.dumps(spec))
                clients[host.name] = host.start_load(path)
                files[host.name] = (traffic.tenant, out)
        return clients, files

    def _events(self, operator: Operator) -> None:
        workers = []
        for ev in sorted(self.scenario.events, key=lambda e: e.at):
            time.sleep(max(0.0, ev.at - self.clock()))
            self.say(f"[{self.clock():6.1f} s] event: {ev.kind} {_describe(ev)}")
            w = threading.Thread(
                target=self._apply, args=(operator, ev), daemon=True, name=f"event-{ev.kind}"
            )
            w.start()
            workers.append(w)
        for w in workers:
            w.join(120)

    def _apply(self, op: Operator, ev: Event) -> None:
        try:
            if ev.kind == "pp_scale_out":
                recs = op.pp_scale_out(ev.get("group"), int(ev.get("count", 1)))
            elif ev.kind == "pp_scale_in":
                recs = [
                    op.pp_scale_in(ev.get("group"), ev.get("node"), float(ev.get("drain_s", 10.0)))
                ]
            elif ev.kind == "pp_crash":
                recs = [op.pp_crash(str(ev.get("node")))]
            elif ev.kind == "fm_failover":
                recs = [op.fm_failover(ev.get("restart_after_s"))]
            elif ev.kind == "sc_scale_out":
                recs = [op.sc_scale_out(str(ev.get("tenant")), str(ev.get("to")))]
            elif ev.kind == "sc_scale_in":
                recs = [op.sc_scale_in(str(ev.get("tenant")), str(ev.get("to")))]
            else:  # burst: already in the load generators' schedules
                recs = [op.record({"kind": "burst", "t": ev.at, **ev.params})]
        except Exception as exc:
            log.exception("event %s", ev.kind)
            recs = [
                op.record(
                    {
                        "kind": ev.kind,
                        "t": round(self.clock(), 3),
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
            ]
        for rec in recs:
            self.say(f"[{self.clock():6.1f} s] {_outcome(rec)}")

    def _progress(self, net: LabNet, series: Series, logs: ClientLogs) -> str:
        now = self.clock()
        parts = [f"[{now:6.1f} s]"]
        for tenant, c in logs.recent(PROGRESS_S).items():
            parts.append(
                f"{tenant}: {c['established_per_s']:.0f} conn/s {c['active']} open "
                f"{c['responses_per_s']:.0f} req/s {c['failed']} failed "
                f"{c['reset']} reset |"
            )
        for g in net.groups.values():
            rates = ", ".join(
                f"{pp.name} {series.rate(PP_PACKETS, pp.name, PROGRESS_S, now):.0f}"
                for pp in g.active
            )
            parts.append(f"{g.name} [{rates}] pkt/s |")
        leader = next(
            (
                fm.name
                for fm in net.fms.values()
                if fm.running
                and series.select("cyberstar_fm_leader", fm.name)
                and _last(series, "cyberstar_fm_leader", fm.name)
            ),
            "none",
        )
        parts.append(f"FM {leader}")
        return " ".join(parts)


def _last(series: Series, metric: str, source: str) -> float:
    pts = [p for pts in series.select(metric, source).values() for p in pts]
    return max(pts)[1] if pts else 0.0


def _fetcher(net: LabNet, address: str, token: bool = False) -> Callable[[], str]:
    """GET /metrics of a daemon (FM's wants the bearer token)."""

    def fetch() -> str:
        return net.https(address, "/metrics", 1.0, token=token).decode()

    return fetch


def _describe(ev: Event) -> str:
    return " ".join(f"{k}={v}" for k, v in ev.params.items())


def _outcome(rec: dict) -> str:
    if "error" in rec:
        return f"{rec['kind']} FAILED: {rec['error']}"
    if "skipped" in rec:
        return f"{rec['kind']} skipped: {rec['skipped']}"
    keys = (
        "node",
        "group",
        "killed",
        "new_leader",
        "shard",
        "to",
        "boot_s",
        "program_s",
        "join_to_traffic_s",
        "signal_to_traffic_s",
        "removed_after_s",
        "drain_s",
        "left_pinned",
        "failover_s",
        "moved_connections",
        "move_s",
        "reason",
    )
    return f"{rec['kind']} done: " + ", ".join(f"{k}={rec[k]}" for k in keys if k in rec)
