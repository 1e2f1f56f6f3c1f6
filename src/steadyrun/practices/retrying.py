"""In-process retries with exponential backoff: ``@run.retry(max_attempts=3)``.

For a flaky call inside a task (a download, a remote store, a shaky file system). Whole
tasks are retried by the engine (``run.Task(..., retry=run.Retry(...))``) with the same
delay rule; this decorator is for the smaller steps within one attempt.

Built on tenacity, which is imported when a function is decorated, not with steadyrun.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar, cast

from steadyrun.errors import SteadyrunError

F = TypeVar("F", bound=Callable[..., Any])

_default_logger = logging.getLogger("steadyrun.practices.retrying")


class InvalidRetry(SteadyrunError, ValueError):
    """An argument of :func:`retry` is out of range or of the wrong type."""


def retry(max_attempts: int | Callable[..., Any] = 3, backoff: float = 2.0,
          initial_delay: float = 1.0, max_delay: float = 60.0, jitter: float = 0.1,
          on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
          logger: logging.Logger | None = None) -> Any:
    """Decorator: call the function again when it raises one of ``on``, up to
    ``max_attempts`` calls in all, waiting longer after each failure.

    The wait after the ``n``-th failure (``n`` from 1) is
    ``min(initial_delay * backoff**(n-1), max_delay)``, then spread by a random fraction
    within ``±jitter`` (``jitter=0.1``: ±10%; it never goes below 0). Each retry is logged
    (``logger``, default ``steadyrun.practices.retrying``) with the attempt number, the exception
    and the delay. Exceptions not in ``on`` propagate at once. When the last attempt
    fails, that exception itself is raised (not a wrapper), with a note saying how many
    attempts were made.

    Works on plain and ``async`` functions (an async function waits with
    ``asyncio.sleep``). ``wrapper.retry_delays`` lists the delays (seconds) of the most
    recent call, ``wrapper.attempts`` its number of attempts. Use it bare (``@retry``) or
    with arguments (``@retry(max_attempts=5, on=(OSError,))``). Raises
    :class:`InvalidRetry` for arguments out of range.
    """
    if callable(max_attempts) and not isinstance(max_attempts, type):
        return retry()(max_attempts)
    _check(max_attempts, backoff, initial_delay, max_delay, jitter)
    exc_types = _exception_types(on)
    log = logger or _default_logger

    def delay_after(failures: int) -> float:
        base = min(initial_delay * backoff ** (failures - 1), max_delay)
        if jitter:
            base *= 1 + random.uniform(-jitter, jitter)
        return max(0.0, base)

    import tenacity  # ~35 ms: paid when a function is decorated, not by `import steadyrun`

    def decorate(fn: F) -> F:
        name = getattr(fn, "__qualname__", repr(fn))
        delays: list[float] = []

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception()
            delay = state.next_action.sleep
            delays.append(delay)
            log.warning("%s: attempt %d/%d failed (%s: %s); retrying in %.2f s", name,
                        state.attempt_number, max_attempts, type(exc).__name__, exc, delay)

        options: dict[str, Any] = dict(
            stop=tenacity.stop_after_attempt(cast(int, max_attempts)),
            wait=lambda state: delay_after(state.attempt_number),
            retry=tenacity.retry_if_exception_type(exc_types),
            before_sleep=before_sleep,
            reraise=True,
        )

        def start() -> None:
            delays.clear()
            wrapper.retry_delays = delays  # type: ignore[attr-defined]

        def note(exc: BaseException, attempts: int) -> None:
            if attempts > 1:
                spent = ", ".join(f"{d:.2f}" for d in delays)
                exc.add_note(f"steadyrun.retry: {name} failed {attempts} attempts "
                             f"(waited {spent} s between them)")

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                start()
                retrying = tenacity.AsyncRetrying(**options)
                try:
                    async for attempt in retrying:
                        with attempt:
                            return await fn(*args, **kwargs)
                except BaseException as e:
                    note(e, retrying.statistics.get("attempt_number", 1))
                    raise
                finally:
                    wrapper.attempts = retrying.statistics.get(  # type: ignore[attr-defined]
                        "attempt_number", 1)
        else:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                start()
                retrying = tenacity.Retrying(**options)
                try:
                    for attempt in retrying:
                        with attempt:
                            return fn(*args, **kwargs)
                except BaseException as e:
                    note(e, retrying.statistics.get("attempt_number", 1))
                    raise
                finally:
                    wrapper.attempts = retrying.statistics.get(  # type: ignore[attr-defined]
                        "attempt_number", 1)

        wrapper.retry_delays = delays  # type: ignore[attr-defined]
        wrapper.attempts = 0  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _check(max_attempts: Any, backoff: float, initial_delay: float, max_delay: float,
           jitter: float) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidRetry(f"retry: max_attempts counts every call (1 means no retry) and "
                           f"must be a whole number >= 1, got {max_attempts!r}")
    for label, value in (("backoff", backoff), ("initial_delay", initial_delay),
                         ("max_delay", max_delay), ("jitter", jitter)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRetry(f"retry: {label} must be a number, got {value!r}")
    if backoff < 1:
        raise InvalidRetry(f"retry: backoff must be >= 1 (1 keeps the delay constant), "
                           f"got {backoff}")
    if initial_delay < 0 or max_delay < 0:
        raise InvalidRetry(f"retry: delays must be >= 0 seconds, got initial_delay="
                           f"{initial_delay}, max_delay={max_delay}")
    if not 0 <= jitter <= 1:
        raise InvalidRetry(f"retry: jitter is a fraction within [0, 1], got {jitter}")


def _exception_types(on: Any) -> tuple[type[BaseException], ...]:
    types = on if isinstance(on, tuple | list) else (on,)
    bad = [t for t in types if not (isinstance(t, type) and issubclass(t, BaseException))]
    if bad or not types:
        raise InvalidRetry(f"retry(on=...): give exception classes, e.g. on=(OSError, "
                           f"TimeoutError); got {on!r}")
    return tuple(types)
