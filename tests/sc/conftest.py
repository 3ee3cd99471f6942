"""SC process tests need etcd (Debian's etcd-server); without it they are skipped, saying so."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def need_etcd() -> None:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server; `make install`)")
