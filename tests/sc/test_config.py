"""SC.yaml: a good file loads; every bad one is refused with the file and line of the mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cyberstar.sc.config import ConfigError, load_config, parse_config

GOOD = """\
node_id: sc1a
listen: 127.0.0.1:7101
etcd: [127.0.0.1:2379]
scg: scg1
idle_timeout_s: 20
tenants:
  - id: 7
    chain: [fw, nat]
    forward_nexthop: 2
    return_nexthop: 1
    home_scg: scg1
    nfs:
      fw:
        kind: firewall
        sets: {clients: [10.0.0.0/8]}
        rules: [{action: allow, src: [clients]}]
      nat: {kind: snat, pool: ["203.0.113.1:1024-65535", "198.51.100.0/30"]}
"""


def test_good_config_loads() -> None:
    cfg = parse_config(GOOD, "sc.yaml")
    t = cfg.tenants[7]
    assert [nf.kind for nf in t.chain] == ["firewall", "snat"]
    assert t.idle_timeout_ns == 20 * 10**9 and t.home_scg == "scg1"
    assert cfg.etcd == (("127.0.0.1", 2379),)
    assert len(t.chain[1].pools()["ports"]) == 5  # one address + a /30


@pytest.mark.parametrize(
    ("old", "new", "line", "words"),
    [
        ("scg: scg1", "scg: ''", 4, "non-empty string"),
        ("    chain: [fw, nat]", "    chain: [fw, natt]", 8, "no NF named 'natt'"),
        ("      nat: {kind: snat", "      nat: {kind: snot", 17, "unknown NF kind"),
        ('"203.0.113.1:1024-65535"', '"203.0.113.1:1024-70000"', 17, "port range"),
        ("rules: [{action: allow", "rules: [{action: allwo", 16, "allow or deny"),
        ("    forward_nexthop: 2", "    forward_nexthop: -2", 9, "integer in 0..65535"),
        ("    return_nexthop: 1", "    return_nexthop: 1\n    color: red", 11, "unknown key"),
        ("listen: 127.0.0.1:7101", "listen: [", 4, "not valid YAML"),
        ("listen: 127.0.0.1:7101", "listen: 0.0.0.0:7101", 2, "wildcard"),
        ("listen: 127.0.0.1:7101", "listen: 127.0.0.1:7101\nchain_listen: '[::]:0'", 3, "dial"),
        ("sets: {clients: [10.0.0.0/8]}", "sets: {clients: [10.0.0.1/8]}", 15, "host bits"),
    ],
)
def test_bad_config_names_the_line(old: str, new: str, line: int, words: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as exc:
        parse_config(GOOD.replace(old, new), "sc.yaml")
    assert str(exc.value).startswith(f"sc.yaml:{line}:"), str(exc.value)
    assert words in str(exc.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_serve_with_bad_config_exits_2_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "sc.yaml"
    bad.write_text(GOOD.replace("kind: snat", "kind: snot"))
    proc = subprocess.run(
        [sys.executable, "-m", "cyberstar.cli", "sc", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{bad}:17: tenants[0].nfs.nat.kind: unknown NF kind 'snot'" in proc.stderr
