"""etcd's own authentication, as docs/security.md sets it up: TLS with client certificates, RBAC
with users named by their certificate, or a user and password; a wrong one is said clearly."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from cyberstar.lab.certs import LabCerts
from cyberstar.lab.sc import LocalEtcd
from cyberstar.sc import coord

pytestmark = pytest.mark.usefixtures("need_etcd")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("etcd")
    certs = LabCerts(tmp / "certs")
    server = LocalEtcd(tmp, certs)
    ops = certs.files("admin", "ops")
    base = ["etcdctl", "--endpoints", f"https://127.0.0.1:{server.client_port}",
            "--cacert", str(ops.ca), "--cert", str(ops.cert), "--key", str(ops.key)]  # fmt: skip

    def ctl(*args: str) -> None:
        subprocess.run([*base, *args], check=True, capture_output=True, timeout=30)

    ctl("user", "add", "root", "--new-user-password", "rootpw")
    ctl("role", "add", "cyberstar")
    ctl("role", "grant-permission", "cyberstar", "--prefix=true", "readwrite", "/cyberstar/")
    ctl("user", "add", "sc1a", "--no-password")
    ctl("user", "grant-role", "sc1a", "cyberstar")
    ctl("user", "add", "fm1", "--new-user-password", "fm1-secret")
    ctl("user", "grant-role", "fm1", "cyberstar")
    ctl("--user", "root:rootpw", "auth", "enable")
    try:
        yield server, certs
    finally:
        server.close()


async def _put_get(config: coord.EtcdConfig) -> bytes:
    client = await coord.connect(config, "test", timeout=5)
    try:
        await client.put(b"/cyberstar/test", b"ok")
        return (await client.get(b"/cyberstar/test")).value
    finally:
        await client.close()


def test_a_user_named_by_its_certificate(etcd) -> None:
    server, certs = etcd
    config = coord.EtcdConfig((server.endpoint,), certs.files("sc", "sc1a"))
    assert asyncio.run(_put_get(config)) == b"ok"
    stranger = coord.EtcdConfig((server.endpoint,), certs.files("sc", "nobody"))
    with pytest.raises(Exception, match=r"permission denied|user name not found"):
        asyncio.run(_put_get(stranger))


def test_a_user_and_password(etcd) -> None:
    server, certs = etcd
    tls = certs.files("fm", "fm-client")
    good = coord.EtcdConfig((server.endpoint,), tls, "fm1", "fm1-secret")
    assert asyncio.run(_put_get(good)) == b"ok"
    bad = coord.EtcdConfig((server.endpoint,), tls, "fm1", "wrong")
    with pytest.raises(coord.EtcdError, match="refused user 'fm1'"):
        asyncio.run(_put_get(bad))
