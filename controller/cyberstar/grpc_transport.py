"""Which of gRPC core's transports cyberstar's processes use, chosen before gRPC starts.

grpcio runs client connections and listeners on its EventEngine by default, which passes each
read and write between its own threads and the caller's. On the 2-core machine this project
is measured on, gRPC's older iomgr transports (still shipped, selected by turning those
experiments off) take fewer thread hops per message: a round trip of two messages on an open
grpc.aio stream with mutual TLS between two processes takes about 30 % less wall and CPU time
(`bench/grpc_floor.py`, figures in docs/performance.md), and the slow path's CPU per
connection at 8 client threads is 8 to 11 % lower.

The switch is gRPC's own `GRPC_EXPERIMENTS` variable, which gRPC core reads once when it
starts: `select_transports` sets it unless the environment already does (an operator's own
choice wins, `GRPC_EXPERIMENTS=` restores gRPC's defaults). A gRPC that no longer knows these
experiments logs "Unknown experiment" and runs its defaults; the test suite checks the names
against the installed grpcio.
"""

from __future__ import annotations

import os

# Experiments turned off (a leading "-" in GRPC_EXPERIMENTS): the EventEngine client and
# listener, so channels and servers run on the iomgr TCP transports.
EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def select_transports() -> None:
    """Choose the iomgr transports for this process unless GRPC_EXPERIMENTS is already set.
    Call it before anything creates a gRPC channel or server."""
    os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
