"""Memory hygiene for long loops: what this process uses, giving it back, catching leaks.

- :func:`usage` -- RSS, virtual size and the share of the (cgroup-aware) memory total,
  plus CUDA memory when PyTorch is already in use.
- :func:`release` -- collect garbage, return freed heap to the OS, empty PyTorch's CUDA
  cache; says what that freed.
- :func:`guard` -- a leak detector for batch loops: warns (or raises) when RSS has grown
  more than a bound since the loop began.

PyTorch is never imported here: its figures and cache are used only when the program has
imported ``torch`` itself. psutil is imported on first use.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

from steadyrun.errors import SteadyrunError, TaskDefinitionError
from steadyrun.units import format_size, parse_size


class MemoryGrowthWarning(UserWarning):
    """RSS grew past a :func:`guard`'s bound (``action="warn"``)."""


class MemoryGrowthError(SteadyrunError):
    """RSS grew past a :func:`guard`'s bound (``action="raise"``).

    ``growth``, ``baseline``, ``current`` and ``bound`` are bytes; ``elapsed`` seconds
    since the guard started; ``checks`` how many checks it had made; ``where`` the
    ``file:line`` that created the guard.
    """

    def __init__(self, message: str, *, growth: int, baseline: int, current: int,
                 bound: int, elapsed: float, checks: int, where: str) -> None:
        super().__init__(message)
        self.growth, self.baseline, self.current, self.bound = growth, baseline, current, bound
        self.elapsed, self.checks, self.where = elapsed, checks, where


@dataclass(frozen=True)
class MemoryUsage:
    """This process's memory now, in bytes.

    ``percent`` is ``rss`` as a share (0-100) of ``total``: the cgroup memory limit when
    there is one, else the machine's memory. ``gpu_allocated`` / ``gpu_reserved`` are
    PyTorch's CUDA figures summed over devices (memory in tensors / held by its caching
    allocator); ``None`` when torch is not imported or has no CUDA, 0 when CUDA was never
    initialised in this process.
    """

    rss: int
    vms: int
    percent: float
    total: int
    gpu_allocated: int | None = None
    gpu_reserved: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Released:
    """What :func:`release` did: RSS before and after (bytes), ``collected`` (objects the
    garbage collector found unreachable), and PyTorch's reserved CUDA memory before and
    after (``None`` without torch / CUDA)."""

    rss_before: int
    rss_after: int
    collected: int
    gpu_reserved_before: int | None = None
    gpu_reserved_after: int | None = None

    @property
    def rss_freed(self) -> int:
        """Bytes the process's RSS went down by (0 when it did not)."""
        return max(0, self.rss_before - self.rss_after)

    @property
    def gpu_freed(self) -> int:
        """Bytes of CUDA memory PyTorch gave back to the driver."""
        if self.gpu_reserved_before is None or self.gpu_reserved_after is None:
            return 0
        return max(0, self.gpu_reserved_before - self.gpu_reserved_after)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rss_freed": self.rss_freed, "gpu_freed": self.gpu_freed}


def usage() -> MemoryUsage:
    """This process's :class:`MemoryUsage` (about 0.1 ms; reads /proc and cgroup files)."""
    from steadyrun.observe.resources import memory_info

    info = _process().memory_info()
    total = memory_info().total
    allocated, reserved = _torch_cuda()
    return MemoryUsage(rss=int(info.rss), vms=int(info.vms),
                       percent=round(100.0 * info.rss / total, 2) if total else 0.0,
                       total=total, gpu_allocated=allocated, gpu_reserved=reserved)


def release(*, trim: bool = True) -> Released:
    """Give memory back: ``gc.collect()``, then (``trim``) glibc's ``malloc_trim`` so freed
    heap returns to the OS, then ``torch.cuda.empty_cache()`` when torch is already
    imported and CUDA is initialised.

    Only memory nothing refers to can be freed: drop your references (``del batch``)
    first. Freed CUDA cache is given back to the driver, not to tensors still alive.
    Returns a :class:`Released` saying what changed; never raises for a missing torch,
    CUDA or glibc.
    """
    proc = _process()
    rss_before = int(proc.memory_info().rss)
    _, reserved_before = _torch_cuda()
    collected = gc.collect()
    if trim:
        _malloc_trim()
    torch = sys.modules.get("torch")
    if reserved_before is not None and torch is not None:
        with contextlib.suppress(Exception):  # a broken CUDA must not break cleanup
            torch.cuda.empty_cache()
    _, reserved_after = _torch_cuda()
    return Released(rss_before=rss_before, rss_after=int(proc.memory_info().rss),
                    collected=collected, gpu_reserved_before=reserved_before,
                    gpu_reserved_after=reserved_after)


def guard(max_growth: int | str = "500MiB", *, action: Literal["warn", "raise"] = "warn",
          every: int = 1) -> MemoryGuard:
    """A leak detector for loops: RSS may grow at most ``max_growth`` since it started.

    Use it as a context manager and call ``.check()`` once per iteration::

        with run.memory.guard("1GiB", action="raise") as g:
            for batch in loader:
                step(batch)
                g.check()

    The baseline is the RSS when the ``with`` block (or the guard, without ``with``)
    starts. ``every=N`` measures only every N-th ``check()`` (a measure costs about
    20 us). ``action="warn"`` issues a :class:`MemoryGrowthWarning` the first time the
    bound is passed and again each time RSS grows by another ``max_growth``;
    ``action="raise"`` raises :class:`MemoryGrowthError`. Either says by how much, since
    where and when. Leaving the ``with`` block checks once more. Raises
    :class:`~steadyrun.errors.TaskDefinitionError` for a bad size, action or ``every``.
    """
    return MemoryGuard(max_growth, action=action, every=every, stacklevel=3)


class MemoryGuard:
    """The object :func:`guard` returns; see there. ``baseline`` and ``peak`` are bytes."""

    def __init__(self, max_growth: int | str = "500MiB", *,
                 action: Literal["warn", "raise"] = "warn", every: int = 1,
                 stacklevel: int = 2) -> None:
        bound = parse_size(max_growth, what="max_growth")
        if not bound:
            raise TaskDefinitionError(f"max_growth: expected a size above 0, got {max_growth!r}")
        if action not in ("warn", "raise"):
            raise TaskDefinitionError(f"action: expected 'warn' or 'raise', got {action!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise TaskDefinitionError(f"every: expected a whole number >= 1, got {every!r}")
        self.bound, self.action, self.every = bound, action, every
        frame = sys._getframe(stacklevel - 1)
        self.where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        self._proc = _process()
        self.checks = 0
        self._calls = 0
        self.start()

    def start(self) -> None:
        """Take the baseline now (``with`` does this on entry)."""
        self.baseline = self.peak = int(self._proc.memory_info().rss)
        self.started = time.monotonic()
        self._next_warning = self.baseline + self.bound
        self.checks = self._calls = self._growth = 0

    def check(self) -> int:
        """Measure RSS (every ``every``-th call) and act if it grew past the bound.

        Returns the growth in bytes since the baseline at the last measure."""
        self._calls += 1
        if self._calls % self.every:
            return self._growth
        rss = int(self._proc.memory_info().rss)
        self.checks += 1
        self.peak = max(self.peak, rss)
        growth = self._growth = rss - self.baseline
        if growth > self.bound and (self.action == "raise" or rss >= self._next_warning):
            self._act(rss, growth)
        return growth

    def __enter__(self) -> MemoryGuard:
        self.start()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self._calls = self.every - 1  # the final check always measures
            self.check()

    def _act(self, rss: int, growth: int) -> None:
        elapsed = time.monotonic() - self.started
        message = (
            f"RSS grew by {format_size(growth)} (from {format_size(self.baseline)} to "
            f"{format_size(rss)}) in {elapsed:.1f}s and {self.checks} check(s) since the "
            f"guard started at {self.where}; the bound is {format_size(self.bound)}. "
            "Look for references kept across iterations (growing lists, caches, losses "
            "kept with their autograd graph), call run.memory.release(), or raise max_growth."
        )
        if self.action == "raise":
            raise MemoryGrowthError(message, growth=growth, baseline=self.baseline,
                                    current=rss, bound=self.bound, elapsed=elapsed,
                                    checks=self.checks, where=self.where)
        self._next_warning = rss + self.bound
        warnings.warn(message, MemoryGrowthWarning, stacklevel=3)


# --- helpers ----------------------------------------------------------------------------

_PROC: Any = None


def _process() -> Any:
    """One psutil.Process for this process (re-made after a fork)."""
    global _PROC
    import os

    import psutil

    if _PROC is None or _PROC.pid != os.getpid():
        _PROC = psutil.Process()
    return _PROC


def _torch_cuda() -> tuple[int | None, int | None]:
    """PyTorch's (allocated, reserved) CUDA bytes over all devices, without importing
    torch or initialising CUDA; (None, None) when torch or CUDA is not there."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None:
        return None, None
    try:
        if not cuda.is_available():
            return None, None
        if not cuda.is_initialized():
            return 0, 0
        devices = range(cuda.device_count())
        return (sum(int(cuda.memory_allocated(d)) for d in devices),
                sum(int(cuda.memory_reserved(d)) for d in devices))
    except Exception:  # noqa: BLE001 - a broken CUDA must not break a memory report
        return None, None


def _malloc_trim() -> None:
    """Ask glibc to return freed heap pages to the OS (nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
