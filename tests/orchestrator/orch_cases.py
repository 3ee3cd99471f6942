"""Instances shared by the orchestrator tests (imported by name: test modules here have no
package, so pytest puts this directory on sys.path)."""

from __future__ import annotations

from cyberstar.cli import main
from cyberstar.errors import UsageError
from cyberstar.orchestrator.azure import trace_dir


def azure_available() -> bool:
    """The Azure trace the azure families read is where `trace_dir` looks."""
    try:
        trace_dir()
    except UsageError:
        return False
    return True


def cli(*args) -> int:
    """Run `cyberstar ARGS...` in-process; returns the exit code."""
    return main([str(a) for a in args])


def tiny_instance_json(**overrides) -> dict:
    """Four machines, three requests; every field valid."""
    data = {
        "threshold": 0.5,
        "gmin": 2,
        "gmax": 3,
        "max_overlap": 1,
        "machines": [
            {"id": f"m{i}", "bandwidth": 10000, "compute": 16, "memory": 64, "price": 1.0 + i / 10}
            for i in range(4)
        ],
        "requests": [
            {"id": "r0", "tenant": "t0", "nf": "nat", "bandwidth": 3000, "compute": 2, "memory": 4},
            {"id": "r1", "tenant": "t1", "nf": "lb", "bandwidth": 500, "compute": 1, "memory": 20},
            {"id": "r2", "tenant": "t2", "nf": "nat", "bandwidth": 1000, "compute": 1, "memory": 2},
        ],
    }
    data.update(overrides)
    return data
