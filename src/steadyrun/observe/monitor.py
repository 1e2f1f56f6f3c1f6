"""Sampling what running work uses: CPU, memory, I/O and GPUs of whole process trees.

- :class:`ProcessTreeSampler` measures any number of process trees at once, keeping its
  ``psutil.Process`` objects between samples so CPU percentages need no sleeping.
- :class:`AttemptMonitor` is the engine's one background thread that samples every
  running attempt, keeps per-attempt peaks and hands batches of samples to a sink.
- :class:`Monitor` watches the current process (and the children it starts) from inside
  a ``with`` block: ``with run.Monitor() as m: ...; m.summary()``.

A tree is the root process, all its descendants, and, when the root leads a process
group of its own (executors start attempts with ``start_new_session=True``), every
member of that group: a daemonised grandchild whose parent exited still counts.
psutil (and NVML, for GPUs) are imported when a sampler first samples.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from steadyrun.errors import TaskDefinitionError
from steadyrun.observe._gpu import NVMLSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TreeSample:
    """One measure of one process tree.

    ``cpu_percent`` sums the tree's processes (100 = one core busy) over the time since
    the previous sample; a process seen for the first time counts its CPU use since it
    started when that was after the previous sample, else 0 (it primes, as
    ``psutil.Process.cpu_percent`` does), so a tree's first sample reads 0.
    ``cpu_seconds`` is the user + system time of every process seen in the tree since
    each started, those that ended included (until their last sample). ``rss`` sums the
    live processes (shared pages are counted once per process). ``read_bytes`` /
    ``write_bytes`` are cumulative storage I/O of the processes seen (``None`` when the
    OS refused every one). GPU fields come from NVML: ``gpu_memory`` (bytes, summed over
    the tree's pids and devices; ``None`` without NVML), ``gpus`` the device indices the
    tree uses and ``gpu_utilization`` their mean busy percent (``None`` when none).
    """

    key: str
    pid: int
    time: float
    cpu_percent: float
    cpu_seconds: float
    rss: int
    processes: int
    read_bytes: int | None = None
    write_bytes: int | None = None
    gpu_memory: int | None = None
    gpu_utilization: float | None = None
    gpus: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpus"] = list(self.gpus)
        return d


#: What an :class:`AttemptMonitor` hands to its sink: one :class:`TreeSample` per running
#: attempt per tick (``key`` is the attempt id).
SampleRecord = TreeSample


@dataclass
class Peaks:
    """Running figures of one tree over the samples seen: highest RSS, GPU memory, CPU
    percent and process count, and the latest cumulative ``cpu_seconds``. Times are
    Unix timestamps of the first and last samples."""

    samples: int = 0
    first: float | None = None
    last: float | None = None
    peak_rss: int = 0
    peak_gpu_memory: int | None = None
    peak_processes: int = 0
    max_cpu_percent: float = 0.0
    cpu_seconds: float = 0.0
    _first_cpu_seconds: float = field(default=0.0, repr=False)

    @property
    def duration(self) -> float:
        """Seconds between the first and the last sample."""
        return (self.last - self.first) if self.first is not None and self.last else 0.0

    @property
    def mean_cpu_percent(self) -> float:
        """Average busy percent between the first and the last sample (from CPU time, so
        it does not depend on how often samples were taken)."""
        d = self.duration
        return 100.0 * (self.cpu_seconds - self._first_cpu_seconds) / d if d > 0 else 0.0

    def add(self, s: TreeSample) -> None:
        if self.first is None:
            self.first, self._first_cpu_seconds = s.time, s.cpu_seconds
        self.samples += 1
        self.last = s.time
        self.peak_rss = max(self.peak_rss, s.rss)
        self.peak_processes = max(self.peak_processes, s.processes)
        self.max_cpu_percent = max(self.max_cpu_percent, s.cpu_percent)
        self.cpu_seconds = max(self.cpu_seconds, s.cpu_seconds)
        if s.gpu_memory is not None:
            self.peak_gpu_memory = max(self.peak_gpu_memory or 0, s.gpu_memory)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "first": self.first, "last": self.last,
                "duration": self.duration, "peak_rss": self.peak_rss,
                "peak_gpu_memory": self.peak_gpu_memory, "peak_processes": self.peak_processes,
                "max_cpu_percent": self.max_cpu_percent,
                "mean_cpu_percent": round(self.mean_cpu_percent, 1),
                "cpu_seconds": self.cpu_seconds}


class ProcessTreeSampler:
    """Measures process trees: ``sample({"train": pid, ...})`` -> one :class:`TreeSample`
    per key whose tree still has a live process (keys whose root and group are gone are
    left out).

    Children are discovered at every sample (one pass over the process table for all
    trees); a new process is primed, one that vanished is dropped (its CPU time and I/O
    stay in the tree's totals). Processes that vanish or may not be read mid-sample are
    skipped, never raised. ``nvml`` replaces pynvml (tests pass a fake); ``gpu=False``
    skips NVML; ``children=False`` measures the roots alone. Not thread-safe: use one
    sampler from one thread. :meth:`close` releases NVML.
    """

    #: Seconds between full re-reads of the process table (Linux); see :meth:`_scan`.
    FULL_SCAN = 10.0

    def __init__(self, *, nvml: Any = None, gpu: bool = True, children: bool = True) -> None:
        self._nvml_module = nvml
        self._gpu_wanted = gpu
        self._gpu: NVMLSession | None = None
        self._children = children
        self._trees: dict[str, _Tree] = {}
        self._proc_fs = os.path.exists("/proc/self/stat")
        self._own_pgrp = os.getpgrp()
        self._clock_ticks = os.sysconf("SC_CLK_TCK") if self._proc_fs else 100
        self._table: dict[int, tuple[int, int, Any, bool]] = {}
        self._next_full_scan = 0.0

    def sample(self, roots: Mapping[str, int]) -> dict[str, TreeSample]:
        """Measure every tree in ``roots`` (key -> root pid) now."""
        import psutil

        for key in [k for k in self._trees if k not in roots]:
            del self._trees[key]
        if not roots:
            return {}
        table = self._scan(psutil)
        kids: dict[int, list[int]] = {}
        groups: dict[int, list[int]] = {}
        for pid, (ppid, pgrp, _, _) in table.items():
            kids.setdefault(ppid, []).append(pid)
            groups.setdefault(pgrp, []).append(pid)
        gpu_memory, gpu_util = self._gpu_figures()
        wall, mono = time.time(), time.monotonic()
        out = {}
        for key, root in roots.items():
            tree = self._trees.get(key)
            if tree is None or tree.root != root:
                tree = self._trees[key] = _Tree(root)
            members = self._members(root, table, kids, groups)
            s = self._measure(psutil, key, tree, members, table, wall, mono)
            if s is None:
                continue
            if gpu_memory is not None:
                used: dict[int, int] = {}
                for pid in tree.live:
                    for dev, n in gpu_memory.get(pid, {}).items():
                        used[dev] = used.get(dev, 0) + n
                busy = [gpu_util[d] for d in used if d in gpu_util]
                s = replace(s, gpu_memory=sum(used.values()), gpus=tuple(sorted(used)),
                            gpu_utilization=round(sum(busy) / len(busy), 1) if busy else None)
            out[key] = s
        return out

    def close(self) -> None:
        """Shut NVML down and forget every tree (idempotent)."""
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None
        self._trees.clear()

    # --- internals ----------------------------------------------------------------------

    def _scan(self, psutil: Any) -> dict[int, tuple[int, int, Any, bool]]:
        """pid -> (ppid, pgrp, start token, was a zombie) for every process of the machine.

        On Linux only processes that appeared since the previous scan are read (a pid
        reused between two listings a tick apart would need the whole pid space to wrap
        in that time); every :data:`FULL_SCAN`
        seconds all are read again, to catch orphans that were re-parented. Members'
        zombie state is read fresh in :meth:`_measure`.
        """
        if self._proc_fs:
            now = time.monotonic()
            old = self._table
            if now >= self._next_full_scan:
                old, self._next_full_scan = {}, now + self.FULL_SCAN
            table: dict[int, tuple[int, int, Any, bool]] = {}
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                pid = int(name)
                entry = old.get(pid) or _read_stat(pid)
                if entry is not None:
                    table[pid] = entry
            self._table = table
            return table
        table = {}
        for p in psutil.process_iter(["ppid", "create_time", "status"]):
            info = p.info
            try:
                pgrp = os.getpgid(p.pid)
            except (OSError, AttributeError):
                pgrp = -1
            table[p.pid] = (info["ppid"] or 0, pgrp, info["create_time"],
                            info["status"] == psutil.STATUS_ZOMBIE)
        return table

    def _members(self, root: int, table: dict[int, tuple[int, int, Any, bool]],
                 kids: dict[int, list[int]], groups: dict[int, list[int]]) -> set[int]:
        found: set[int] = set()
        stack = [root] if root in table else []
        if self._children and root != self._own_pgrp:
            stack.extend(groups.get(root, ()))  # root leads a group: orphans count too
        while stack:
            pid = stack.pop()
            if pid in found:
                continue
            found.add(pid)
            if self._children:
                stack.extend(kids.get(pid, ()))
        return found

    def _measure(self, psutil: Any, key: str, tree: _Tree, members: set[int],
                 table: dict[int, tuple[int, int, Any, bool]], wall: float,
                 mono: float) -> TreeSample | None:
        errors = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)
        cpu_percent, rss, io_seen = 0.0, 0, tree.io_seen
        for pid in list(tree.live):
            if pid not in members or tree.live[pid].start != table[pid][2]:
                tree.retire(pid)
        for pid in members:
            st = tree.live.get(pid)
            fresh = st is None
            if st is None:
                try:
                    st = _Proc(psutil.Process(pid), table[pid][2])
                except errors:
                    continue
            try:
                with st.proc.oneshot():
                    if st.proc.status() == psutil.STATUS_ZOMBIE:  # uses nothing, not counted
                        raise psutil.ZombieProcess(pid)
                    times = st.proc.cpu_times()
                    mem = st.proc.memory_info().rss
                    try:
                        io = st.proc.io_counters()
                    except (psutil.AccessDenied, AttributeError, NotImplementedError):
                        io = None
            except errors:
                if not fresh:
                    tree.retire(pid)
                continue
            cpu = float(times.user + times.system)
            if not fresh:
                elapsed = mono - st.mono
                cpu_percent += 100.0 * (cpu - st.cpu) / elapsed if elapsed > 0 else 0.0
            elif tree.last_mono is not None:
                # born since the previous sample: its whole CPU time falls in this window
                age = self._age(st, wall, errors)
                if age is not None and age < mono - tree.last_mono:
                    cpu_percent += 100.0 * cpu / max(age, 0.01)
            st.cpu, st.mono = cpu, mono
            if io is not None:
                st.read, st.write = int(io.read_bytes), int(io.write_bytes)
                io_seen = True
            tree.live[pid] = st
            rss += int(mem)
        tree.io_seen = io_seen
        tree.last_mono = mono
        if not tree.live:
            return None
        cpu_seconds = tree.gone_cpu + sum(p.cpu for p in tree.live.values())
        read = tree.gone_read + sum(p.read for p in tree.live.values())
        write = tree.gone_write + sum(p.write for p in tree.live.values())
        return TreeSample(key=key, pid=tree.root, time=wall,
                          cpu_percent=round(max(0.0, cpu_percent), 1),
                          cpu_seconds=round(cpu_seconds, 3), rss=rss,
                          processes=len(tree.live), read_bytes=read if io_seen else None,
                          write_bytes=write if io_seen else None)

    def _age(self, st: _Proc, wall: float, errors: tuple[type[BaseException], ...]
             ) -> float | None:
        """Seconds since the process started. On Linux from its start tick and the boot
        clock (psutil's create_time rests on a boot time rounded to the second)."""
        if self._proc_fs and isinstance(st.start, int):
            return time.clock_gettime(time.CLOCK_BOOTTIME) - st.start / self._clock_ticks
        try:
            return wall - st.proc.create_time()
        except errors:
            return None

    def _gpu_figures(self) -> tuple[dict[int, dict[int, int]] | None, dict[int, float]]:
        if not self._gpu_wanted:
            return None, {}
        if self._gpu is None:
            self._gpu = NVMLSession(self._nvml_module)
        if not self._gpu.ok or not self._gpu.indices:  # NVML but no device: no GPU fields
            return None, {}
        return self._gpu.process_memory(), self._gpu.utilization()


class AttemptMonitor:
    """One background thread that samples every running attempt.

    Every ``interval`` seconds it asks ``pids_source()`` for the running attempts
    (attempt id -> root pid, e.g. ``executor.pids``), samples all their trees with one
    :class:`ProcessTreeSampler`, updates per-attempt :class:`Peaks` and queues one
    :class:`SampleRecord` per attempt. Queued records go to ``sink(records)`` once at
    least ``batch_size`` are waiting (one tick's records stay in one batch) or
    ``flush_every`` seconds have passed since the last batch, and at :meth:`stop`. A
    failing ``pids_source`` or ``sink`` is logged (logger ``steadyrun.observe.monitor``) and the
    thread goes on; a sink's failed batch is dropped. ``cpu_time`` is the CPU the
    sampling itself has used (seconds), ``ticks`` how many samples it took.
    """

    def __init__(self, pids_source: Callable[[], Mapping[str, int]], *,
                 interval: float = 1.0,
                 sink: Callable[[list[SampleRecord]], None] | None = None,
                 batch_size: int = 60, flush_every: float = 10.0, nvml: Any = None,
                 gpu: bool = True, children: bool = True) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise TaskDefinitionError(f"interval: expected seconds above 0, got {interval!r}")
        self.interval = float(interval)
        self.batch_size = max(1, int(batch_size))
        self.flush_every = float(flush_every)
        self._source = pids_source
        self._sink = sink
        self._sampler = ProcessTreeSampler(nvml=nvml, gpu=gpu, children=children)
        self._lock = threading.Lock()        # guards the figures below
        self._tick_lock = threading.Lock()   # one tick at a time (thread or sample_now)
        self._latest: dict[str, TreeSample] = {}
        self._peaks: dict[str, Peaks] = {}
        self._pending: list[SampleRecord] = []
        self._last_flush = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_time = 0.0
        self.ticks = 0

    def start(self) -> AttemptMonitor:
        """Take a first sample now (it primes CPU figures) and start the thread."""
        if self._thread is not None:
            return self
        self.sample_now()
        self._thread = threading.Thread(target=self._run, name="steadyrun-monitor",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, *, final_sample: bool = False) -> None:
        """Stop the thread (after one last sample with ``final_sample``), hand what is
        queued to the sink and release NVML. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if final_sample:
            self.sample_now()
        self.flush()
        with self._tick_lock:
            self._sampler.close()

    def sample_now(self) -> dict[str, TreeSample]:
        """Sample every running attempt now, from the calling thread; returns the samples."""
        with self._tick_lock:
            started = time.thread_time()
            try:
                roots = dict(self._source())
            except Exception:  # noqa: BLE001 - the monitor must never stop the controller
                log.warning("monitor: pids_source failed; skipping this sample", exc_info=True)
                return {}
            samples = self._sampler.sample(roots)
            with self._lock:
                for key, s in samples.items():
                    self._latest[key] = s
                    self._peaks.setdefault(key, Peaks()).add(s)
                for key in [k for k in self._latest if k not in samples]:
                    del self._latest[key]
                self._pending.extend(samples.values())
                due = (len(self._pending) >= self.batch_size
                       or time.monotonic() - self._last_flush >= self.flush_every)
            self.ticks += 1
            if due:
                self.flush()
            self.cpu_time += time.thread_time() - started
        return samples

    def flush(self) -> None:
        """Hand the queued records to the sink now (nothing happens without a sink)."""
        with self._lock:
            batch, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        if batch and self._sink is not None:
            try:
                self._sink(batch)
            except Exception:  # noqa: BLE001
                log.warning("monitor: sink failed; %d sample(s) dropped", len(batch),
                            exc_info=True)

    def peaks(self, key: str) -> Peaks | None:
        """The :class:`Peaks` of attempt ``key`` so far (a copy), or None if never sampled."""
        with self._lock:
            p = self._peaks.get(key)
            return replace(p) if p is not None else None

    def forget(self, key: str) -> Peaks | None:
        """Drop and return the peaks of an attempt that ended (keeps memory flat)."""
        with self._lock:
            self._latest.pop(key, None)
            return self._peaks.pop(key, None)

    def latest(self) -> dict[str, TreeSample]:
        """The last sample of every attempt that was running at the last tick."""
        with self._lock:
            return dict(self._latest)

    def __enter__(self) -> AttemptMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            try:
                self.sample_now()
            except Exception:  # noqa: BLE001 - keep sampling whatever one tick did
                log.warning("monitor: a sample failed", exc_info=True)
            now = time.monotonic()
            next_tick += self.interval
            if next_tick <= now:  # a slow tick: skip the missed slots, do not burst
                next_tick = now + self.interval


class Monitor:
    """Watch this process and the children it starts, from inside a ``with`` block.

    ::

        with run.Monitor(interval=1.0) as m:
            train()
            print(m.metrics())      # latest: cpu_percent, rss, memory_percent, elapsed...
        print(m.summary())          # peak_rss, mean/max cpu_percent, duration, samples

    A background thread samples every ``interval`` seconds, plus once on entry and once
    on exit. ``m.samples`` holds the last ``keep`` :class:`TreeSample` (all figures in
    :meth:`summary` cover every sample). ``children=False`` watches this process alone;
    ``nvml`` replaces pynvml (tests pass a fake).
    """

    def __init__(self, interval: float = 1.0, *, children: bool = True,
                 keep: int | None = 100_000, nvml: Any = None) -> None:
        self.interval = interval
        self._pid = os.getpid()
        self._samples: deque[TreeSample] = deque(maxlen=keep)
        self._monitor = AttemptMonitor(lambda: {"self": self._pid}, interval=interval,
                                       sink=self._samples.extend, batch_size=1,
                                       nvml=nvml, children=children)
        self._started: float | None = None
        self._ended: float | None = None
        self._total: int | None = None

    @property
    def samples(self) -> list[TreeSample]:
        return list(self._samples)

    def start(self) -> Monitor:
        if self._started is None:
            from steadyrun.observe.resources import memory_info

            self._total = memory_info().total
            self._started = time.monotonic()
            self._monitor.start()
        return self

    def stop(self) -> None:
        if self._started is not None and self._ended is None:
            self._monitor.stop(final_sample=True)
            self._ended = time.monotonic()

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metrics(self) -> dict[str, Any]:
        """The latest figures: ``cpu_percent``, ``rss`` (bytes), ``memory_mb``,
        ``memory_percent`` (of the cgroup-aware total), ``processes``, ``cpu_seconds``,
        ``elapsed`` (seconds since start) and, when NVML sees this process,
        ``gpu_memory`` and ``gpu_utilization``. Empty before :meth:`start`."""
        s = self._monitor.latest().get("self") or (self._samples[-1] if self._samples
                                                   else None)
        if s is None:
            return {}
        out: dict[str, Any] = {
            "cpu_percent": s.cpu_percent, "rss": s.rss, "memory_mb": s.rss / 2**20,
            "memory_percent": round(100.0 * s.rss / self._total, 2) if self._total else 0.0,
            "processes": s.processes, "cpu_seconds": s.cpu_seconds, "elapsed": self.elapsed,
        }
        if s.gpu_memory is not None:
            out["gpu_memory"] = s.gpu_memory
        if s.gpu_utilization is not None:
            out["gpu_utilization"] = s.gpu_utilization
        return out

    def summary(self) -> dict[str, Any]:
        """Over the whole run: ``duration``, ``samples``, ``peak_rss``, ``peak_memory_mb``,
        ``mean_cpu_percent`` (from CPU time), ``max_cpu_percent``, ``cpu_seconds``,
        ``peak_processes`` and, when NVML saw this process, ``peak_gpu_memory``."""
        p = self._monitor.peaks("self") or Peaks()
        out = p.to_dict()
        del out["first"], out["last"]
        out["duration"] = self.elapsed
        out["peak_memory_mb"] = p.peak_rss / 2**20
        if out["peak_gpu_memory"] is None:
            del out["peak_gpu_memory"]
        return out

    @property
    def elapsed(self) -> float:
        """Seconds since start (until stop once stopped)."""
        if self._started is None:
            return 0.0
        return (self._ended or time.monotonic()) - self._started


# --- helpers ----------------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[int, int, int, bool] | None:
    """(ppid, pgrp, start tick, is zombie) from /proc/PID/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        rest = data[data.rindex(b")") + 2:].split()
        return int(rest[1]), int(rest[2]), int(rest[19]), rest[0] == b"Z"
    except (OSError, ValueError, IndexError):
        return None


class _Proc:
    """A process as last seen: its psutil.Process, start token, CPU seconds and I/O."""

    __slots__ = ("proc", "start", "cpu", "mono", "read", "write")

    def __init__(self, proc: Any, start: Any) -> None:
        self.proc, self.start = proc, start
        self.cpu, self.mono, self.read, self.write = 0.0, 0.0, 0, 0


class _Tree:
    """One key's processes, and the totals of those that ended."""

    __slots__ = ("root", "live", "gone_cpu", "gone_read", "gone_write", "last_mono",
                 "io_seen")

    def __init__(self, root: int) -> None:
        self.root = root
        self.live: dict[int, _Proc] = {}
        self.gone_cpu, self.gone_read, self.gone_write = 0.0, 0, 0
        self.last_mono: float | None = None
        self.io_seen = False

    def retire(self, pid: int) -> None:
        p = self.live.pop(pid)
        self.gone_cpu += p.cpu
        self.gone_read += p.read
        self.gone_write += p.write
