"""Read and write INSTANCE.json and PLACEMENT.json, validating every field.

Every error is a `UsageError` whose message starts with the path of the offending field, e.g.
`instance.json: requests[3].bandwidth: expected a number >= 0, got -5`, so the CLI exits 2 with
a message that says exactly what to fix. The formats are documented in docs/orchestration.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cyberstar.errors import UsageError
from cyberstar.orchestrator.model import (
    Dynamic,
    Instance,
    Lifetime,
    Machine,
    Placement,
    Request,
)


class _Fields:
    """Typed access to one JSON object that reports errors by field path."""

    def __init__(self, source: str, path: str, obj: Any):
        self.source = source
        self.path = path
        if not isinstance(obj, dict):
            self.fail(f"expected an object, got {type(obj).__name__}")
        self.obj = obj

    def fail(self, message: str, key: str | None = None):
        where = f"{self.path}.{key}" if key and self.path else (key or self.path or "(top level)")
        raise UsageError(f"{self.source}: {where}: {message}")

    def get(self, key: str, default: Any = ...) -> Any:
        if key not in self.obj:
            if default is ...:
                self.fail("missing field", key)
            return default
        return self.obj[key]

    def number(
        self,
        key: str,
        *,
        minimum: float | None = None,
        positive: bool = False,
        maximum: float | None = None,
        default: Any = ...,
    ) -> float:
        value = self.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(f"expected a number, got {value!r}", key)
        if positive and value <= 0:
            self.fail(f"expected a number > 0, got {value!r}", key)
        if minimum is not None and value < minimum:
            self.fail(f"expected a number >= {minimum:g}, got {value!r}", key)
        if maximum is not None and value > maximum:
            self.fail(f"expected a number <= {maximum:g}, got {value!r}", key)
        return float(value)

    def integer(self, key: str, *, minimum: int = 0, default: Any = ...) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"expected an integer, got {value!r}", key)
        if value < minimum:
            self.fail(f"expected an integer >= {minimum}, got {value!r}", key)
        return value

    def string(self, key: str, default: Any = ...) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            self.fail(f"expected a non-empty string, got {value!r}", key)
        return value

    def array(self, key: str) -> list:
        value = self.get(key)
        if not isinstance(value, list):
            self.fail(f"expected an array, got {type(value).__name__}", key)
        return value


def _read_json(path: Path) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from exc


def parse_instance(data: Any, source: str = "instance") -> Instance:
    top = _Fields(source, "", data)
    threshold = top.number("threshold", positive=True, maximum=1.0)
    gmin = top.integer("gmin", minimum=1)
    gmax = top.integer("gmax", minimum=1)
    if gmin > gmax:
        top.fail(f"gmin ({gmin}) is greater than gmax ({gmax})", "gmin")
    max_overlap = top.integer("max_overlap", minimum=0)

    machines: list[Machine] = []
    seen: set[str] = set()
    for i, raw in enumerate(top.array("machines")):
        f = _Fields(source, f"machines[{i}]", raw)
        mid = f.string("id")
        if mid in seen:
            f.fail(f"duplicate machine id {mid!r}", "id")
        seen.add(mid)
        machines.append(
            Machine(
                id=mid,
                bandwidth=f.number("bandwidth", positive=True),
                compute=f.number("compute", positive=True),
                memory=f.number("memory", positive=True),
                price=f.number("price", minimum=0.0),
                kind=f.string("kind") if "kind" in f.obj else "",
            )
        )
    if not machines:
        top.fail("expected at least one machine", "machines")
    if gmin > len(machines):
        top.fail(f"gmin ({gmin}) exceeds the number of machines ({len(machines)})", "gmin")

    requests: list[Request] = []
    seen = set()
    for i, raw in enumerate(top.array("requests")):
        f = _Fields(source, f"requests[{i}]", raw)
        rid = f.string("id")
        if rid in seen:
            f.fail(f"duplicate request id {rid!r}", "id")
        seen.add(rid)
        requests.append(
            Request(
                id=rid,
                tenant=f.string("tenant"),
                nf=f.string("nf"),
                bandwidth=f.number("bandwidth", minimum=0.0),
                compute=f.number("compute", minimum=0.0),
                memory=f.number("memory", minimum=0.0),
            )
        )

    dynamic = None
    if "dynamic" in top.obj:
        dynamic = _parse_dynamic(source, top.obj["dynamic"], {r.id for r in requests})
    meta = top.get("meta", {})
    if not isinstance(meta, dict):
        top.fail("expected an object", "meta")
    return Instance(threshold, gmin, gmax, max_overlap, machines, requests, dynamic, meta)


def _parse_dynamic(source: str, raw: Any, request_ids: set[str]) -> Dynamic:
    f = _Fields(source, "dynamic", raw)
    steps = f.integer("steps", minimum=1)
    step_seconds = f.number("step_seconds", positive=True)
    lifetimes_raw = f.get("requests")
    if not isinstance(lifetimes_raw, dict):
        f.fail("expected an object mapping request ids to lifetimes", "requests")
    lifetimes: dict[str, Lifetime] = {}
    for rid, life in lifetimes_raw.items():
        if rid not in request_ids:
            f.fail(f"unknown request id {rid!r}", f"requests.{rid}")
        lf = _Fields(source, f"dynamic.requests.{rid}", life)
        arrive = lf.integer("arrive", minimum=0)
        depart = lf.integer("depart", minimum=arrive + 1)
        if depart > steps:
            lf.fail(f"depart ({depart}) is after the last step ({steps})", "depart")
        load = lf.array("load")
        if len(load) != depart - arrive:
            lf.fail(f"expected {depart - arrive} values (depart - arrive), got {len(load)}", "load")
        for k, v in enumerate(load):
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
                lf.fail(f"expected a number >= 0, got {v!r}", f"load[{k}]")
        lifetimes[rid] = Lifetime(arrive, depart, tuple(float(v) for v in load))
    missing = request_ids - lifetimes.keys()
    if missing:
        f.fail(
            f"no lifetime for request {sorted(missing)[0]!r} ({len(missing)} missing)", "requests"
        )
    return Dynamic(step_seconds=step_seconds, steps=steps, lifetimes=lifetimes)


def load_instance(path: Path | str) -> Instance:
    return parse_instance(_read_json(Path(path)), str(path))


def instance_to_json(instance: Instance) -> dict:
    out: dict = {
        "threshold": instance.threshold,
        "gmin": instance.gmin,
        "gmax": instance.gmax,
        "max_overlap": instance.max_overlap,
        "machines": [
            {
                "id": m.id,
                "bandwidth": m.bandwidth,
                "compute": m.compute,
                "memory": m.memory,
                "price": m.price,
                **({"kind": m.kind} if m.kind else {}),
            }
            for m in instance.machines
        ],
        "requests": [
            {
                "id": r.id,
                "tenant": r.tenant,
                "nf": r.nf,
                "bandwidth": r.bandwidth,
                "compute": r.compute,
                "memory": r.memory,
            }
            for r in instance.requests
        ],
    }
    if instance.dynamic is not None:
        out["dynamic"] = {
            "step_seconds": instance.dynamic.step_seconds,
            "steps": instance.dynamic.steps,
            "requests": {
                rid: {"arrive": lf.arrive, "depart": lf.depart, "load": list(lf.load)}
                for rid, lf in instance.dynamic.lifetimes.items()
            },
        }
    if instance.meta:
        out["meta"] = instance.meta
    return out


def save_instance(instance: Instance, path: Path | str) -> None:
    Path(path).write_text(json.dumps(instance_to_json(instance), separators=(",", ":")) + "\n")


def parse_placement(data: Any, source: str = "placement") -> Placement:
    """Structure only; whether ids exist and constraints hold is the checker's job."""
    top = _Fields(source, "", data)
    raw = top.get("assignments")
    if not isinstance(raw, dict):
        top.fail("expected an object mapping request ids to machine id lists", "assignments")
    assignments: dict[str, list[str]] = {}
    for rid, machines in raw.items():
        if not isinstance(machines, list) or not all(isinstance(m, str) for m in machines):
            top.fail("expected an array of machine ids", f"assignments.{rid}")
        assignments[rid] = list(machines)
    rejected = top.get("rejected", [])
    if not isinstance(rejected, list) or not all(isinstance(r, str) for r in rejected):
        top.fail("expected an array of request ids", "rejected")
    cost = top.number("cost", minimum=0.0)
    return Placement(assignments, list(rejected), cost, str(top.get("algo", "")))


def check_placement_ids(instance: Instance, placement: Placement, source: str) -> None:
    """Unknown request or machine ids make a placement file invalid input (exit 2), not a
    placement that merely violates a constraint."""
    requests = {r.id for r in instance.requests}
    machines = {m.id for m in instance.machines}
    for rid, mids in placement.assignments.items():
        if rid not in requests:
            raise UsageError(f"{source}: assignments.{rid}: unknown request id {rid!r}")
        for k, mid in enumerate(mids):
            if mid not in machines:
                raise UsageError(f"{source}: assignments.{rid}[{k}]: unknown machine id {mid!r}")
    for k, rid in enumerate(placement.rejected):
        if rid not in requests:
            raise UsageError(f"{source}: rejected[{k}]: unknown request id {rid!r}")


def load_placement(path: Path | str) -> Placement:
    return parse_placement(_read_json(Path(path)), str(path))


def save_placement(placement: Placement, path: Path | str) -> None:
    Path(path).write_text(json.dumps(placement.to_json(), indent=1) + "\n")
