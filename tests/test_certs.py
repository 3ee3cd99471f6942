"""`cyberstar certs init`: a CA and node certificates that openssl (an independent verifier)
accepts, with the names and usages mutual TLS needs; gRPC refuses peers without one."""

from __future__ import annotations

import json
import stat
import subprocess
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc

from cyberstar.cli import main
from cyberstar.listen import GrpcLimits, bind, server_options
from cyberstar.tls import TlsFiles, grpc_peer, secure_or_plain_channel


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def init(capsys, *args: str) -> dict:
    assert main(["certs", "init", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_certificates_verify_and_carry_names_and_usages(tmp_path: Path, capsys) -> None:
    out = init(capsys, str(tmp_path), "sc:sc1a=10.0.0.5,sc1a.lab", "fm:fm1")
    assert out["ca"] == str(tmp_path / "ca.crt")
    for name in ("sc1a", "fm1"):
        crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        assert (
            openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(crt)).strip().endswith("OK")
        )
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = openssl("x509", "-in", str(tmp_path / "sc1a.crt"), "-noout", "-text")
    for san in ("DNS:localhost", "IP Address:127.0.0.1", "IP Address:10.0.0.5", "DNS:sc1a.lab",
                "DNS:sc1a"):  # fmt: skip
        assert san in text, san
    assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" in text
    subject = openssl("x509", "-in", str(tmp_path / "sc1a.crt"), "-noout", "-subject")
    assert "OU = sc" in subject and "CN = sc1a" in subject
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_a_second_run_keeps_the_ca_and_existing_nodes(tmp_path: Path, capsys) -> None:
    init(capsys, str(tmp_path), "pp:pp1")
    ca, pp1 = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "pp1.crt").read_bytes()
    init(capsys, str(tmp_path), "pp:pp1", "pp:pp2")
    assert (tmp_path / "ca.crt").read_bytes() == ca
    assert (tmp_path / "pp1.crt").read_bytes() == pp1
    openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "pp2.crt"))
    init(capsys, "--force", str(tmp_path), "pp:pp1")
    assert (tmp_path / "pp1.crt").read_bytes() != pp1


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("sc", "ROLE:NAME"),
        ("wizard:x", "unknown role"),
        ("sc:a/b", "cannot contain"),
        ("sc:ca", "CA's own"),
    ],
)
def test_bad_node_specs_are_usage_errors(tmp_path: Path, capsys, spec: str, words: str) -> None:
    assert main(["certs", "init", str(tmp_path), spec]) == 2
    assert words in capsys.readouterr().err


class _Echo(p4r_grpc.P4RuntimeServicer):
    def Capabilities(self, request, context):
        peer = grpc_peer(context)
        return p4r.CapabilitiesResponse(p4runtime_api_version=f"{peer.role}/{peer.name}")


def test_mutual_tls_names_the_client_and_refuses_strangers(tmp_path: Path, capsys) -> None:
    init(capsys, str(tmp_path / "lab"), "pp:pp1", "fm:fm1")
    init(capsys, str(tmp_path / "other"), "fm:fm1")
    lab = tmp_path / "lab"
    server = grpc.server(futures.ThreadPoolExecutor(2), options=server_options(GrpcLimits()))
    p4r_grpc.add_P4RuntimeServicer_to_server(_Echo(), server)
    files = TlsFiles(lab / "ca.crt", lab / "pp1.crt", lab / "pp1.key")
    sock = f"unix:{tmp_path / 'p4rt.sock'}"
    port = bind(server, "127.0.0.1:0", files, "test server")
    bind(server, sock, files, "test server")
    server.start()
    try:
        fm = TlsFiles(lab / "ca.crt", lab / "fm1.crt", lab / "fm1.key")
        for address in (f"127.0.0.1:{port}", sock):
            with secure_or_plain_channel(address, fm, [], "test") as ch:
                got = p4r_grpc.P4RuntimeStub(ch).Capabilities(p4r.CapabilitiesRequest(), timeout=10)
            assert got.p4runtime_api_version == "fm/fm1"
        # A certificate from another CA, and no certificate at all, are refused.
        other = tmp_path / "other"
        strangers = [
            TlsFiles(lab / "ca.crt", other / "fm1.crt", other / "fm1.key"),
        ]
        anonymous = grpc.ssl_channel_credentials((lab / "ca.crt").read_bytes())
        channels = [
            secure_or_plain_channel(f"127.0.0.1:{port}", stranger, [], "test")
            for stranger in strangers
        ]
        channels += [
            grpc.secure_channel(f"127.0.0.1:{port}", anonymous),
            grpc.insecure_channel(f"127.0.0.1:{port}"),
        ]
        for ch in channels:
            with ch, pytest.raises(grpc.RpcError) as err:
                p4r_grpc.P4RuntimeStub(ch).Capabilities(p4r.CapabilitiesRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
