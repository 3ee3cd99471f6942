"""cyberstar's processes choose gRPC's iomgr transports (`cyberstar.grpc_transport`) before
gRPC starts, keep an operator's own choice, and the installed grpcio knows the experiments the
choice names."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cyberstar.grpc_transport import EXPERIMENTS

# Runs `cyberstar sc serve --help` (its module imports grpc) and prints, after the help, the
# GRPC_EXPERIMENTS it found when grpc was first imported.
AT_GRPC_IMPORT = textwrap.dedent("""
    import builtins, os
    seen = []
    real_import = builtins.__import__
    def watch(name, *args, **kwargs):
        if name.split(".")[0] == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS", "<unset>"))
        return real_import(name, *args, **kwargs)
    builtins.__import__ = watch
    from cyberstar import cli
    try:
        cli.main(["sc", "serve", "--help"])
    except SystemExit:
        pass
    print(seen[0] if seen else "<grpc never imported>")
""")

# A grpc.aio server and a channel that calls it once: gRPC core starts and reads the variable.
ONE_CALL = textwrap.dedent("""
    import asyncio, grpc
    async def main():
        async def echo(request, context):
            return request
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "t.T", {"E": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await channel.unary_unary("/t.T/E")(b"ping", timeout=10)
        await server.stop(None)
        print(answer.decode())
    asyncio.run(main())
""")


def _run(code: str, env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if env_value is not None:
        env["GRPC_EXPERIMENTS"] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_the_cli_chooses_the_transports_before_grpc_is_imported() -> None:
    done = _run(AT_GRPC_IMPORT, None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == EXPERIMENTS


@pytest.mark.parametrize("own", ["", "-event_engine_dns"])
def test_an_operators_own_choice_is_kept(own: str) -> None:
    done = _run(AT_GRPC_IMPORT, own)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == own


def test_the_installed_grpc_knows_the_chosen_experiments() -> None:
    done = _run(ONE_CALL, EXPERIMENTS)
    assert done.stdout.strip() == "ping", done.stderr
    assert "Unknown experiment" not in done.stderr, done.stderr


def test_an_unknown_experiment_is_reported_where_the_check_above_looks() -> None:
    done = _run(ONE_CALL, "-no_such_experiment")
    assert done.stdout.strip() == "ping", done.stderr
    assert "Unknown experiment: no_such_experiment" in done.stderr
