"""The committed gRPC code is what `python -m cyberstar.proto.generate` makes of sc.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyberstar.proto import generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        pytest.fail("grpcio-tools (a dev dependency) is missing: run `make install`")
    for fresh in generate.generate(tmp_path):
        committed = generate.PACKAGE_DIR / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run `python -m cyberstar.proto.generate` and commit it"
        )
