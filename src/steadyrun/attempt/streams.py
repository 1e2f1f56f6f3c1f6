"""Where an attempt's output goes when it runs inside a longer-lived process.

A worker process of its own points file descriptors 1 and 2 at the attempt's logs. An
attempt run in a thread of the controller cannot: there, ``sys.stdout`` and
``sys.stderr`` are replaced by routers that send what a thread running an attempt writes
to that attempt's log files (created on the first write), and everything else to the
original stream. Loaded only by the strategies that need it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any

from steadyrun.attempt.worker import _local

_router_lock = threading.Lock()


def streams_on_fds() -> tuple[Any, Any] | None:
    """Make ``sys.stdout``/``sys.stderr`` write to fds 1/2 when they do not already (an
    embedding host or a test runner replaced them); return what to put back."""
    def on_fd(stream: Any, fd: int) -> bool:
        try:
            return stream.fileno() == fd
        except (AttributeError, OSError, ValueError):
            return False

    if on_fd(sys.stdout, 1) and on_fd(sys.stderr, 2):
        return None
    saved = (sys.stdout, sys.stderr)
    sys.stdout = open(os.dup(1), "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                      errors="backslashreplace")
    sys.stderr = open(os.dup(2), "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                      errors="backslashreplace")
    return saved


def restore_streams(saved: tuple[Any, Any] | None) -> None:
    if saved is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.close()
    sys.stdout, sys.stderr = saved


class LazyLog:
    """A log file created on the first write (so silent attempts cost no files)."""

    __slots__ = ("path", "_f")

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: Any = None

    def file(self) -> Any:
        if self._f is None:
            self._f = open(self.path, "a", buffering=1, encoding="utf-8",  # noqa: SIM115
                           errors="backslashreplace")
        return self._f

    def write(self, s: str) -> int:
        return self.file().write(s)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class _StreamRouter:
    """Stands in for ``sys.stdout``/``sys.stderr``: writes from a thread running an
    attempt go to that attempt's log, every other write to the original stream."""

    def __init__(self, original: Any, attr: str) -> None:
        self._original = original
        self._attr = attr

    def write(self, s: str) -> int:
        target = getattr(_local, self._attr, None)
        if target is not None:
            return target.write(s)
        if self._original is None:
            return len(s)
        return self._original.write(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        target = getattr(_local, self._attr, None)
        if target is not None:
            target.flush()
        elif self._original is not None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def ensure_router() -> None:
    if isinstance(sys.stdout, _StreamRouter) and isinstance(sys.stderr, _StreamRouter):
        return
    with _router_lock:
        if not isinstance(sys.stdout, _StreamRouter):
            sys.stdout = _StreamRouter(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _StreamRouter):
            sys.stderr = _StreamRouter(sys.stderr, "stderr")
