"""`cyberstar sc serve --config SC.yaml`: run one SC node until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
from pathlib import Path

from cyberstar.errors import RuntimeFailure
from cyberstar.sc.config import ScConfig, load_config
from cyberstar.verbs import Verb


def arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", type=Path, required=True, help="SC.yaml (see docs/sc.md)")


def serve_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # NF state is many small long-lived objects: full collections would stall the loop.
    gc.set_threshold(100_000, 50, 1000)
    try:
        asyncio.run(_serve(config))
    except OSError as exc:
        raise RuntimeFailure(f"SC node {config.node_id}: {exc}") from None
    return 0


async def _serve(config: ScConfig) -> None:
    from cyberstar.sc.server import ScNode

    node = ScNode(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    try:
        await node.start()
    except Exception as exc:
        await node.stop()
        raise OSError(str(exc)) from exc
    try:
        await node.wait_stopped()
    finally:
        await node.stop()


SERVE = Verb(
    help="run one SC node (a member of an SC group)",
    description="Serves the ServiceComputing gRPC API (controller/cyberstar/proto/sc.proto), "
    "joins its SC group's chain through etcd and runs until SIGTERM or SIGINT. Exit codes: "
    "0 stopped, 1 runtime failure (cannot listen, etcd unreachable), 2 bad configuration.",
    arguments=arguments,
    run=serve_command,
)
