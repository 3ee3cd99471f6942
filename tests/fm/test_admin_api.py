"""FM's admin API over real HTTP (FM's own server, in process): state changes only by POST,
every request needs the configured bearer token, bad parameters are refused before anything
starts, and every error is JSON that says what was wrong.

On the unhardened code `GET /scale` started a move for anyone, `wait_s=abc` dropped the
connection and `wait_s=nan` started a move and then answered 409 with an empty error."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from cyberstar.fm.config import parse_fm_config
from cyberstar.fm.master import FabricMaster
from cyberstar.lab.procs import free_port

TOKEN = "0123456789abcdef0123456789abcdef"
BASE = "fm_id: fm1\nplaintext: true\netcd: {endpoints: [127.0.0.1:2379], plaintext: true}\n"
SCALE = "/scale?kind=out&shard=7:0-1024&to=scg2"


def request(port: int, method: str, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            ctype = resp.headers["Content-Type"]
            return resp.status, json.loads(body) if "json" in ctype else {"text": body.decode()}
    except urllib.error.HTTPError as err:
        assert err.headers["Content-Type"] == "application/json", err.headers
        body = json.loads(err.read())
        if err.code == 401:
            assert err.headers["WWW-Authenticate"] == "Bearer"
        return err.code, body


@pytest.fixture
def fm_http(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    config = parse_fm_config(
        BASE + f"http: {{listen: 127.0.0.1:{port}, token_file: token}}\n", "fm.yaml", tmp_path
    )
    loop = asyncio.new_event_loop()
    fm = loop.run_until_complete(_start(config))
    yield port, loop, fm
    loop.run_until_complete(fm.close())
    loop.close()


async def _start(config) -> FabricMaster:
    fm = FabricMaster(config)
    await fm._serve_http()
    return fm


def call(fm_http, method: str, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    port, loop, _ = fm_http
    return loop.run_until_complete(asyncio.to_thread(request, port, method, path, token))


def test_state_changes_only_by_post(fm_http) -> None:
    status, body = call(fm_http, "GET", SCALE)
    assert status == 405 and "POST" in body["error"]


def test_the_token_is_required_and_checked(fm_http) -> None:
    for path, method in ((SCALE, "POST"), ("/status", "GET"), ("/metrics", "GET")):
        status, body = call(fm_http, method, path, token=None)
        assert status == 401 and "bearer token" in body["error"]
        status, body = call(fm_http, method, path, token="not-the-token-at-all")
        assert status == 403 and body["error"] == "wrong bearer token"
    status, body = call(fm_http, "GET", "/status")
    assert status == 200 and body["fm_id"] == "fm1" and body["leader"] is False
    status, body = call(fm_http, "GET", "/metrics")
    assert status == 200 and "cyberstar_fm_leader" in body["text"]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("&wait_s=abc", "wait_s"),
        ("&wait_s=nan", "wait_s"),
        ("&wait_s=inf", "wait_s"),
        ("&wait_s=-1", "wait_s"),
        ("&wait_s=0", "wait_s"),
        ("&wait_s=100000", "wait_s"),
    ],
)
def test_bad_wait_is_refused_before_a_move_starts(fm_http, query: str, words: str) -> None:
    status, body = call(fm_http, "POST", SCALE + query)
    assert status == 400 and words in body["error"], body


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/scale?kind=sideways&shard=7:0-1024&to=scg2", "kind"),
        ("/scale?kind=out&shard=seven&to=scg2", "shard"),
        ("/scale?kind=out&shard=7:0-1024", "to"),
        ("/scale", "kind"),
    ],
)
def test_bad_parameters_name_themselves(fm_http, path: str, words: str) -> None:
    status, body = call(fm_http, "POST", path)
    assert status == 400 and body["error"].startswith(words), body


def test_a_move_that_cannot_happen_says_why(fm_http) -> None:
    status, body = call(fm_http, "POST", SCALE + "&wait_s=5")
    assert status == 409 and "no shard 7:0-1024" in body["error"]


def test_unknown_paths_list_the_known_ones(fm_http) -> None:
    status, body = call(fm_http, "GET", "/nope")
    assert status == 404 and "/scale" in body["error"] and "/status" in body["error"]
