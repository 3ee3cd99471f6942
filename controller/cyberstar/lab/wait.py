"""Waiting for a condition in labs and tests: poll a predicate until it holds or time runs out.

What is waited on may not be up yet (a port not listening, a daemon still starting), so an
exception from the predicate counts as "not yet" and is reported if the time runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value, last = _poll(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timeout(timeout, what, last)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """`wait_until` for an event loop: the predicate may also return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value, last = _poll(predicate)
        if asyncio.iscoroutine(value):
            try:
                value = await value
            except Exception as exc:
                value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timeout(timeout, what, last)
        await asyncio.sleep(interval)


def _poll(predicate: Callable[[], Any]) -> tuple[Any, Exception | None]:
    try:
        return predicate(), None
    except Exception as exc:
        return None, exc


def _timeout(timeout: float, what: str, last: Exception | None) -> TimeoutError:
    detail = f" (last error: {last})" if last else ""
    return TimeoutError(f"timed out after {timeout} s waiting for {what}{detail}")
