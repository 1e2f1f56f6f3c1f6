"""Adapt a run to the machine it finds: batch sizes that fit, epochs that fit in the time.

- :func:`find_executable_batch_size` runs a function and halves its batch size on every
  out-of-memory error until it fits, saying what it tried.
- :func:`adaptive_batch_size` picks a batch size from the memory free now (cgroup-aware),
  from a measured per-item cost when there is one (:func:`measure_per_item_bytes`).
- :class:`TimeBudget` runs epochs while the next one, judged by the measured length of
  the last ones, still fits in the time left.

Nothing here guesses a cost (no "60 s per epoch", no "1 GB per item"): costs are
measured. torch is never imported by this module; when the caller has imported it, its
CUDA cache is emptied along with Python's garbage.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from steadyrun.errors import SteadyrunError
from steadyrun.units import format_size, parse_duration, parse_size

logger = logging.getLogger("steadyrun.practices.adapt")

F = TypeVar("F", bound=Callable[..., Any])

# torch's CPU allocator says "can't allocate memory ... (Cannot allocate memory)" in a
# plain RuntimeError, which the worker's check does not know yet


class AdaptError(SteadyrunError, ValueError):
    """An argument of an adapt helper is out of range (a batch size below 1, a factor
    outside (0, 1), a threshold outside (0, 1])."""


class BatchSizeError(SteadyrunError):
    """Every batch size :func:`find_executable_batch_size` was allowed to try ran out of
    memory. ``tried`` lists them in order; ``__cause__`` is the last out-of-memory error.
    """

    def __init__(self, message: str, tried: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.tried = list(tried)


# --- out-of-memory detection and release ---------------------------------------------------


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` (or an error in its cause chain) means "out of memory":
    ``MemoryError``, torch's ``OutOfMemoryError`` (CUDA, by name: torch is not imported),
    a ``RuntimeError`` saying "out of memory", or torch's CPU allocator failing ("can't
    allocate memory"). The same test the worker uses to call a failure ``oom``."""
    from steadyrun.attempt.worker import is_oom as worker_is_oom

    return worker_is_oom(exc)


def release_memory() -> None:
    """Collect Python's garbage and, when torch is already imported and CUDA was
    initialised, return its cached GPU blocks. Never imports torch."""
    gc.collect()
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None:
        try:
            if cuda.is_initialized():
                cuda.empty_cache()
        except Exception as e:  # a broken driver must not hide the caller's own error
            logger.debug("torch.cuda.empty_cache() failed: %s", e)


# --- find_executable_batch_size -------------------------------------------------------------


def find_executable_batch_size(function: F | None = None, *, starting_batch_size: int = 128,
                               minimum: int = 1, factor: float = 0.5) -> Any:
    """Decorator: call ``function(batch_size, *args, **kwargs)`` with the largest batch
    size that runs without running out of memory.

    The first try uses ``starting_batch_size``. On an out-of-memory error (see
    :func:`is_oom`: ``MemoryError``, torch's CUDA ``OutOfMemoryError``, "out of memory"
    RuntimeErrors) memory is released (:func:`release_memory`; the failed call's frames
    are cleared so its tensors can go) and the call is made again with
    ``floor(batch_size * factor)``, as long as that is at least ``minimum``. Any other
    error propagates at once. Each call of the wrapper starts again from
    ``starting_batch_size``.

    Use it bare (``@find_executable_batch_size``) or with arguments
    (``@find_executable_batch_size(starting_batch_size=256)``); call the wrapper without
    the batch size: ``train(model)`` runs ``train(256, model)``, then ``train(128,
    model)``... The wrapper records the last call's steps in ``wrapper.history`` (a list
    of ``(batch_size, "oom" | "ok")``) and the size that worked in ``wrapper.batch_size``;
    each step is logged on the ``steadyrun.practices.adapt`` logger.

    Raises :class:`BatchSizeError` (its ``__cause__`` the last out-of-memory error) when
    every size down to ``minimum`` ran out of memory, and :class:`AdaptError` for
    arguments out of range.
    """
    if isinstance(starting_batch_size, bool) or not isinstance(starting_batch_size, int) \
            or starting_batch_size < 1:
        raise AdaptError("find_executable_batch_size: starting_batch_size must be a whole "
                         f"number >= 1, got {starting_batch_size!r}")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise AdaptError("find_executable_batch_size: minimum must be a whole number >= 1, "
                         f"got {minimum!r}")
    if minimum > starting_batch_size:
        raise AdaptError(f"find_executable_batch_size: minimum ({minimum}) is larger than "
                         f"starting_batch_size ({starting_batch_size})")
    if not 0 < factor < 1:
        raise AdaptError("find_executable_batch_size: factor must be within (0, 1) (0.5 "
                         f"halves the batch on each out-of-memory error), got {factor!r}")

    def decorate(fn: F) -> F:
        name = getattr(fn, "__qualname__", repr(fn))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            history: list[tuple[int, str]] = []
            wrapper.history = history  # type: ignore[attr-defined]
            wrapper.batch_size = None  # type: ignore[attr-defined]
            batch_size = starting_batch_size
            while True:
                try:
                    result = fn(batch_size, *args, **kwargs)
                except Exception as e:
                    if not is_oom(e):
                        raise
                    last = e
                else:
                    history.append((batch_size, "ok"))
                    wrapper.batch_size = batch_size  # type: ignore[attr-defined]
                    if len(history) > 1:
                        logger.info("%s: batch size %d fits (tried %s)", name, batch_size,
                                    _tried(history))
                    return result
                history.append((batch_size, "oom"))
                # the failed call's locals (its tensors) live on in the traceback's frames
                traceback.clear_frames(last.__traceback__)
                release_memory()
                smaller = math.floor(batch_size * factor)
                if smaller < minimum:
                    tried = [b for b, _ in history]
                    raise BatchSizeError(
                        f"{name}: no batch size fits in memory: tried {_tried(history)}; "
                        f"all ran out of memory, and a smaller one would be below the "
                        f"minimum of {minimum}. Last error: {type(last).__name__}: "
                        f"{_short(last)}. Free memory (a smaller model, shorter sequences, "
                        "another device) or lower `minimum`.", tried) from last
                logger.warning("%s: batch size %d ran out of memory (%s: %s); retrying "
                               "with %d", name, batch_size, type(last).__name__,
                               _short(last), smaller)
                del last
                batch_size = smaller

        wrapper.history = []  # type: ignore[attr-defined]
        wrapper.batch_size = None  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if function is not None:
        if not callable(function):
            raise AdaptError("find_executable_batch_size: give a function to decorate, got "
                             f"{function!r}; pass options by keyword")
        return decorate(function)
    return decorate


# --- adaptive_batch_size ----------------------------------------------------------------------


def adaptive_batch_size(requested: int, memory_threshold: float = 0.8,
                        per_item_bytes: int | str | None = None, *,
                        available: int | None = None, total: int | None = None) -> int:
    """A batch size no larger than ``requested`` that keeps memory use under
    ``memory_threshold`` (a fraction) of the total memory.

    Memory is what this process may use: the machine's, or its cgroup's (container,
    Slurm job) when that is smaller. ``total`` is that total, ``available`` what is free
    now (both measured unless given; tests pass them). ``used = total - available``.

    - With ``per_item_bytes`` (bytes, or a size such as ``"12MiB"``; see
      :func:`measure_per_item_bytes`): the batch may take
      ``budget = memory_threshold * total - used`` (equally ``available - (1 -
      memory_threshold) * total``), and the result is
      ``min(requested, floor(budget / per_item_bytes))``.
    - Without it (the cost is unknown): ``requested`` while ``used / total`` is at most
      the threshold; above it the batch shrinks in proportion to the overshoot:
      ``requested * (1 - (used / total - memory_threshold))``.

    Never below 1: when even one item does not fit, 1 is returned and a warning logged
    (:func:`find_executable_batch_size` then deals with a real out-of-memory error).
    Raises :class:`AdaptError` for arguments out of range.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise AdaptError(f"adaptive_batch_size: requested must be a whole number >= 1, "
                         f"got {requested!r}")
    if not 0 < memory_threshold <= 1:
        raise AdaptError("adaptive_batch_size: memory_threshold is the fraction of memory "
                         f"that may be in use, within (0, 1]; got {memory_threshold!r}")
    per_item = parse_size(per_item_bytes, what="adaptive_batch_size(per_item_bytes)")
    if available is None:
        from steadyrun.observe.resources import available_memory

        available = available_memory()
    if total is None:
        total = _total_memory()
    available = max(0, min(int(available), int(total)))
    if total <= 0:
        raise AdaptError(f"adaptive_batch_size: total memory must be positive, got {total}")
    used = total - available
    if per_item is not None and per_item > 0:
        budget = memory_threshold * total - used
        fits = int(budget // per_item) if budget > 0 else 0
        size = max(1, min(requested, fits))
        if fits < 1:
            logger.warning(
                "adaptive_batch_size: not even one item (%s) fits under %.0f%% of %s with "
                "%s in use; using a batch of 1", format_size(per_item),
                memory_threshold * 100, format_size(total), format_size(used))
        elif size < requested:
            logger.info("adaptive_batch_size: %d -> %d (%s per item, %s budget under "
                        "%.0f%% of %s)", requested, size, format_size(per_item),
                        format_size(budget), memory_threshold * 100, format_size(total))
        return size
    fraction = used / total
    if fraction <= memory_threshold:
        return requested
    size = max(1, int(requested * (1 - (fraction - memory_threshold))))
    logger.info("adaptive_batch_size: %d -> %d (memory %.0f%% in use, above the %.0f%% "
                "threshold)", requested, size, fraction * 100, memory_threshold * 100)
    return size


def measure_per_item_bytes(fn: Callable[[Any], Any], sample_batch: Sequence[Any]) -> int:
    """Run ``fn(sample_batch)`` once and return the peak resident memory it added per
    item, in bytes (what :func:`adaptive_batch_size` takes as ``per_item_bytes``).

    The peak is read from the kernel's high-water mark (``VmHWM``, reset first) on Linux,
    else sampled every millisecond; it is process memory (RSS), not GPU memory. Use a
    sample of a few items, large enough that the per-batch fixed cost does not dominate.
    Memory the process already held and reused is not counted, so a warm process may
    report less than a cold one; 0 means no growth was seen. Raises :class:`AdaptError`
    for an empty sample; what ``fn`` raises passes through.
    """
    n = len(sample_batch)
    if n < 1:
        raise AdaptError("measure_per_item_bytes: sample_batch is empty; give a few items")
    release_memory()
    before = _rss()
    if _reset_peak_rss():
        fn(sample_batch)
        peak = _peak_rss()
    else:
        peak = _sampled_peak(fn, sample_batch)
    return max(0, peak - before) // n


# --- TimeBudget -------------------------------------------------------------------------------


class TimeBudget:
    """A wall-clock allowance, and epochs that stop before one would overrun it.

    ``TimeBudget("30m")`` (or seconds as a number) starts counting at once.
    ``remaining()``, ``elapsed()`` and ``expired`` read it. ``epochs(max_epochs)`` yields
    epoch indices 0, 1, ... and measures each epoch (from one index to the next).

    The rule, checked before every epoch:

    1. no time left: stop;
    2. the first epoch runs whenever any time remains (nothing is measured yet);
    3. later epochs run only if the estimate of the next epoch fits in the time left.
       The estimate is the longest of the last ``window`` epochs (default 3): a slow
       epoch is taken seriously, a slow warm-up epoch is forgotten after ``window`` more.

    When it stops before ``max_epochs`` it sets ``stopped_early``, keeps the reason in
    ``stop_reason`` and logs it on ``steadyrun.practices.adapt`` ("stopping before epoch 7: epochs
    take ~12.0 s, 8.1 s left"). ``epoch_durations`` holds the measured seconds. An epoch
    that is started can still overrun (a slower epoch than any before): the budget
    decides only whether to start one. ``clock`` (default ``time.monotonic``) is for
    tests. Raises :class:`~steadyrun.errors.TaskDefinitionError` for an unreadable limit.
    """

    def __init__(self, limit: str | float, *, window: int = 3,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit: float = parse_duration(limit, what="TimeBudget(limit)")  # type: ignore[assignment]
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise AdaptError(f"TimeBudget: window must be a whole number >= 1, got {window!r}")
        self.window = window
        self._clock = clock
        self.started_at = clock()
        self.epoch_durations: list[float] = []
        self.stopped_early = False
        self.stop_reason: str | None = None

    def elapsed(self) -> float:
        """Seconds since the budget was created."""
        return self._clock() - self.started_at

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.limit - self.elapsed())

    @property
    def expired(self) -> bool:
        """True once the whole limit has passed."""
        return self.elapsed() >= self.limit

    def estimate(self) -> float | None:
        """The expected length of the next epoch (see the rule), None before any."""
        if not self.epoch_durations:
            return None
        return max(self.epoch_durations[-self.window:])

    def epochs(self, max_epochs: int | None = None) -> Iterator[int]:
        """Yield epoch indices from 0 up to ``max_epochs - 1`` (no bound with None),
        stopping before an epoch that would not fit (see the class docstring)."""
        if max_epochs is not None and (isinstance(max_epochs, bool)
                                       or not isinstance(max_epochs, int) or max_epochs < 0):
            raise AdaptError(f"TimeBudget.epochs: max_epochs must be a whole number >= 0 or "
                             f"None, got {max_epochs!r}")
        self.stopped_early = False
        self.stop_reason = None
        epoch = 0
        while max_epochs is None or epoch < max_epochs:
            left = self.limit - self.elapsed()
            guess = self.estimate()
            if left <= 0:
                self._stop(epoch, f"the time budget of {_seconds(self.limit)} is spent")
                return
            if guess is not None and guess > left:
                self._stop(epoch, f"epochs take ~{guess:.1f} s, {left:.1f} s left")
                return
            start = self._clock()
            yield epoch
            self.epoch_durations.append(self._clock() - start)
            epoch += 1

    def _stop(self, epoch: int, why: str) -> None:
        self.stopped_early = True
        self.stop_reason = f"stopping before epoch {epoch}: {why}"
        logger.warning("%s", self.stop_reason)

    def __repr__(self) -> str:
        return (f"TimeBudget(limit={self.limit:g}s, elapsed={self.elapsed():.1f}s, "
                f"epochs={len(self.epoch_durations)})")


# --- helpers ----------------------------------------------------------------------------------


def _tried(history: list[tuple[int, str]]) -> str:
    return ", ".join(str(b) for b, _ in history)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if len(text) <= limit else text[:limit] + "..."


def _seconds(s: float) -> str:
    return f"{s:.1f} s"


def _total_memory() -> int:
    """The machine's memory, or the cgroup's limit when that is smaller."""
    import psutil

    from steadyrun.observe.resources import cgroup_limits

    total = int(psutil.virtual_memory().total)
    limit = cgroup_limits().memory
    return min(total, limit) if limit else total


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _peak_rss() > 0


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _sampled_peak(fn: Callable[[Any], Any], sample: Sequence[Any]) -> int:
    import threading

    peak = _rss()
    done = threading.Event()

    def sample_rss() -> None:
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, _rss())

    t = threading.Thread(target=sample_rss, name="steadyrun-rss", daemon=True)
    t.start()
    try:
        fn(sample)
        peak = max(peak, _rss())
    finally:
        done.set()
        t.join()
    return peak
