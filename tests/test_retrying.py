"""retry: measured backoff delays, jitter bounds, what is retried, what is raised."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from steadyrun.errors import SteadyrunError
from steadyrun.practices.retrying import InvalidRetry, retry


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns the number of calls; records
    when each call started and every exception it raised."""

    def __init__(self, failures: int, exc: type[BaseException] = OSError) -> None:
        self.failures, self.exc = failures, exc
        self.starts: list[float] = []
        self.raised: list[BaseException] = []

    def __call__(self) -> int:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.failures:
            err = self.exc(f"failure {len(self.starts)}")
            self.raised.append(err)
            raise err
        return len(self.starts)


def test_delays_follow_exponential_backoff_in_real_time():
    flaky = Flaky(failures=3)
    wrapped = retry(max_attempts=4, backoff=2.0, initial_delay=0.05, jitter=0)(flaky)
    assert wrapped() == 4
    assert wrapped.retry_delays == [0.05, 0.1, 0.2]
    assert wrapped.attempts == 4
    gaps = [b - a for a, b in zip(flaky.starts, flaky.starts[1:], strict=False)]
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2], strict=True):
        assert expected - 0.005 <= gap < expected + 0.08, gaps


def test_delays_are_capped_at_max_delay():
    flaky = Flaky(failures=3)
    wrapped = retry(max_attempts=4, backoff=10.0, initial_delay=0.01, max_delay=0.05,
                    jitter=0)(flaky)
    wrapped()
    assert wrapped.retry_delays == [0.01, 0.05, 0.05]
    assert 0.11 - 0.005 <= flaky.starts[-1] - flaky.starts[0] < 0.25


def test_jitter_stays_within_its_bounds_and_varies():
    seen: list[float] = []
    for _ in range(10):
        wrapped = retry(max_attempts=3, backoff=2.0, initial_delay=0.01, jitter=0.5)(
            Flaky(failures=2))
        wrapped()
        first, second = wrapped.retry_delays
        assert 0.005 <= first <= 0.015
        assert 0.01 <= second <= 0.03
        seen.append(first)
    assert len(set(seen)) > 1  # random, not a fixed spread


def test_the_last_exception_itself_is_reraised_with_a_note():
    flaky = Flaky(failures=10, exc=ConnectionError)
    wrapped = retry(max_attempts=3, initial_delay=0.01, jitter=0)(flaky)
    with pytest.raises(ConnectionError) as info:
        wrapped()
    assert info.value is flaky.raised[-1]  # not tenacity's RetryError, not a copy
    assert str(info.value) == "failure 3"
    assert len(flaky.starts) == 3
    assert any("failed 3 attempts" in note for note in info.value.__notes__)


def test_exceptions_not_in_on_are_not_retried():
    flaky = Flaky(failures=5, exc=ValueError)
    wrapped = retry(max_attempts=5, initial_delay=0.01, on=(OSError,))(flaky)
    with pytest.raises(ValueError, match="failure 1"):
        wrapped()
    assert len(flaky.starts) == 1
    assert wrapped.retry_delays == []


def test_a_single_exception_class_is_accepted_for_on_and_subclasses_match():
    flaky = Flaky(failures=1, exc=ConnectionResetError)
    wrapped = retry(max_attempts=2, initial_delay=0.01, on=OSError)(flaky)
    assert wrapped() == 2


def test_each_retry_is_logged_with_attempt_exception_and_delay(caplog):
    logger = logging.getLogger("test.retrying")
    wrapped = retry(max_attempts=3, initial_delay=0.01, jitter=0, logger=logger)(
        Flaky(failures=2))
    with caplog.at_level(logging.WARNING, logger="test.retrying"):
        wrapped()
    lines = [r.getMessage() for r in caplog.records if r.name == "test.retrying"]
    assert len(lines) == 2
    assert "attempt 1/3 failed (OSError: failure 1); retrying in 0.01 s" in lines[0]
    assert "attempt 2/3 failed (OSError: failure 2); retrying in 0.02 s" in lines[1]


def test_bare_decorator_and_arguments_pass_through():
    @retry
    def add(a: int, b: int = 0) -> int:
        return a + b

    assert add(2, b=3) == 5
    assert add.__name__ == "add"


def test_each_call_starts_with_fresh_delays():
    state = {"fail": 1}

    @retry(max_attempts=3, initial_delay=0.01, jitter=0)
    def sometimes() -> str:
        if state["fail"]:
            state["fail"] -= 1
            raise OSError("once")
        return "ok"

    assert sometimes() == "ok" and sometimes.retry_delays == [0.01]
    assert sometimes() == "ok" and sometimes.retry_delays == []
    assert sometimes.attempts == 1


def test_async_functions_are_retried_with_the_same_delays():
    calls: list[float] = []

    @retry(max_attempts=3, initial_delay=0.02, jitter=0)
    async def fetch() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TimeoutError("slow")
        return "done"

    assert asyncio.run(fetch()) == "done"
    assert fetch.retry_delays == [0.02, 0.04]
    assert calls[2] - calls[0] >= 0.06 - 0.005


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"backoff": 0.5},
                                    {"initial_delay": -1}, {"jitter": 1.5},
                                    {"on": "OSError"}, {"on": ()}, {"max_attempts": 2.5}])
def test_bad_arguments_are_named_errors(kwargs):
    with pytest.raises(InvalidRetry) as info:
        retry(**kwargs)
    assert isinstance(info.value, SteadyrunError)
