"""`lab/hops.py`: a lone run's timeline files read into per-hop medians (hand-computed)."""

from __future__ import annotations

from pathlib import Path

from cyberstar.lab import hops

MS = 1_000_000  # ns


def write(directory: Path, name: str, events: list[tuple[str, int]]) -> None:
    (directory / f"{name}.events").write_text("".join(f"{e} {t}\n" for e, t in events))


def test_medians_steps_and_repeated_events(tmp_path) -> None:
    # Three connections 10 ms apart; the PP reads the punt, FM receives it 300 / 500 / 400 µs
    # later, and a chain event is seen twice (middle, then tail) in each.
    anchors = [10 * MS, 20 * MS, 30 * MS]
    write(tmp_path, "100", [("pp.punts_read", a) for a in anchors])
    fm = [300_000, 500_000, 400_000]
    write(tmp_path, "200", [("fm.packet_in", a + d) for a, d in zip(anchors, fm, strict=True)])
    chain = []
    for a in anchors:
        chain += [("sc.chain_frames_received", a + d) for d in (600_000, 900_000)]
    write(tmp_path, "300", chain)
    found = hops.timeline(hops.read_events(tmp_path, 0.0, 1.0))
    assert found["connections"] == 3 and found["left_out"] == 0
    assert found["events"] == [
        {"event": "pp.punts_read", "p50_us": 0.0, "p90_us": 0.0, "step_us": 0.0},
        {"event": "fm.packet_in", "p50_us": 400.0, "p90_us": 500.0, "step_us": 400.0},
        {"event": "sc.chain_frames_received", "p50_us": 600.0, "p90_us": 600.0, "step_us": 200.0},
        {"event": "sc.chain_frames_received#2", "p50_us": 900.0, "p90_us": 900.0,
         "step_us": 300.0},
    ]  # fmt: skip


def test_the_window_and_incomplete_connections(tmp_path) -> None:
    # A connection before the window, two complete ones inside it, one whose FM event is
    # missing (left out), and a line cut short by a killed daemon (ignored).
    write(tmp_path, "100", [("pp.punts_read", t * MS) for t in (5, 20, 30, 40)])
    (tmp_path / "200.events").write_text(
        f"fm.packet_in {5 * MS + 100_000}\nfm.packet_in {20 * MS + 200_000}\n"
        f"fm.packet_in {30 * MS + 400_000}\nfm.packet_in 4"
    )
    found = hops.timeline(hops.read_events(tmp_path, 0.010, 0.050))
    # Read once, cut by window: the same events as reading the window.
    everything = hops.read_events(tmp_path, 0.0, 1.0)
    assert len(everything) == 7  # 4 punts, 3 whole FM lines: "fm.packet_in 4" is cut short
    assert hops.within(everything, 0.010, 0.050) == hops.read_events(tmp_path, 0.010, 0.050)
    assert [t for t, _ in hops.within(everything, 0.020, 0.030)] == [20 * MS, 20 * MS + 200_000,
                                                                      30 * MS]  # fmt: skip
    assert found["connections"] == 2 and found["left_out"] == 1
    assert [r["event"] for r in found["events"]] == ["pp.punts_read", "fm.packet_in"]
    assert found["events"][1]["p50_us"] == 300.0  # the median of 200 and 400


def test_no_files(tmp_path) -> None:
    empty = {"connections": 0, "left_out": 0, "events": []}
    assert hops.timeline(hops.read_events(tmp_path, 0.0, 1.0)) == empty


def test_stream_writes_are_matched_in_order(tmp_path) -> None:
    # Two StreamWrites in flight at once: FM queues both, the PP takes, applies and answers
    # them in order. Per StreamWrite (µs): to the PP 100 / 300, apply 50 / 70, send 200 / 400,
    # back to FM 150 / 250.
    write(tmp_path, "fm", [
        ("fm.stream_write_queued", 10 * MS), ("fm.stream_write_queued", 10 * MS + 10_000),
        ("fm.stream_write_result", 10 * MS + 500_000),
        ("fm.stream_write_result", 10 * MS + 10_000 + 1_020_000),
    ])  # fmt: skip
    write(tmp_path, "pp", [
        ("pp.stream_write_received", 10 * MS + 100_000),
        ("pp.write_applied", 10 * MS + 150_000),
        ("pp.stream_write_received", 10 * MS + 10_000 + 300_000),
        ("pp.packet_outs_sent", 10 * MS + 350_000),
        ("pp.write_applied", 10 * MS + 10_000 + 370_000),
        ("pp.packet_outs_sent", 10 * MS + 10_000 + 770_000),
    ])  # fmt: skip
    found = hops.stream_writes(hops.read_events(tmp_path, 0.0, 1.0))
    assert found["stream_writes"] == 2
    assert [(s["p50_us"], s["p90_us"]) for s in found["steps"]] == [
        (200.0, 300.0), (60.0, 70.0), (300.0, 400.0), (200.0, 250.0),
    ]  # fmt: skip
