"""Rules files: every kind of bad entry is refused with its index and the problem."""

from __future__ import annotations

import json

import pytest

from cyberstar.cli import main
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import RulesError, parse_rules
from cyberstar.pipeline.values import LpmValue, TernaryValue

GOOD_FLOW = {
    "table": "flow_table",
    "match": {
        "tenant_id": 7,
        "src_addr": "192.168.1.2",
        "dst_addr": "10.0.0.5",
        "protocol": 6,
        "src_port": 40001,
        "dst_port": 80,
    },
    "action": "snat",
    "params": {"src_addr": "203.0.113.9", "src_port": 50000, "nexthop_id": 3},
}


def with_(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    out.update(changes)
    return out


def test_values_are_parsed_into_canonical_entries() -> None:
    entries = parse_rules(
        [
            GOOD_FLOW,
            {
                "table": "tenant_classify",
                "match": {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"},
                "action": "set_tenant",
                "params": {"tenant_id": "0x7"},
            },
            {
                "table": "acl",
                "match": {"dst_port": {"value": 22, "mask": "0xffff"}},
                "action": "acl_deny",
                "priority": 5,
            },
            {
                "table": "next_hop",
                "match": {"nexthop_id": 3},
                "action": "set_next_hop",
                "params": {"port": 2, "smac": "02:00:00:00:00:01", "dmac": "02-00-00-00-00-02"},
            },
        ],
        PIPELINE,
    )
    assert entries[0].match["src_addr"] == 0xC0A80102
    assert entries[1].match["dst_addr"] == LpmValue(0x0A000000, 8)
    assert entries[1].params["tenant_id"] == 7
    assert entries[2].match["dst_port"] == TernaryValue(22, 0xFFFF)
    assert entries[2].match["src_addr"] == TernaryValue(0, 0)  # omitted = don't care
    assert entries[3].params["dmac"] == 0x020000000002


BAD = [
    ("unknown table", with_(GOOD_FLOW, table="flows"), "unknown table 'flows'"),
    ("unknown action", with_(GOOD_FLOW, action="masquerade"), "unknown action 'masquerade'"),
    (
        "action of another table",
        with_(GOOD_FLOW, action="set_next_hop"),
        "unknown action 'set_next_hop'",
    ),
    (
        "unknown field",
        with_(GOOD_FLOW, match={**GOOD_FLOW["match"], "vlan": 3}),
        "no match field(s) vlan",
    ),
    (
        "missing exact field",
        with_(GOOD_FLOW, match={k: v for k, v in GOOD_FLOW["match"].items() if k != "protocol"}),
        "needs exact match field protocol",
    ),
    (
        "value too wide",
        with_(GOOD_FLOW, match={**GOOD_FLOW["match"], "src_port": 70000}),
        "does not fit in 16 bits",
    ),
    (
        "bad address",
        with_(GOOD_FLOW, match={**GOOD_FLOW["match"], "src_addr": "300.1.1.1"}),
        "not a valid IPv4 address",
    ),
    (
        "bad value type",
        with_(GOOD_FLOW, match={**GOOD_FLOW["match"], "src_port": [1]}),
        "found list",
    ),
    (
        "missing param",
        with_(GOOD_FLOW, params={"src_addr": "203.0.113.9", "nexthop_id": 3}),
        "missing parameter(s) src_port",
    ),
    (
        "unknown param",
        with_(GOOD_FLOW, params={**GOOD_FLOW["params"], "ttl": 3}),
        "no parameter(s) ttl",
    ),
    (
        "missing priority on a ternary table",
        {"table": "acl", "match": {}, "action": "acl_deny"},
        "need a priority > 0",
    ),
    ("priority on an exact table", with_(GOOD_FLOW, priority=3), "priority must be 0 or absent"),
    (
        "lpm bits beyond the prefix",
        {
            "table": "tenant_classify",
            "match": {"ingress_port": 1, "vni": 0, "dst_addr": "10.1.0.0/8"},
            "action": "set_tenant",
            "params": {"tenant_id": 1},
        },
        "bits set beyond its /8 prefix",
    ),
    (
        "ternary value outside the mask",
        {
            "table": "acl",
            "match": {"dst_port": {"value": 0x1FF, "mask": 0xFF}},
            "action": "acl_deny",
            "priority": 1,
        },
        "bits outside its mask",
    ),
    (
        "default-only action as an entry",
        with_(GOOD_FLOW, action="punt_miss", params={}),
        "only allowed as the default action",
    ),
    (
        "table-only action as default",
        {"table": "flow_table", "default": True, "action": "snat", "params": {}},
        "cannot be the default action",
    ),
    ("not an object", "flow_table", "expected an object"),
    ("unknown key", with_(GOOD_FLOW, comment="x"), "unknown key(s) comment"),
]


@pytest.mark.parametrize(("entry", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_entry_is_refused_with_its_index(entry, message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules([GOOD_FLOW, entry], PIPELINE)
    assert "entry 1:" in str(err.value)
    assert message in str(err.value)


def test_duplicate_entries_are_refused() -> None:
    with pytest.raises(RulesError, match="entry 1: same table and match as entry 0"):
        parse_rules([GOOD_FLOW, GOOD_FLOW], PIPELINE)


def test_cli_exits_2_and_applies_nothing(tmp_path, capsys) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([GOOD_FLOW, with_(GOOD_FLOW, table="nope")]))
    pcap = tmp_path / "in.pcap"
    pcap.write_bytes(b"")
    out = tmp_path / "out"
    code = main(
        [
            "pcap",
            "run",
            "--target",
            "ref",
            "--rules",
            str(rules),
            "--in",
            str(pcap),
            "--out-dir",
            str(out),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "entry 1: unknown table 'nope'" in err
    assert not out.exists()


def test_cli_reports_json_syntax_errors_with_line(tmp_path, capsys) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text('[\n  {"table": "acl",\n  oops}\n]')
    pcap = tmp_path / "in.pcap"
    pcap.write_bytes(b"")
    code = main(
        [
            "pcap",
            "run",
            "--target",
            "ref",
            "--rules",
            str(rules),
            "--in",
            str(pcap),
            "--out-dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "line 3" in capsys.readouterr().err
