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
etcd: {endpoints: [127.0.0.1:2379], plaintext: true}
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
plaintext: true
"""


def test_good_config_loads() -> None:
    cfg = parse_config(GOOD, "sc.yaml")
    t = cfg.tenants[7]
    assert [nf.kind for nf in t.chain] == ["firewall", "snat"]
    assert t.idle_timeout_ns == 20 * 10**9 and t.home_scg == "scg1"
    assert cfg.etcd.endpoints == (("127.0.0.1", 2379),) and cfg.etcd.tls is None
    assert cfg.tls is None
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
        ("listen: 127.0.0.1:7101", "listen: 127.0.0.1:7101\ncompute_listen: 0.0.0.0:0", 3, "dial"),
        (
            "listen: 127.0.0.1:7101",
            "listen: 127.0.0.1:7101\ncompute_listen: 127.0.0.1:x",
            3,
            "expected host:port, found '127.0.0.1:x'",
        ),
        (
            "listen: 127.0.0.1:7101",
            "listen: 127.0.0.1:7101\ncompute_listen: 10.1.2.3:0",
            3,
            "not a loopback address, and the node is plaintext",
        ),
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


SECOND_TENANT = """\
  - id: 8
    chain: [nat]
    forward_nexthop: 2
    return_nexthop: 1
    nfs:
      nat: {kind: snat, pool: ["POOL"]}
"""


@pytest.mark.parametrize(
    ("pool", "overlaps"),
    [
        ("203.0.113.1:30000-30010", True),  # inside tenant 7's 203.0.113.1:1024-65535
        ("198.51.100.2:5000-5001", True),  # inside tenant 7's /30
        ("203.0.113.9:20000-29999", False),
        ("198.51.100.4/30", False),
    ],
)
def test_snat_pools_overlapping_across_tenants_are_refused(pool: str, overlaps: bool) -> None:
    """docs/sc.md promises it; the unhardened loader accepted two tenants sharing a pool."""
    text = GOOD.replace(
        "plaintext: true\n", SECOND_TENANT.replace("POOL", pool) + "plaintext: true\n"
    )
    if not overlaps:
        assert parse_config(text, "sc.yaml").tenants[8].chain[0].pools()
        return
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "sc.yaml")
    assert str(exc.value).startswith("sc.yaml:"), str(exc.value)
    assert "tenants[1].nfs.nat.pool: overlaps the pool of tenant 7's NF nat" in str(exc.value)


def test_two_nfs_of_one_tenant_may_not_share_a_pool() -> None:
    text = GOOD.replace(
        '      nat: {kind: snat, pool: ["203.0.113.1:1024-65535", "198.51.100.0/30"]}\n',
        '      nat: {kind: snat, pool: ["203.0.113.1:1024-65535", "198.51.100.0/30"]}\n'
        '      nat2: {kind: snat, pool: ["203.0.113.1:40000-40001"]}\n',
    )
    with pytest.raises(ConfigError, match=r"nat2\.pool: overlaps the pool of tenant 7's NF nat"):
        parse_config(text, "sc.yaml")


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("plaintext: true\n", "", "missing key 'tls'"),
        ("plaintext: true\n", "plaintext: yes-please\n", "expected true"),
        ("etcd: {endpoints: [127.0.0.1:2379], plaintext: true}", "etcd: [127.0.0.1:2379]",
         "bare list"),
        ("etcd: {endpoints: [127.0.0.1:2379], plaintext: true}",
         "etcd: {endpoints: [10.0.0.1:2379], plaintext: true}", "not local"),
        ("etcd: {endpoints: [127.0.0.1:2379], plaintext: true}",
         "etcd: {endpoints: [127.0.0.1:2379], plaintext: true, user: sc}", "password_file"),
        ("listen: 127.0.0.1:7101", "listen: 10.0.0.1:7101", "not a loopback address"),
        ("plaintext: true\n", "plaintext: true\nlimits: {max_batch: 0}\n", "max_batch"),
        # FM's router sends up to 256 items per call: a node taking fewer would refuse them.
        ("plaintext: true\n", "plaintext: true\nlimits: {max_batch: 255}\n",
         "max_batch: expected an integer in 256..1048576, found 255"),
    ],
)  # fmt: skip
def test_security_settings_are_explicit(old: str, new: str, words: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as exc:
        parse_config(GOOD.replace(old, new), "sc.yaml")
    assert words in str(exc.value), str(exc.value)


def test_tls_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sc.yaml"
    path.write_text(
        GOOD.replace("plaintext: true\n", "tls: {ca: c/ca.crt, cert: c/a.crt, key: c/a.key}\n")
    )
    cfg = load_config(path)
    assert cfg.tls is not None and cfg.tls.ca == tmp_path / "c" / "ca.crt"


def test_a_missing_top_level_key_has_no_empty_field() -> None:
    """The unhardened message read 'missing.yaml:1: : missing required key'."""
    with pytest.raises(ConfigError) as exc:
        parse_config("listen: 127.0.0.1:1\n", "missing.yaml")
    assert str(exc.value) == "missing.yaml:1: missing required key 'node_id'"
