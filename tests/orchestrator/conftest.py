"""Fixtures for the orchestrator tests: small hand-made and generated instances."""

from __future__ import annotations

import pytest
from orch_cases import tiny_instance_json

from cyberstar.orchestrator.files import parse_instance


@pytest.fixture
def tiny():
    return parse_instance(tiny_instance_json(), "tiny")
