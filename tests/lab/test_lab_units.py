"""The lab's parts that need no Mininet: the scenario format, the load generator's own counts
(against real sockets on loopback), the Prometheus parser, the crash analysis and the
autoscaling hysteresis. Expected values are computed by hand in each test."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from cyberstar.lab.autoscale import Hysteresis
from cyberstar.lab.loadgen import LoadGenerator, LoadSpec
from cyberstar.lab.report import crash_impact
from cyberstar.lab.scenario import parse_scenario
from cyberstar.lab.telemetry import parse_prometheus
from cyberstar.yamlconf import ConfigError

BASE = """\
name: t
duration_s: 60
topology:
  groups: [{name: g1, nodes: 2, spares: 1}]
  tenants: [{name: A, id: 7}]
traffic:
  - {tenant: A, connections_per_s: 100}
"""


def scenario(extra: str = "", base: str = BASE):
    return parse_scenario(base + extra, Path("/tmp/s.yaml"))


def test_every_shipped_scenario_parses() -> None:
    files = sorted((REPO / "topologies" / "scenarios").glob("*.yaml"))
    assert {f.stem for f in files} >= {"demo", "ci", "fig7", "fig8", "fig9", "fig10", "fig11"}
    for f in files:
        parse_scenario(f.read_text(), f)


def test_a_burst_multiplies_the_rate_over_its_window() -> None:
    s = scenario("events:\n  - {at: 10, do: burst, tenant: A, factor: 2, duration_s: 5}\n")
    assert s.schedule_for("A") == [(0.0, 100.0), (10.0, 200.0), (15.0, 100.0)]


def test_an_unknown_key_is_named_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r"s.yaml:7: traffic\[0\].conections_per_s: unknown"):
        scenario(base=BASE.replace("connections_per_s", "conections_per_s"))


def test_an_event_on_a_node_the_lab_lacks_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown PP node 'pp9'; the lab has pp1, pp2, pp3"):
        scenario("events:\n  - {at: 5, do: pp_crash, node: pp9}\n")


def test_an_event_after_the_end_is_refused() -> None:
    with pytest.raises(ConfigError, match=r":9: events\[0\].at: 61.0 s is after the end"):
        scenario("events:\n  - {at: 61, do: pp_scale_out}\n")


def test_thresholds_without_a_gap_are_refused() -> None:
    autoscale = "autoscale:\n  pp:\n    - {group: g1, out_above: 100, in_below: 100}\n"
    with pytest.raises(ConfigError, match="must be below out_above"):
        scenario(autoscale)


def test_connections_due_integrate_the_schedule() -> None:
    spec = LoadSpec("x", 1, 0.0, 10.0, "/dev/null", schedule=[(0.0, 10.0), (5.0, 20.0)])
    assert spec.due(3.0) == 30.0  # 3 s at 10/s
    assert spec.due(7.0) == 90.0  # 5 s at 10/s, then 2 s at 20/s
    assert spec.rate(4.9) == 10.0 and spec.rate(5.0) == 20.0


def test_prometheus_text_is_parsed_with_labels_that_hold_commas() -> None:
    text = (
        "# HELP x y\n"
        'cyberstar_sc_shard_connections{node="a",shard="7:0-512",state="active"} 12\n'
        'cyberstar_pp_packets_total{verdict="forward"} 1.5e3\n'
        "cyberstar_fm_cached_rules 4\n"
        'odd{label="a,b=c"} 2\n'
    )
    assert parse_prometheus(text) == [
        ("cyberstar_sc_shard_connections",
         (("node", "a"), ("shard", "7:0-512"), ("state", "active")), 12.0),
        ("cyberstar_pp_packets_total", (("verdict", "forward"),), 1500.0),
        ("cyberstar_fm_cached_rules", (), 4.0),
        ("odd", (("label", "a,b=c"),), 2.0),
    ]  # fmt: skip


def test_crash_impact_measures_from_the_crash_to_each_connections_answer() -> None:
    stalls = [
        # in flight at the crash (t = 10): answered at 10.9 and 11.4
        {"host": "h", "conn": 1, "kind": "slow_response", "t": 9.95, "latency_s": 0.95},
        {"host": "h", "conn": 2, "kind": "slow_response", "t": 9.9, "latency_s": 1.5},
        # sent into the dead node before its removal at 10.4: answered at 11.2
        {"host": "h", "conn": 3, "kind": "slow_response", "t": 10.2, "latency_s": 1.0},
        # slow long before the crash, or sent after the removal: not this crash's doing
        {"host": "h", "conn": 4, "kind": "slow_response", "t": 2.0, "latency_s": 0.5},
        {"host": "h", "conn": 5, "kind": "slow_response", "t": 12.0, "latency_s": 0.3},
        {"host": "h", "conn": 6, "kind": "reset", "t": 10.5},
    ]
    impact = crash_impact(stalls, 10.0, 10.4)
    assert impact["affected_connections"] == 3
    assert impact["max_resume_s"] == 1.4
    assert impact["median_resume_s"] == 1.2
    assert impact["slow_after_removal"] == 1
    assert impact["resets"] == 1


def test_hysteresis_needs_a_sustained_load_and_waits_out_its_cooldown() -> None:
    h = Hysteresis(out_above=100, in_below=40, sustain_s=3, cooldown_s=10)
    assert h.decide(0, 150) is None
    assert h.decide(2, 150) is None
    assert h.decide(2.5, 90) is None  # dipped under the threshold: the clock restarts
    assert h.decide(3, 150) is None
    assert h.decide(6, 150) == "out"  # above since 3
    h.acted(6)
    assert h.decide(10, 10) is None  # cooling down
    assert h.decide(14, 10) is None  # low since 10, but the cooldown ends at 16
    assert h.decide(16, 10) == "in"
    h.acted(16)
    assert h.decide(30, 60) is None  # between the thresholds: no action either way


# ---- the load generator's own counts, against real sockets ---------------------------------


class Server:
    """Answers HTTP requests (keep-alive), or resets each connection at its first request."""

    def __init__(self, reset: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.reset = reset
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while conn.recv(4096):
                if self.reset:  # SO_LINGER 0: close() sends a RST
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    def close(self) -> None:
        self.sock.close()


def generate(tmp_path: Path, port: int, **spec) -> dict:
    out = tmp_path / f"gen-{port}.jsonl"
    s = LoadSpec("127.0.0.1", port, time.monotonic(), spec.pop("duration_s", 1.5), str(out),
                 **spec)  # fmt: skip
    asyncio.run(LoadGenerator(s).run())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return next(r["summary"] for r in lines if "summary" in r)


def test_the_generator_counts_resets_itself(tmp_path: Path) -> None:
    server = Server(reset=True)
    try:
        got = generate(tmp_path, server.port, persistent=5, schedule=[(0.0, 0.0)])
    finally:
        server.close()
    assert (got["attempted"], got["established"], got["reset"], got["completed"]) == (5, 5, 5, 0)


def test_the_generator_counts_completed_connections_and_answers(tmp_path: Path) -> None:
    server = Server(reset=False)
    try:
        # 10 connections a second for 1 s, each open 0.3 s with a request every 0.1 s; the
        # run lasts 2 s, so none is cut short by its end
        got = generate(tmp_path, server.port, duration_s=2.0,
                       schedule=[(0.0, 10.0), (1.0, 0.0)], hold_s=0.3,
                       request_interval_s=0.1)  # fmt: skip
    finally:
        server.close()
    assert (got["scheduled"], got["attempted"], got["established"], got["completed"]) == (
        10, 10, 10, 10)  # fmt: skip
    assert got["reset"] == got["failed"] == 0
    assert got["requests"] == got["responses"] == 30


def test_the_generator_counts_refused_connections_as_failed(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = generate(tmp_path, port, persistent=3, schedule=[(0.0, 0.0)])
    assert (got["attempted"], got["established"], got["failed"]) == (3, 0, 3)


def test_the_readmes_scenario_example_parses() -> None:
    text = (REPO / "README.md").read_text()
    example = text[text.index("```yaml\nname: mine") + len("```yaml\n") :]
    s = parse_scenario(example[: example.index("```")], REPO / "mine.yaml")
    assert [e.kind for e in s.events] == ["pp_scale_out", "pp_crash", "fm_failover"]
    assert s.topology.fms == 2  # a failover needs a standby: the default has one


GROUP_WITH_POLICY = BASE.replace(
    "groups: [{name: g1, nodes: 2, spares: 1}]",
    "groups: [{name: g1, nodes: 2, spares: 1, rate_policy: RATES}]",
)


def test_a_groups_rate_policy_reaches_its_nodes_as_given() -> None:
    s = scenario(base=GROUP_WITH_POLICY.replace("RATES", "{capacity: 900, tenants: [{id: 7}]}"))
    policy = s.topology.groups[0].rate_policy
    assert yaml.safe_load(yaml.safe_dump(policy)) == {"capacity": 900, "tenants": [{"id": 7}]}


def test_a_rate_policy_on_bmv2_nodes_or_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"s.yaml:4: .*rate_policy: .*must be xdp"):
        scenario(base=GROUP_WITH_POLICY.replace("RATES", "{capacity: 9}").replace(
            "spares: 1,", "spares: 1, spare_kind: bmv2,"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"rate_policy.*expected a mapping"):
        scenario(base=GROUP_WITH_POLICY.replace("RATES", "fast"))
