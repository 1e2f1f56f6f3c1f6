"""Resource samples of an attempt inside a Ray worker, and the drain watch, without a
thread per attempt.

A Ray worker process runs one task after another; starting (and joining) a thread for
each would cost more than a tiny task itself. One daemon thread per worker process
serves every attempt it runs: an :class:`AttemptSampler` registers with it for the
duration of its attempt. The first sample is taken ``interval`` seconds into the
attempt (a look at the process table is the dearest part of a tiny task, so an attempt
shorter than the interval has no samples, as a local one shorter than the monitor's
interval has none), then every ``interval`` seconds, and once more when the attempt
ends. The drain watch (:class:`~steadyrun.executors.ray.drain.DrainWatch`) is asked
every ``watch.poll`` seconds.

Imports only the standard library at the top: Ray workers import it for every task.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

#: Samples kept per attempt: about an hour at one a second; older ones are thinned out.
MAX_SAMPLES = 3600


class AttemptSampler:
    """Samples the process tree of ``pid`` every ``interval`` seconds (0: never) when
    :class:`steadyrun.observe.monitor.ProcessTreeSampler` is available, and asks
    ``watch`` whether the node is being drained. :meth:`stop` returns the samples (as
    dicts) and the peaks (a dict, or None)."""

    def __init__(self, interval: float, watch: Any = None, pid: int | None = None) -> None:
        import os

        self.interval = interval
        self.watch = watch
        self.roots = {"attempt": pid or os.getpid()}
        self.samples: list[dict[str, Any]] = []
        self.peaks: Any = None
        self._cls: Any = None
        self._sampler: Any = None
        self._next_sample: float | None = None
        self._next_watch: float | None = None
        self._result: tuple[list[dict[str, Any]], dict[str, Any] | None] | None = None
        self._registered = False

    def start(self) -> None:
        now = time.monotonic()
        if self.interval > 0:
            try:
                from steadyrun.observe.monitor import Peaks, ProcessTreeSampler
            except ImportError:
                pass
            else:
                self.peaks, self._cls = Peaks(), ProcessTreeSampler
                self._next_sample = now + self.interval
        if self.watch is not None and self.watch.active:
            self._next_watch = now + self.watch.poll
        if self._next_sample is not None or self._next_watch is not None:
            _background().add(self)
            self._registered = True

    def stop(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if self._result is None:
            if self._registered:
                _background().remove(self)  # waits for a look in progress
                self._registered = False
            if self._sampler is not None:
                if self._next_sample is not None:
                    self._sample()  # one last look at the end
                with contextlib.suppress(Exception):
                    self._sampler.close()
            peaks = self.peaks.to_dict() if self.peaks is not None and self.peaks.samples \
                else None
            self._result = (self.samples, peaks)
        return self._result

    # -- called by the background thread, under its lock ---------------------------------

    def due(self) -> float | None:
        times = [t for t in (self._next_sample, self._next_watch) if t is not None]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        if self._next_sample is not None and now >= self._next_sample:
            if self._sampler is None:
                self._sampler = self._cls()
            # sampling is best effort: when it fails, the attempt goes on unsampled
            self._next_sample = now + self.interval if self._sample() else None
        if self._next_watch is not None and now >= self._next_watch:
            self.watch.check()
            self._next_watch = now + self.watch.poll if self.watch.active else None

    def _sample(self) -> bool:
        try:
            for s in self._sampler.sample(self.roots).values():
                self.peaks.add(s)
                self.samples.append(s.to_dict())
        except Exception:
            return False
        if len(self.samples) > MAX_SAMPLES:
            del self.samples[1::2]  # keep the span, halve the density
        return True


class _Background:
    """The one thread of a worker process that ticks the registered samplers."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[AttemptSampler] = []
        self.until: float | None = None  # when the thread wakes up next (None: notified)
        self.thread = threading.Thread(target=self._run, name="steadyrun-ray-sampler",
                                       daemon=True)
        self.thread.start()

    def add(self, item: AttemptSampler) -> None:
        with self.cond:
            self.items.append(item)
            due = item.due()
            if self.until is None or (due is not None and due < self.until):
                self.cond.notify()  # else the thread wakes up early enough by itself

    def remove(self, item: AttemptSampler) -> None:
        with self.cond, contextlib.suppress(ValueError):
            self.items.remove(item)

    def _run(self) -> None:
        with self.cond:
            while True:
                times = [t for t in (i.due() for i in self.items) if t is not None]
                now = time.monotonic()
                if not times or min(times) > now:
                    self.until = min(times) if times else None
                    self.cond.wait(None if not times else min(times) - now)
                    self.until = None
                    continue
                for item in list(self.items):
                    due = item.due()
                    if due is not None and due <= now:
                        try:
                            item.tick(now)
                        except Exception:  # never let one attempt stop the others' samples
                            with contextlib.suppress(ValueError):
                                self.items.remove(item)


_lock = threading.Lock()
_state: dict[str, _Background] = {}


def _background() -> _Background:
    with _lock:
        bg = _state.get("bg")
        if bg is None or not bg.thread.is_alive():
            bg = _state["bg"] = _Background()
        return bg
