"""Run only by tests/test_require_bmv2.py (the name keeps the suite from collecting it)."""

import pytest


@pytest.mark.bmv2
def test_marked_bmv2_that_skips() -> None:
    pytest.skip("on purpose")


def test_bmv2_fixture_user_that_skips(bmv2_tools) -> None:
    pytest.skip("on purpose too")


@pytest.mark.skip("not a bmv2 test")
def test_other_skip() -> None:
    pass
