"""Waiting in tests for something another process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true (returned), or fail the test
    after ``timeout`` seconds naming ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def collect_outcomes(executor: Any, count: int, timeout: float = 60.0) -> dict[str, Any]:
    """Call ``executor.wait`` until ``count`` outcomes arrived (attempt id -> outcome),
    or fail the test saying how many did."""
    outcomes: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(outcomes) < count and time.monotonic() < deadline:
        for outcome in executor.wait(0.5):
            outcomes[outcome.attempt_id] = outcome
    assert len(outcomes) == count, f"only {len(outcomes)} of {count} outcomes arrived"
    return outcomes
