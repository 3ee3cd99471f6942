"""SC process tests need etcd (Debian's etcd-server); without it they fail, saying so."""

from __future__ import annotations

import needs
import pytest


@pytest.fixture
def need_etcd() -> None:
    needs.etcd()
