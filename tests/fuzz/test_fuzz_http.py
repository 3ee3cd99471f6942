"""Fuzzing FM's HTTP endpoint (issue 8): random and mutated requests always get a complete HTTP
answer with a known status and, for errors, a JSON body; the connection is closed; FM keeps
answering and nothing changes (no move is started)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyberstar.fm.config import parse_fm_config
from cyberstar.fm.master import FabricMaster
from cyberstar.lab.procs import free_port

TOKEN = "fuzzfuzzfuzzfuzzfuzzfuzz"
STATUSES = {200, 400, 401, 403, 404, 405, 408, 409, 413}
SEEDS = [
    f"POST /scale?kind=out&shard=7:0-1024&to=scg2&wait_s=1 HTTP/1.1\r\n"
    f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
    f"GET /status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
    "GET /metrics HTTP/1.0\r\n\r\n",
    f"POST /scale HTTP/1.1\r\nContent-Length: 5\r\nAuthorization: Bearer {TOKEN}\r\n\r\nhello",
]


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fm")
    (tmp / "token").write_text(TOKEN)
    port = free_port()
    config = parse_fm_config(
        "fm_id: fm1\nplaintext: true\netcd: {endpoints: [127.0.0.1:2379], plaintext: true}\n"
        f"http: {{listen: 127.0.0.1:{port}, token_file: token, timeout_s: 2}}\n",
        "fm.yaml",
        tmp,
    )
    fabric = FabricMaster(config)
    # FM's own HTTP server and routes, on its loop in a thread: the test blocks on sockets.
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(fabric._serve_http(), loop).result(10)
    yield port, fabric
    asyncio.run_coroutine_threadsafe(fabric.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(draw(st.sampled_from(SEEDS)).encode())
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) + draw(st.binary(max_size=30))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=requests())
def test_every_request_gets_a_known_answer(fm, data: bytes) -> None:
    port, _ = fm
    got = exchange(port, data)
    head, _, body = got.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert status in STATUSES, got
    if status >= 400:
        assert "error" in json.loads(body), got


def test_fm_answers_and_started_nothing(fm) -> None:
    port, fabric = fm
    request = f"GET /status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    got = exchange(port, request)
    assert got.startswith(b"HTTP/1.1 200")
    status = json.loads(got.partition(b"\r\n\r\n")[2])
    assert status["leader"] is False and status["slow_path"] == {}
    assert fabric._http.stats["bad_requests"] > 0
