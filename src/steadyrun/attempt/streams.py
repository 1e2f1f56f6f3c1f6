"""Where an attempt's output goes when it runs inside a longer-lived process.

A worker process of its own points file descriptors 1 and 2 at the attempt's logs. An
attempt run in a thread of the controller cannot: there, ``sys.stdout`` and
``sys.stderr`` are replaced by routers that send what a thread running an attempt writes
to that attempt's log files (created on the first write), and everything else to the
original stream. Loaded only by the strategies that need it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from typing import Any

from steadyrun.attempt import logcap
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


def line_buffered() -> None:
    """Make ``sys.stdout``/``sys.stderr`` write each line as it is printed (on a file or
    a pipe they are block-buffered otherwise), so a follower of the logs sees it at once."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not getattr(stream, "line_buffering", True):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def restore_streams(saved: tuple[Any, Any] | None) -> None:
    if saved is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.close()
    sys.stdout, sys.stderr = saved


class LazyLog:
    """An attempt's log, created on the first write (so silent attempts cost no files),
    owner-only, and capped at ``cap`` bytes (its head and tail kept, see
    :mod:`steadyrun.attempt.logcap`; ``None``: everything). Text written here is
    line-buffered; :meth:`file` gives a child process a descriptor into the same log.
    With ``make_dir`` its folder too is made on the first write."""

    __slots__ = ("path", "cap", "make_dir", "_log", "_text", "_child_fd", "_pump")

    def __init__(self, path: str, cap: int | None = logcap.DEFAULT_MAX_LOG_BYTES,
                 make_dir: bool = False) -> None:
        self.path = path
        self.cap = cap
        self.make_dir = make_dir
        self._log: logcap.CappedLog | None = None
        self._text: Any = None
        self._child_fd = -1
        self._pump: Any = None

    def _stream(self) -> Any:
        if self._text is None:
            import io

            if self.make_dir:
                from steadyrun.attempt.fsio import make_dir

                make_dir(os.path.dirname(self.path))
            self._log = logcap.CappedLog(self.path, self.cap)
            self._text = io.TextIOWrapper(io.BufferedWriter(_LogRaw(self._log)),
                                          encoding="utf-8", errors="backslashreplace",
                                          line_buffering=True)
        return self._text

    def file(self) -> int:
        """A file descriptor for a child process's stdout or stderr whose output lands
        in this log, capped the same way (a pipe and a pump thread when capped)."""
        self._stream().flush()
        assert self._log is not None
        if self._child_fd < 0:
            if self.cap is None:
                self._child_fd = os.dup(self._log.fileno())
            else:
                self._child_fd, self._pump = logcap.pipe_into(self._log)
        return self._child_fd

    def write(self, s: str) -> int:
        return self._stream().write(s)

    def flush(self) -> None:
        if self._text is not None:
            self._text.flush()

    def close(self) -> None:
        """Flush, take what a child process wrote last, and join the log's tail."""
        text, self._text = self._text, None
        if text is None:
            return
        with contextlib.suppress(OSError, ValueError):
            text.flush()
        if self._child_fd >= 0:
            os.close(self._child_fd)
            self._child_fd = -1
        if self._pump is not None:
            self._pump.finish(logcap.DRAIN_WAIT)
            self._pump = None
        if self._log is not None:
            self._log.close()


class _LogRaw(io.RawIOBase):
    """The raw layer under a :class:`LazyLog`'s text: bytes go to its capped log."""

    def __init__(self, log: logcap.CappedLog) -> None:
        self._log = log

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return self._log.write(b)


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
