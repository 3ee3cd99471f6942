"""Where a first packet's time goes, hop by hop, from the daemons' timeline files
(`cyberstar/timeline.py`; `bench/slowpath.py --timeline`).

`timeline`: each connection of a lone run starts at the PP agent's `pp.punts_read` (its SYN
read from the punt buffer) and lasts until the next one. Within it, every event is taken at its
first occurrence; an event seen again in the same connection is the next hop's (`name#2`: the
chain's tail receiving the update after the middle did). Connections whose events are not the
run's most common set (a stray punt, a connection cut by the window) are left out and counted.

`stream_writes`: under load, where FM's batches of rules and packets spend their install. FM
queues its StreamWrites on one stream, the PP takes them in that order and answers them in that
order, so the k-th of each of those events in a window belongs to the k-th StreamWrite (one FM
and one PP node, as in the bench; a StreamWrite refused as a whole or never answered marks no
apply, send or result and would shift the rest: the bench's runs have none).
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import Counter
from pathlib import Path

ANCHOR = "pp.punts_read"


def read_events(directory: Path, start_s: float, end_s: float) -> list[tuple[int, str]]:
    """(nanoseconds, event) of every daemon's file in `directory` within [start_s, end_s] (the
    CLOCK_MONOTONIC seconds of `time.monotonic()`), in time order."""
    lo, hi = int(start_s * 1e9), int(end_s * 1e9)
    events = []
    for path in sorted(directory.glob("*.events")):
        text = path.read_text()
        lines = text.splitlines()
        if not text.endswith("\n"):
            lines = lines[:-1]  # cut short when its daemon was killed, perhaps inside a number
        for line in lines:
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                continue
            t = int(parts[1])
            if lo <= t <= hi:
                events.append((t, parts[0]))
    events.sort()
    return events


def within(events: list[tuple[int, str]], start_s: float, end_s: float) -> list[tuple[int, str]]:
    """The events (in time order, as `read_events` gives them) within [start_s, end_s]."""
    lo = bisect.bisect_left(events, (int(start_s * 1e9), ""))
    hi = bisect.bisect_right(events, (int(end_s * 1e9), "\uffff"))
    return events[lo:hi]


def _p50_p90(values: list[float]) -> dict[str, float | None]:
    """Median and P90 (the value at 90 % of the sorted list) in µs, rounded; None if empty."""
    if not values:
        return {"p50_us": None, "p90_us": None}
    values = sorted(values)
    return {
        "p50_us": round(statistics.median(values), 1),
        "p90_us": round(values[min(len(values) - 1, int(len(values) * 0.9))], 1),
    }


def connections(events: list[tuple[int, str]]) -> list[dict[str, int]]:
    """Per connection: each event's offset in ns from its anchor (`name#k` for the k-th time)."""
    out: list[dict[str, int]] = []
    current: dict[str, int] | None = None
    t0, seen = 0, Counter()
    for t, name in events:
        if name == ANCHOR:
            current, t0, seen = {}, t, Counter()
            out.append(current)
        if current is None:
            continue
        seen[name] += 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        current[label] = t - t0
    return out


def timeline(events: list[tuple[int, str]]) -> dict:
    """Median and P90 of each event's time after the punt was read (µs), in order of the
    median, with the median step from the event before; how many connections it rests on."""
    conns = connections(events)
    if not conns:
        return {"connections": 0, "left_out": 0, "events": []}
    shape = Counter(frozenset(c) for c in conns).most_common(1)[0][0]
    kept = [c for c in conns if frozenset(c) == shape]
    rows = [{"event": label, **_p50_p90([c[label] / 1e3 for c in kept])} for label in shape]
    rows.sort(key=lambda r: r["p50_us"])
    previous = 0.0
    for row in rows:
        row["step_us"] = round(row["p50_us"] - previous, 1)
        previous = row["p50_us"]
    return {"connections": len(kept), "left_out": len(conns) - len(kept), "events": rows}


# A StreamWrite's events, in the order they happen, and what each step between two is.
STREAM_WRITE = (
    ("fm.stream_write_queued", "FM queued it"),
    ("pp.stream_write_received", "FM → PP (gRPC stream, the PP's queue)"),
    ("pp.write_applied", "the PP applied the Write"),
    ("pp.packet_outs_sent", "the PP sent the packets"),
    ("fm.stream_write_result", "PP → FM result (gRPC stream, FM's queue)"),
)


def stream_writes(events: list[tuple[int, str]]) -> dict:
    """P50 and P90 of each step of the StreamWrites among `events` (µs), the k-th of every
    event taken as the k-th StreamWrite's."""
    times: dict[str, list[int]] = {name: [] for name, _ in STREAM_WRITE}
    for t, name in events:
        if name in times:
            times[name].append(t)
    count = min(len(v) for v in times.values())
    steps = [
        {
            "step": what,
            **_p50_p90([(times[after][k] - times[before][k]) / 1e3 for k in range(count)]),
        }
        for (before, _), (after, what) in itertools.pairwise(STREAM_WRITE)
    ]
    return {"stream_writes": count, "steps": steps}
