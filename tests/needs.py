"""What the end-to-end tests need from the host. `make install` provides all of it and CI runs
the suite as root, so a missing piece fails the test (saying how to get it): it never skips.
(bmv2 and p4c are optional and handled by conftest.py; see CYBERSTAR_REQUIRE_BMV2.)"""

from __future__ import annotations

import os
import shutil

import pytest


def root(what: str = "BPF, network namespaces") -> None:
    if os.geteuid() != 0:
        pytest.fail(f"needs root ({what}): run the suite as root, as CI does", pytrace=False)


def etcd() -> None:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make install` (Debian's etcd-server)",
                    pytrace=False)  # fmt: skip
