"""The idle-timeout scan's pace: a full pass takes a quarter of the shortest idle timeout, even
when the table is almost empty. The kernel's batch walk visits every bucket of the flow-table
map (a million by default) however few entries it holds, so an agent that started the next
pass as soon as one ended walked the whole map ten times a second with three entries in it.
Notifications stay on time: an entry is reported within its timeout plus one pass."""

from __future__ import annotations

import time

import pytest

from cyberstar.p4rt.codec import update
from cyberstar.pipeline.pp import PIPELINE
from pp.scrape import metered_agent, metric
from pp.test_p4rt_server import flow_entry

pytestmark = pytest.mark.root
INSERT = 1
TIMEOUT_S = 8.0  # a pass every 2 s


def _idle_passes(port: int, tls) -> int:
    return metric(port, tls, "cyberstar_pp_idle_passes_total")


def test_a_small_table_is_walked_once_a_pass_not_every_tick() -> None:
    with metered_agent("idle") as (node, port):
        c = node.primary_with_pipeline()
        updates = []
        for sport in (1, 2, 3):
            u = update(INSERT, PIPELINE, flow_entry(sport=sport))
            u.entity.table_entry.idle_timeout_ns = int(TIMEOUT_S * 1e9)
            updates.append(u)
        c.write(updates)
        t0 = time.monotonic()
        first = _idle_passes(port, node.tls)
        time.sleep(5.0)
        passes = _idle_passes(port, node.tls) - first
        elapsed = time.monotonic() - t0
        # One pass per TIMEOUT_S / 4: about 2.5 here (the agent ticks every 0.1 s, so a
        # walk of the whole map on every tick would make ~50).
        assert 1 <= passes <= elapsed / (TIMEOUT_S / 4) + 1, passes
        # And still on time: idle since the write, reported within a pass of the timeout.
        note = c.idle_notifications.get(timeout=TIMEOUT_S + 5)
        late = time.monotonic() - t0 - TIMEOUT_S
        assert -0.5 <= late <= TIMEOUT_S / 4 + 1.0, late
        assert len(note.table_entry) == 3
