"""`cyberstar pp serve` says what is wrong with its arguments (exit 2) before it loads anything:
where P4Runtime listens and how it is secured are explicit, and a namespace or interface that
is not there is named with what to do."""

from __future__ import annotations

import os
import subprocess
import sys

import needs
import pytest

from cyberstar import netns


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cyberstar.cli", "pp", "serve", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--iface", "x"], "--grpc"),
        (["--iface", "x", "--grpc", "127.0.0.1:1"], "--tls-ca, --tls-cert and --tls-key"),
        (["--iface", "x", "--grpc", "127.0.0.1:1", "--plaintext", "--tls-ca", "c"], "exclude"),
        (["--iface", "x", "--grpc", "10.9.9.9:1", "--plaintext"], "not on loopback"),
        (["--iface", "x", "--grpc", "127.0.0.1:1", "--tls-ca", "/nope/ca.crt", "--tls-cert",
          "/nope/a.crt", "--tls-key", "/nope/a.key"], "cannot read the TLS CA certificate"),
        (["--iface", "x", "--grpc", "127.0.0.1:1", "--plaintext", "--netns", "no-such-ns-8"],
         "no network namespace 'no-such-ns-8'"),
        (["--iface", "x", "--grpc", "127.0.0.1:1", "--plaintext", "--punt-coalesce-us",
          "200000"], "--punt-coalesce-us 200000: expected 0..100000"),
        (["--iface", "x", "--grpc", "127.0.0.1:1", "--plaintext", "--flow-table-size",
          "4294967296"], "expected 1..268435456 (the kernel array takes 160 bytes"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_saying_what_to_do(args: list[str], words: str) -> None:
    proc = serve(*args)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_interface_in_a_namespace_is_found_for_the_user() -> None:
    needs.root()
    with netns.with_pp_ports(f"cs-cli-{os.getpid()}") as ns:
        proc = serve("--iface", "pp1", "--grpc", "127.0.0.1:1", "--plaintext")
    assert proc.returncode == 2, proc.stderr
    # Other engineers' namespaces may hold a pp1 too: ours must be among those named.
    assert "no interface pp1 in this network namespace; it exists in" in proc.stderr
    assert ns in proc.stderr and "add --netns" in proc.stderr, proc.stderr
