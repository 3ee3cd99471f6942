"""Targets that run the PP pipeline on frames: the reference model, XDP, bmv2.

Every target takes the same validated entries and answers with the same `Outcome`, so one
case table runs on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cyberstar.pipeline.entries import TableEntry

VERDICTS = ("forward", "drop", "punt", "pass")


@dataclass(frozen=True)
class Outcome:
    verdict: str
    port: int | None = None
    output: bytes | None = None  # bytes that leave (forward) or reach the controller (punt)
    drop_reason: str | None = None  # a `drop_reasons` label, for drops


class Target(Protocol):
    name: str

    def install(self, entries: list[TableEntry]) -> None: ...

    def process(self, frame: bytes, ingress_port: int) -> Outcome: ...

    def close(self) -> None: ...
