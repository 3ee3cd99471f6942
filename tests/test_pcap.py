"""pcap files and `cyberstar pcap run` on the ref and xdp targets."""

from __future__ import annotations

import json

import pytest
from conformance.cases import BASE_RULES, SNAT, client_tcp

from cyberstar import p4tools
from cyberstar.cli import main
from cyberstar.pcap.pcapfile import Packet, PcapError, read_pcap, write_pcap


def test_pcap_round_trip(tmp_path) -> None:
    packets = [Packet(b"\x01" * 60, 1_500_000_000_123_456_789), Packet(b"\x02" * 14, 7)]
    write_pcap(tmp_path / "a.pcap", packets)
    assert read_pcap(tmp_path / "a.pcap") == packets


def test_microsecond_pcap_from_scapy(tmp_path) -> None:
    from scapy.utils import wrpcap

    wrpcap(str(tmp_path / "s.pcap"), [client_tcp()])
    (packet,) = read_pcap(tmp_path / "s.pcap")
    assert packet.data == bytes(client_tcp())


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short for a pcap global header"),
        (b"\x0a\x0d\x0d\x0a" + b"\0" * 40, "pcapng is not supported"),
        (b"hello world, this is not a pcap", "not a pcap file"),
    ],
)
def test_unreadable_pcap_is_a_clear_error(tmp_path, blob: bytes, message: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(blob)
    with pytest.raises(PcapError, match=message):
        read_pcap(path)


def test_truncated_record_names_the_record(tmp_path) -> None:
    write_pcap(tmp_path / "a.pcap", [Packet(b"\x01" * 60), Packet(b"\x02" * 60)])
    blob = (tmp_path / "a.pcap").read_bytes()
    (tmp_path / "cut.pcap").write_bytes(blob[:-10])
    with pytest.raises(PcapError, match="record 1 is truncated: 60 bytes announced, 50 left"):
        read_pcap(tmp_path / "cut.pcap")


def test_cli_truncated_pcap_exits_2(tmp_path, capsys) -> None:
    (tmp_path / "rules.json").write_text("[]")
    (tmp_path / "in.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 10)
    code = main(
        [
            "pcap", "run", "--target", "ref", "--rules", str(tmp_path / "rules.json"),
            "--in", str(tmp_path / "in.pcap"), "--out-dir", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "too short for a pcap global header" in capsys.readouterr().err


def _run(tmp_path, target: str, capsys) -> tuple[list[dict], list[Packet]]:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([*BASE_RULES, SNAT]))
    hit = bytes(client_tcp())
    miss = client_tcp()
    miss["TCP"].sport = 1
    write_pcap(
        tmp_path / "in.pcap",
        [
            Packet(hit, 1),
            Packet(bytes(miss), 2),
            Packet(hit[:20], 3),
            Packet(b"\xff" * 12 + b"\x08\x06" + b"\0" * 28, 4),
            Packet(bytes(client_tcp(b"g" * 20000)), 5),  # a GSO super-frame, as hosts capture
        ],
    )
    out = tmp_path / target
    code = main(
        [
            "pcap", "run", "--target", target, "--rules", str(rules),
            "--in", str(tmp_path / "in.pcap"), "--out-dir", str(out), "--ingress-port", "1",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "target": target,
        "packets": 5,
        "forward": 1,
        "punt": 1,
        "drop": 2,
        "pass": 1,
    }
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    return verdicts, read_pcap(out / "out.pcap")


EXPECTED_VERDICTS = [
    {"index": 0, "verdict": "forward", "port": 2},
    {"index": 1, "verdict": "punt", "port": None},
    {"index": 2, "verdict": "drop", "port": None, "drop_reason": "truncated_ipv4"},
    {"index": 3, "verdict": "pass", "port": None},
    {"index": 4, "verdict": "drop", "port": None, "drop_reason": "frame_too_long"},
]


def test_pcap_run_ref(tmp_path, capsys) -> None:
    verdicts, out = _run(tmp_path, "ref", capsys)
    assert verdicts == EXPECTED_VERDICTS
    assert [p.ts_ns for p in out] == [1, 2]  # forwarded and punted, input order


@pytest.mark.root
def test_pcap_run_xdp_equals_ref(tmp_path, capsys, xdp_target) -> None:
    verdicts, out = _run(tmp_path, "xdp", capsys)
    ref_verdicts, ref_out = _run(tmp_path, "ref", capsys)
    assert verdicts == ref_verdicts == EXPECTED_VERDICTS
    assert out == ref_out


@pytest.mark.bmv2
@pytest.mark.usefixtures("bmv2_tools")
def test_pcap_run_bmv2_equals_ref(tmp_path, capsys) -> None:
    verdicts, out = _run(tmp_path, "bmv2", capsys)
    ref_verdicts, ref_out = _run(tmp_path, "ref", capsys)
    assert verdicts == ref_verdicts == EXPECTED_VERDICTS
    assert out == ref_out


def test_bmv2_target_without_tools_exits_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CYBERSTAR_P4_BIN", raising=False)
    monkeypatch.setattr(p4tools, "DEFAULT_P4_BIN", tmp_path)
    (tmp_path / "rules.json").write_text("[]")
    write_pcap(tmp_path / "in.pcap", [])
    code = main(
        [
            "pcap", "run", "--target", "bmv2", "--rules", str(tmp_path / "rules.json"),
            "--in", str(tmp_path / "in.pcap"), "--out-dir", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "simple_switch_grpc and p4c-bm2-ss not installed" in capsys.readouterr().err
