"""`SCENARIO.yaml`: what `cyberstar lab run` builds, the traffic it drives, the events it
applies and what it checks. Every key is documented in docs/lab.md; errors name the file and
line (`cyberstar.yamlconf`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from cyberstar.yamlconf import ConfigError, Section, load_yaml, read_text

PLOTS = ("timeline", "connections", "pp_throughput", "tenant_rates", "scaling_times",
         "tenant_credit")  # fmt: skip


@dataclass(frozen=True)
class GroupSpec:
    name: str
    nodes: int
    spares: int
    kind: str
    spare_kind: str
    rate_policy: dict | None = None  # `pp serve --rate-policy`'s file, for every node


@dataclass(frozen=True)
class TenantSpec:
    name: str
    tenant_id: int
    group: str
    backends: tuple[str, ...]
    clients: int


@dataclass(frozen=True)
class TopologySpec:
    """Either a Python file with `build(net)` or the counts below."""

    file: Path | None = None
    fms: int = 2
    scgs: int = 1
    spare_scgs: int = 0
    sc_nodes: int = 3
    backends: int = 2
    idle_timeout_s: float = 120.0
    groups: tuple[GroupSpec, ...] = ()
    tenants: tuple[TenantSpec, ...] = ()


@dataclass(frozen=True)
class TrafficSpec:
    tenant: str
    schedule: tuple[tuple[float, float], ...]  # (from second, new connections per second)
    hold_s: float
    request_interval_s: float
    persistent: int
    probe_interval_s: float
    connect_timeout_s: float
    request_timeout_s: float


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    params: dict
    line: int

    def get(self, key: str, default: object = None) -> object:
        return self.params.get(key, default)


@dataclass(frozen=True)
class PpPolicy:
    group: str
    out_above: float  # packets per second per member
    in_below: float
    sustain_s: float
    cooldown_s: float
    min_nodes: int
    max_nodes: int
    drain_s: float


@dataclass(frozen=True)
class ScPolicy:
    tenant: str
    out_above: float  # rule requests per second per SC group
    in_below: float
    sustain_s: float
    cooldown_s: float


@dataclass(frozen=True)
class AutoscaleSpec:
    interval_s: float
    pp: tuple[PpPolicy, ...]
    sc: tuple[ScPolicy, ...]


@dataclass(frozen=True)
class Expectations:
    max_resets: int | None = 0
    max_failed: int | None = None
    crash_resume_s: float | None = 2.0
    scale_out_traffic_s: float | None = 1.0
    failover_lost: int | None = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: Path
    duration_s: float
    topology: TopologySpec
    traffic: tuple[TrafficSpec, ...]
    events: tuple[Event, ...]
    autoscale: AutoscaleSpec | None
    expect: Expectations
    plots: tuple[str, ...]
    scrape_interval_s: float = 0.5
    report_interval_s: float = 0.1

    def schedule_for(self, tenant: str) -> list[tuple[float, float]]:
        """The tenant's connection-rate schedule with its bursts applied."""
        spec = next(t for t in self.traffic if t.tenant == tenant)
        steps = [list(s) for s in spec.schedule]
        for ev in self.events:
            if ev.kind != "burst" or ev.get("tenant") != tenant:
                continue
            start, end = ev.at, ev.at + float(ev.get("duration_s"))
            factor = float(ev.get("factor"))
            steps = _scaled(steps, start, end, factor)
        return [(round(a, 6), round(b, 6)) for a, b in steps]


def _rate_at(steps: list[list[float]], t: float) -> float:
    rate = 0.0
    for start, r in steps:
        if start <= t:
            rate = r
    return rate


def _scaled(steps: list[list[float]], start: float, end: float, factor: float) -> list:
    """Multiply the schedule by `factor` on [start, end)."""
    points = sorted({s for s, _ in steps} | {start, end})
    out = []
    for p in points:
        rate = _rate_at(steps, p)
        out.append([p, rate * factor if start <= p < end else rate])
    return out


def load_scenario(path: Path) -> Scenario:
    return parse_scenario(read_text(path), path)


def parse_scenario(text: str, path: Path) -> Scenario:
    top = load_yaml(text, str(path))
    name = top.str("name")
    description = top.str("description", "")
    duration = top.number("duration_s", lo=1.0)
    topology = _topology(top.section("topology"), path.parent)
    traffic = tuple(_traffic(s) for s in top.sections("traffic", []))
    events = tuple(_event(s, duration) for s in top.sections("events", []))
    autoscale = _autoscale(top.section("autoscale")) if top.has("autoscale") else None
    expect = _expect(top.section("expect", {}))
    plots = tuple(top.list("plots", list(PLOTS)))
    for i, p in enumerate(plots):
        if p not in PLOTS:
            raise top.item_error("plots", i, f"unknown plot {p!r}; known: {', '.join(PLOTS)}")
    scrape = top.number("scrape_interval_s", 0.5, lo=0.05)
    report = top.number("report_interval_s", 0.1, lo=0.02)
    top.done()
    scenario = Scenario(
        name,
        description,
        path,
        duration,
        topology,
        traffic,
        events,
        autoscale,
        expect,
        plots,
        scrape,
        report,
    )
    _cross_check(scenario)
    return scenario


def _topology(sec: Section, base: Path) -> TopologySpec:
    if sec.has("file"):
        file = (base / sec.str("file")).resolve()
        if not file.is_file():
            raise sec.error("file", f"no such file: {file}")
        sec.done()
        return TopologySpec(file=file)
    groups = []
    for g in sec.sections("groups"):
        kinds = []
        for key, default in (("kind", "xdp"), ("spare_kind", None)):
            kind = g.str(key, default or kinds[0])
            if kind not in ("xdp", "bmv2"):
                raise g.error(key, f"expected xdp or bmv2, found {kind!r}")
            kinds.append(kind)
        nodes, spares = g.int("nodes", 2, lo=1, hi=32), g.int("spares", 0, lo=0, hi=32)
        rate_policy = g.raw("rate_policy", None)
        if rate_policy is not None:
            if not isinstance(rate_policy, dict):
                raise g.error(
                    "rate_policy",
                    "expected a mapping (capacity, interval, tenants: the file of `pp serve "
                    f"--rate-policy`), found {rate_policy!r}",
                )
            if kinds != ["xdp", "xdp"]:
                raise g.error(
                    "rate_policy",
                    "the XDP agent runs the rate policy: every node of the group (spares too) "
                    "must be xdp",
                )
            # plain dicts and lists (the loader's carry line numbers), for the node's file
            rate_policy = json.loads(json.dumps(rate_policy))
        groups.append(GroupSpec(g.str("name"), nodes, spares, *kinds, rate_policy))
        g.done()
    backends = sec.int("backends", 2, lo=1, hi=50)
    names = {f"web{i}" for i in range(1, backends + 1)}
    tenants = []
    for t in sec.sections("tenants"):
        chosen = tuple(t.list("backends", sorted(names)))
        for i, b in enumerate(chosen):
            if b not in names:
                raise t.item_error(
                    "backends", i, f"no backend {b!r}; the lab has {', '.join(sorted(names))}"
                )
        group = t.str("group", groups[0].name if groups else "g1")
        if group not in {g.name for g in groups}:
            raise t.error("group", f"no PP group {group!r}")
        tenants.append(
            TenantSpec(
                t.str("name"),
                t.int("id", lo=1, hi=0xFFFF),
                group,
                chosen,
                t.int("clients", 1, lo=1, hi=20),
            )
        )
        t.done()
    spec = TopologySpec(
        fms=sec.int("fms", 2, lo=1, hi=5),
        scgs=sec.int("scgs", 1, lo=1, hi=8),
        spare_scgs=sec.int("spare_scgs", 0, lo=0, hi=8),
        sc_nodes=sec.int("sc_nodes", 3, lo=1, hi=5),
        backends=backends,
        idle_timeout_s=sec.number("idle_timeout_s", 120.0, lo=1.0),
        groups=tuple(groups),
        tenants=tuple(tenants),
    )
    sec.done()
    if not groups:
        raise sec.error("groups", "needs at least one PP group")
    if not tenants:
        raise sec.error("tenants", "needs at least one tenant")
    return spec


def _traffic(sec: Section) -> TrafficSpec:
    tenant = sec.str("tenant")
    if sec.has("schedule"):
        steps = []
        for i, step in enumerate(sec.list("schedule")):
            if (
                not isinstance(step, list)
                or len(step) != 2
                or not all(isinstance(v, int | float) for v in step)
            ):
                raise sec.item_error("schedule", i, f"expected [second, rate], found {step!r}")
            steps.append((float(step[0]), float(step[1])))
        if sec.has("connections_per_s"):
            raise sec.error("connections_per_s", "give either connections_per_s or schedule")
    else:
        steps = [(0.0, sec.number("connections_per_s", 0.0))]
    hold = sec.raw("hold_s", 0.0)
    if hold == "forever":
        hold = math.inf
    elif isinstance(hold, bool) or not isinstance(hold, int | float) or hold < 0:
        raise sec.error("hold_s", f"expected seconds >= 0 or 'forever', found {hold!r}")
    spec = TrafficSpec(
        tenant=tenant,
        schedule=tuple(sorted(steps)),
        hold_s=float(hold),
        request_interval_s=sec.number("request_interval_s", 1.0, lo=0.01),
        persistent=sec.int("persistent", 0, hi=10000),
        probe_interval_s=sec.number("probe_interval_s", 0.1, lo=0.01),
        connect_timeout_s=sec.number("connect_timeout_s", 10.0, lo=0.1),
        request_timeout_s=sec.number("request_timeout_s", 10.0, lo=0.1),
    )
    sec.done()
    return spec


# event kind → its parameters: key → (required, type)
EVENT_PARAMS: dict[str, dict[str, tuple[bool, type]]] = {
    "pp_scale_out": {"group": (False, str), "count": (False, int)},
    "pp_scale_in": {"group": (False, str), "node": (False, str), "drain_s": (False, float)},
    "pp_crash": {"node": (True, str)},
    "fm_failover": {"restart_after_s": (False, float)},
    "sc_scale_out": {"tenant": (True, str), "to": (True, str)},
    "sc_scale_in": {"tenant": (True, str), "to": (True, str)},
    "burst": {"tenant": (True, str), "factor": (True, float), "duration_s": (True, float)},
}


def _event(sec: Section, duration: float) -> Event:
    at = sec.number("at")
    if at > duration:
        raise sec.error("at", f"{at} s is after the end of the scenario ({duration} s)")
    kind = sec.str("do")
    if kind not in EVENT_PARAMS:
        raise sec.error("do", f"unknown event {kind!r}; known: {', '.join(EVENT_PARAMS)}")
    params = {}
    for key, (required, kind_type) in EVENT_PARAMS[kind].items():
        if not sec.has(key):
            if required:
                raise sec.error(None, f"event {kind} needs {key!r}")
            continue
        if kind_type is str:
            params[key] = sec.str(key)
        elif kind_type is int:
            params[key] = sec.int(key, lo=1, hi=32)
        else:
            params[key] = sec.number(key)
    sec.done()
    return Event(at, kind, params, sec.line)


def _autoscale(sec: Section) -> AutoscaleSpec:
    interval = sec.number("interval_s", 1.0, lo=0.1)
    pp = []
    for p in sec.sections("pp", []):
        policy = PpPolicy(
            p.str("group"),
            p.number("out_above"),
            p.number("in_below"),
            p.number("sustain_s", 3.0),
            p.number("cooldown_s", 10.0),
            p.int("min_nodes", 1, lo=1, hi=32),
            p.int("max_nodes", 8, lo=1, hi=32),
            p.number("drain_s", 5.0),
        )
        if policy.in_below >= policy.out_above:
            raise p.error("in_below", "must be below out_above (the gap is the hysteresis)")
        p.done()
        pp.append(policy)
    sc = []
    for s in sec.sections("sc", []):
        policy = ScPolicy(
            s.str("tenant"),
            s.number("out_above"),
            s.number("in_below"),
            s.number("sustain_s", 3.0),
            s.number("cooldown_s", 10.0),
        )
        if policy.in_below >= policy.out_above:
            raise s.error("in_below", "must be below out_above (the gap is the hysteresis)")
        s.done()
        sc.append(policy)
    sec.done()
    return AutoscaleSpec(interval, tuple(pp), tuple(sc))


def _expect(sec: Section) -> Expectations:
    def optional(key: str, default, number: bool = False):
        if not sec.has(key):
            return default
        if sec.raw(key) is None:
            return None
        return sec.number(key) if number else sec.int(key)

    out = Expectations(
        max_resets=optional("max_resets", 0),
        max_failed=optional("max_failed", None),
        crash_resume_s=optional("crash_resume_s", 2.0, True),
        scale_out_traffic_s=optional("scale_out_traffic_s", 1.0, True),
        failover_lost=optional("failover_lost", 0),
    )
    sec.done()
    return out


def _cross_check(s: Scenario) -> None:
    topo = s.topology
    if topo.file is not None:
        return  # names are known once the file has built the lab (checked then)
    tenants = {t.name for t in topo.tenants}
    groups = {g.name: g for g in topo.groups}
    for t in s.traffic:
        if t.tenant not in tenants:
            raise ConfigError(f"{s.path}: traffic for unknown tenant {t.tenant!r}")
    pp_names = {f"pp{i}" for i in range(1, sum(g.nodes + g.spares for g in groups.values()) + 1)}
    scgs = {f"scg{i}" for i in range(1, topo.scgs + topo.spare_scgs + 1)}
    for ev in s.events:
        where = f"{s.path}:{ev.line}: event {ev.kind}"
        if "tenant" in ev.params and ev.params["tenant"] not in tenants:
            raise ConfigError(f"{where}: unknown tenant {ev.params['tenant']!r}")
        if "group" in ev.params and ev.params["group"] not in groups:
            raise ConfigError(f"{where}: unknown group {ev.params['group']!r}")
        if "node" in ev.params and ev.params["node"] not in pp_names:
            raise ConfigError(
                f"{where}: unknown PP node {ev.params['node']!r}; the lab has "
                f"{', '.join(sorted(pp_names))}"
            )
        if "to" in ev.params and ev.params["to"] not in scgs:
            raise ConfigError(
                f"{where}: unknown SC group {ev.params['to']!r}; the lab has "
                f"{', '.join(sorted(scgs))}"
            )
        if ev.kind == "burst" and ev.params["tenant"] not in {t.tenant for t in s.traffic}:
            raise ConfigError(f"{where}: tenant {ev.params['tenant']} has no traffic to burst")
