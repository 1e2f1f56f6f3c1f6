"""Work through data too large to hold at once: ``batched()`` and ``map_batches()``.

Both read their input lazily, one batch at a time, so a generator over a dataset of any
size (or an endless one, for ``batched``) works and memory stays flat. ``map_batches``
runs a function on each batch here, or on any executor (``LocalExecutor`` threads, a
process pool, subprocesses) with a bounded number of batches in flight, and gives the
results back in input order.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sized
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from steadyrun.errors import SteadyrunError
from steadyrun.practices.adapt import release_memory

T = TypeVar("T")

#: How long one ``executor.wait`` call may block before the loop looks again.
_WAIT_S = 1.0


class BatchingError(SteadyrunError, ValueError):
    """An argument of :func:`batched` or :func:`map_batches` is out of range."""


class BatchFailed(SteadyrunError):
    """A batch failed on an executor. ``index`` is the batch's position (from 0),
    ``items`` the range of input positions it held, ``kind`` the failure kind (``error``,
    ``oom``, ``lost``, ...), ``remote_traceback`` the traceback where it ran and
    ``log_tail`` the end of what it printed."""

    def __init__(self, index: int, items: range, kind: str, message: str,
                 remote_traceback: str = "", log_tail: str = "") -> None:
        self.index, self.items, self.kind = index, items, kind
        self.remote_traceback, self.log_tail = remote_traceback, log_tail
        text = (f"map_batches: batch {index} (items {items.start}-{items.stop - 1}) failed "
                f"({kind}): {message}")
        if remote_traceback:
            text += "\nremote traceback:\n" + _indent(remote_traceback.rstrip())
        if log_tail:
            text += "\nlast lines of its output:\n" + _indent(log_tail.rstrip())
        super().__init__(text)


class BatchOutOfMemory(BatchFailed, MemoryError):
    """A batch ran out of memory on an executor. Also a ``MemoryError``, so that
    :func:`~steadyrun.practices.adapt.find_executable_batch_size` around the call
    retries smaller."""


def batched(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` consecutive items of ``iterable``; the last one may be shorter
    (it is kept, never dropped or padded).

    Lazy: one batch is read only when it is asked for, so generators and endless
    iterators work. Raises :class:`BatchingError` at once (not on first use) when
    ``size`` is not a whole number >= 1.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BatchingError(f"batched: size must be a whole number >= 1, got {size!r}")
    return _batches(iter(iterable), size)


def map_batches(fn: Callable[[list[Any]], Any], iterable: Iterable[Any], batch_size: int,
                executor: Any = None, release_every: int | None = 1,
                progress: bool | Callable[[int, int], Any] | None = None, *,
                max_in_flight: int | None = None) -> list[Any]:
    """``fn(batch)`` on each batch of ``batch_size`` items; the results, in input order.

    Results: when ``fn`` returns a ``list`` its items are spliced into the output (so a
    function mapping each item gives one result per item, ``map``-like); any other
    return value (a number, a dict, an array, ``None``, a tuple) is kept as one entry per
    batch.

    Where it runs: with ``executor=None`` in the calling thread, one batch at a time;
    with an executor (any :class:`~steadyrun.LocalExecutor` strategy, or another
    executor of the contract) each batch is one attempt in a private temporary folder,
    and at most ``max_in_flight`` batches are launched and not finished (default: twice
    the executor's ``max_workers``, else twice its CPU capacity: one running and one
    queued per worker), with at most twice that many read from the input and not yet
    handed back, so memory stays flat however long the input. The executor is opened
    and closed by the call. For the ``process`` and ``subprocess`` strategies ``fn`` and
    the items must be picklable (module-level functions). What a batch prints on an
    executor is echoed here when it ends.

    Memory: every ``release_every`` batches (``None`` or 0: never) Python's garbage is
    collected and torch's CUDA cache emptied (when torch is already imported), in the
    process that ran the batch. A full collection costs about 1 ms, more with a large
    heap: for batches that take microseconds, raise ``release_every``.

    Progress: a rich progress bar on a terminal (``sys.stderr`` is a tty) unless
    ``progress=False``; a callable is called instead as ``progress(batches_done,
    items_done)`` after each batch, in order.

    Errors: with no executor, what ``fn`` raises propagates unchanged, with a note naming
    the batch. On an executor a failed batch raises :class:`BatchFailed` (or
    :class:`BatchOutOfMemory`) with its traceback; the batches still running are stopped.
    :class:`BatchingError` for arguments out of range; an executor's own
    :class:`~steadyrun.errors.ExecutorError` (a payload that cannot be pickled) passes
    through.
    """
    if not callable(fn):
        raise BatchingError(f"map_batches: fn must be callable, got {fn!r}")
    batches = batched(iterable, batch_size)
    if release_every is not None and (isinstance(release_every, bool)
                                      or not isinstance(release_every, int)
                                      or release_every < 0):
        raise BatchingError("map_batches: release_every must be a whole number >= 0 or None, "
                            f"got {release_every!r}")
    if max_in_flight is not None and (isinstance(max_in_flight, bool)
                                      or not isinstance(max_in_flight, int)
                                      or max_in_flight < 1):
        raise BatchingError("map_batches: max_in_flight must be a whole number >= 1, got "
                            f"{max_in_flight!r}")
    total = math.ceil(len(iterable) / batch_size) if isinstance(iterable, Sized) else None
    bar = _Progress(progress, total)
    try:
        if executor is None:
            return _map_here(fn, batches, batch_size, release_every or 0, bar)
        return _map_on(executor, fn, batches, batch_size, release_every or 0, bar,
                       max_in_flight)
    finally:
        bar.close()


# --- running -----------------------------------------------------------------------------


def _map_here(fn: Callable[[list[Any]], Any], batches: Iterator[list[Any]], size: int,
              release_every: int, bar: _Progress) -> list[Any]:
    out: list[Any] = []
    for index, batch in enumerate(batches):
        n = len(batch)
        try:
            result = fn(batch)
        except Exception as e:
            e.add_note(f"steadyrun.map_batches: in batch {index} (items {index * size}-"
                       f"{index * size + n - 1})")
            raise
        del batch  # before releasing: the batch may be what holds the memory
        _collect(out, result)
        del result
        if release_every and (index + 1) % release_every == 0:
            release_memory()
        bar.advance(n)
    return out


class _BatchCall:
    """The payload of one batch on an executor: ``fn(batch)``, then maybe a release."""

    __slots__ = ("fn", "batch", "release")
    batch: list[Any] | None

    def __init__(self, fn: Callable[[list[Any]], Any], batch: list[Any], release: bool):
        self.fn, self.batch, self.release = fn, batch, release

    def __call__(self) -> Any:
        batch, self.batch = self.batch, None
        result = self.fn(batch or [])
        del batch
        if self.release:
            release_memory()
        return result


def _map_on(executor: Any, fn: Callable[[list[Any]], Any], batches: Iterator[list[Any]],
            size: int, release_every: int, bar: _Progress,
            max_in_flight: int | None) -> list[Any]:
    from steadyrun.executors.base import AttemptSpec

    # one batch running and one queued per worker, so no worker idles between batches
    slots = max_in_flight or 2 * _workers(executor)
    window = 2 * slots  # started but not handed back, in flight or waiting for an earlier one
    root = tempfile.mkdtemp(prefix="steadyrun-map-")  # mode 0700
    out: list[Any] = []
    in_flight: dict[str, tuple[int, int, str]] = {}  # attempt id -> (index, items, folder)
    done: dict[int, tuple[int, Any, str]] = {}  # finished, not handed back yet, by index
    launched = emitted = 0
    exhausted = False
    executor.open()
    try:
        while True:
            while not exhausted and len(in_flight) < slots and launched - emitted < window:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                folder = os.path.join(root, str(launched))
                os.mkdir(folder, 0o700)
                aid = f"batch-{launched}"
                release = bool(release_every) and (launched + 1) % release_every == 0
                in_flight[aid] = (launched, len(batch), folder)
                executor.launch(AttemptSpec(
                    attempt_id=aid, task=f"map_batches[{launched}]", number=1,
                    payload=_BatchCall(fn, batch, release), attempt_dir=Path(folder)))
                del batch
                launched += 1
            if not in_flight:
                return out
            for outcome in executor.wait(_WAIT_S):
                entry = in_flight.pop(outcome.attempt_id, None)
                if entry is None:
                    continue
                index, n, folder = entry
                if not outcome.ok:
                    raise _failure(outcome, index, n, size, folder)
                value = outcome.value if outcome.has_value else _read_value(folder)
                done[index] = (n, value, folder)
                del value
            while emitted in done:
                n, value, folder = done.pop(emitted)
                _echo_logs(folder)  # in input order, like the results
                shutil.rmtree(folder, ignore_errors=True)
                _collect(out, value)
                del value
                emitted += 1
                bar.advance(n)
    finally:
        for aid in list(in_flight):
            executor.stop(aid, "cancelled")
        executor.close()
        shutil.rmtree(root, ignore_errors=True)


def _workers(executor: Any) -> int:
    """Batches ``executor`` runs at once: its max_workers, else its CPU capacity."""
    workers = getattr(executor, "max_workers", None)
    if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1:
        return workers
    try:
        return max(1, math.ceil(executor.capacity().cpus))
    except Exception:  # an executor that cannot say: one at a time is always safe
        return 1


def _read_value(folder: str) -> Any:
    import pickle

    from steadyrun.attempt.worker import RESULT_FILE

    # written by our own worker into a private 0700 folder we created
    with open(os.path.join(folder, RESULT_FILE), "rb") as f:
        return pickle.load(f)


def _failure(outcome: Any, index: int, n: int, size: int, folder: str) -> BatchFailed:
    from steadyrun.attempt.worker import STDERR_LOG, STDOUT_LOG

    err = outcome.error
    message = outcome.message or (f"{err.type}: {err.message}" if err else "no details")
    tail = "\n".join((_tail(os.path.join(folder, STDOUT_LOG)) + "\n"
                      + _tail(os.path.join(folder, STDERR_LOG))).strip().splitlines()[-20:])
    cls = BatchOutOfMemory if outcome.kind == "oom" else BatchFailed
    return cls(index, range(index * size, index * size + n), outcome.kind or "error",
               message, err.traceback if err else "", tail)


def _echo_logs(folder: str) -> None:
    from steadyrun.attempt.worker import STDERR_LOG, STDOUT_LOG

    for name, stream in ((STDOUT_LOG, sys.stdout), (STDERR_LOG, sys.stderr)):
        path = os.path.join(folder, name)
        try:
            if os.path.getsize(path) == 0:
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                stream.write(f.read())
        except OSError:  # nothing printed: the file was never created
            continue


def _tail(path: str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


# --- helpers ------------------------------------------------------------------------------


def _batches(it: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(islice(it, size)):
        yield batch


def _collect(out: list[Any], result: Any) -> None:
    if isinstance(result, list):
        out.extend(result)
    else:
        out.append(result)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


class _Progress:
    """A rich bar on a terminal, a user callback, or nothing."""

    def __init__(self, progress: Any, total: int | None) -> None:
        self.batches = self.items = 0
        self.callback = progress if callable(progress) else None
        self.bar: Any = None
        if self.callback is None and progress is not False and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("map_batches"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("batches"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=Console(file=sys.stderr))
            self.task = self.bar.add_task("map_batches", total=total)
            self.bar.start()

    def advance(self, items: int) -> None:
        self.batches += 1
        self.items += items
        if self.callback is not None:
            self.callback(self.batches, self.items)
        elif self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
