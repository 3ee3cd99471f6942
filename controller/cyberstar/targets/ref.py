"""The reference model as a target."""

from __future__ import annotations

from cyberstar.pipeline.entries import TableEntry
from cyberstar.ref.model import RefModel
from cyberstar.targets import Outcome


class RefTarget:
    name = "ref"

    def __init__(self) -> None:
        self.model = RefModel()

    def install(self, entries: list[TableEntry]) -> None:
        self.model.install(entries)

    def process(self, frame: bytes, ingress_port: int) -> Outcome:
        r = self.model.process(frame, ingress_port)
        output = r.output if r.verdict in ("forward", "punt") else None
        return Outcome(r.verdict, r.port, output, r.drop_reason)

    def close(self) -> None:
        pass
