"""`bench/slowpath.py --timeline` on a real lab: with CYBERSTAR_TIMELINE_DIR set, a lone first
packet leaves a mark at every hop of the slow path, in the order the design says the packet and
its answer travel (PP → FM → SC head → middle → tail → FM → PP), and what `lab/hops.py` reads
from them fits inside the client's own connect() time."""

from __future__ import annotations

import os
import statistics
import time

import pytest

from cyberstar import timeline
from cyberstar.lab import hops
from cyberstar.lab.slowpath import SERVER_PORT, SERVERS
from fm.helpers import running_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

# The path of a first packet and of its answer, hop by hop (docs/architecture.md).
PATH = [
    "pp.punts_read",
    "pp.packet_ins_queued",
    "fm.packet_in",
    "fm.batch_started",
    "fm.sc_asked",
    "sc.compute_frames_received",  # the head
    "sc.chain_frames_received",  # the middle
    "sc.chain_frames_received#2",  # the tail
    "sc.tail_answering",
    "fm.sc_frames_received",
    "fm.sc_answered",
    "fm.stream_write_queued",
    "pp.stream_write_received",
    "pp.write_applied",
    "pp.packet_outs_sent",
    "fm.stream_write_result",
]


def test_a_lone_first_packet_marks_every_hop_in_order(tmp_path) -> None:
    os.environ[timeline.ENV] = str(tmp_path)
    try:
        connect_us = []
        with running_lab(scgs=1, nodes_per_scg=3, mode="native") as lab:
            lab.connect(SERVERS[0], SERVER_PORT, timeout=15).close()  # warm: chain, listeners
            time.sleep(0.2)
            start = time.monotonic()
            for _ in range(30):
                t0 = time.monotonic()
                s = lab.connect(SERVERS[0], SERVER_PORT, timeout=15)
                connect_us.append((time.monotonic() - t0) * 1e6)
                s.close()
                time.sleep(0.03)  # alone: the last hop of one is done before the next SYN
            end = time.monotonic()
    finally:
        del os.environ[timeline.ENV]
    found = hops.timeline(hops.read_events(tmp_path, start, end))
    assert found["connections"] >= 25, found
    order = [row["event"] for row in found["events"]]
    assert order == PATH, found
    by_event = {row["event"]: row for row in found["events"]}
    # The client's connect() spans its SYN's punt to its SYN-ACK, sent after the PacketOut.
    assert by_event["pp.packet_outs_sent"]["p50_us"] < statistics.median(connect_us)
