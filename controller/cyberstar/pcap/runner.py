"""Push a pcap through a target: one verdict per input frame, and the frames that leave."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cyberstar.pcap.pcapfile import Packet, write_pcap
from cyberstar.targets import Outcome, Target


@dataclass(frozen=True)
class RunReport:
    outcomes: list[Outcome]

    def summary(self) -> dict[str, int]:
        counts = {"packets": len(self.outcomes)}
        for o in self.outcomes:
            counts[o.verdict] = counts.get(o.verdict, 0) + 1
        return counts


def run_packets(target: Target, packets: list[Packet], ingress_port: int) -> RunReport:
    return RunReport([target.process(p.data, ingress_port) for p in packets])


def write_results(out_dir: Path, packets: list[Packet], report: RunReport) -> None:
    """`verdicts.jsonl` (one line per input frame, in order, with the reason of a drop) and
    `out.pcap` (the bytes each forwarded or punted frame leaves with, in input order, with the
    input's timestamp)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "verdicts.jsonl").open("w") as f:
        for i, o in enumerate(report.outcomes):
            line = {"index": i, "verdict": o.verdict, "port": o.port}
            if o.drop_reason:
                line["drop_reason"] = o.drop_reason
            f.write(json.dumps(line) + "\n")
    write_pcap(
        out_dir / "out.pcap",
        (
            Packet(o.output, p.ts_ns)
            for p, o in zip(packets, report.outcomes, strict=True)
            if o.output is not None
        ),
    )
