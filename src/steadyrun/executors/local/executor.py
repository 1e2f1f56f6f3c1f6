"""Run attempts on this machine, four ways.

``LocalExecutor(strategy=...)``:

- ``"subprocess"`` (default): a fresh ``python -m steadyrun.attempt.worker ATTEMPT_DIR`` per
  attempt, in its own session. Full isolation: timeouts and cancel kill the whole tree,
  environment and ``CUDA_VISIBLE_DEVICES`` are per attempt, a crash loses one attempt.
- ``"process"``: a pool of reusable worker processes (one attempt at a time each). Much
  cheaper per attempt; ``stop`` kills the worker's tree and starts a replacement. A
  worker keeps what its earlier attempts imported or leaked, and keeps the GPUs it saw
  when it first initialised CUDA: prefer ``subprocess`` for GPU work.
- ``"thread"``: a thread pool in this process. For I/O-bound or GIL-releasing work.
  A thread cannot be killed: ``stop`` reports the attempt ended at once and drops what
  the thread returns later (a Script it runs is killed, Python code runs on).
- ``"sequential"``: in the caller's thread, one attempt per :meth:`wait` call. For
  debugging (breakpoints work).

Environment: an attempt's ``env`` and its GPUs are exported as variables by the
``subprocess`` and ``process`` strategies. ``CUDA_VISIBLE_DEVICES`` is the assigned list
when GPUs were assigned, and ``""`` (no GPU visible) when the machine has GPUs but the
attempt asked for none, so a task without a GPU request cannot take one by accident. In
the in-process strategies only a Script's child process gets ``env``.

No orphans: a worker process keeps every process its payload starts as a descendant
(daemons too) and ends what is left when the payload ends or is stopped; processes an
attempt starts carry ``STEADYRUN_ATTEMPT_ID`` in their environment, so what a killed
worker or an in-process attempt (``thread``, ``sequential``) left is found and ended too.
Every worker process writes ``identity.json`` before its payload starts, so recovery
after a crash finds what still runs; in-process attempts (``thread``, ``sequential``)
write none: they die with their controller.

Memory: an attempt with ``Resources(memory=..., enforce=True)`` runs, in the
``subprocess`` and ``process`` strategies, in a memory cgroup whose hard limit is its
request (as root, where a memory controller is mounted: :mod:`steadyrun.attempt.memcg`);
the kernel stops it at the limit and it fails as ``oom``. Elsewhere the engine samples
it every 0.1 s; ``thread`` and ``sequential`` attempts share the controller's memory
and cannot be held to a request.

Logs: each attempt's ``stdout.log`` and ``stderr.log`` are capped at ``max_log_bytes``
(256 MiB by default, ``None`` for no limit): past it the first and the last halves are
kept, with one line between them saying how many bytes were dropped
(:mod:`steadyrun.attempt.logcap`). In the ``subprocess`` and ``process`` strategies the
worker's file descriptors 1 and 2 are pipes pumped into the logs, so the output of C code
and of child processes is capped too; in ``thread`` and ``sequential`` what the attempt's
thread prints and what its Script prints are.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import deque
from typing import Any

from steadyrun.attempt import folder, logcap, proctree, reaper, worker
from steadyrun.errors import ExecutorError
from steadyrun.executors.base import AttemptSpec, Capacity, Executor, Outcome
from steadyrun.executors.local import package_env
from steadyrun.executors.local.processes import _ProcessPool, _stopped, _Subprocesses

STRATEGIES = ("sequential", "thread", "process", "subprocess")
_CLOSED = "the executor is closed"


class LocalExecutor(Executor):
    """Runs attempts on this machine with one of :data:`STRATEGIES`.

    ``max_workers`` bounds the thread and process pools (default: the CPU capacity, at
    least 1) and, when given, the number of concurrent subprocesses; :meth:`free_slots`
    says how many more would start now (launches beyond it wait in a queue, a fallback
    the engine avoids). ``cpus``/``memory``/``gpus`` replace the detected capacity (see
    :func:`steadyrun.observe.resources.local_capacity`). ``grace_period`` is the time between
    SIGTERM and SIGKILL when an attempt is stopped, and the time a preempted attempt
    gets to save (``Task(checkpoint_on_timeout=True)``: SIGUSR1 at the time limit, then
    this long before the kill; ``subprocess`` strategy only, the others cannot signal
    an attempt and such a task is refused). ``max_log_bytes`` caps each of an
    attempt's two logs (bytes or a size such as ``"1GiB"``; at least 4 KiB; ``None``: no
    limit): the first and last halves are kept and a line between them says what was
    dropped. ``ntasks_per_node`` and ``launcher`` (``"torchrun"``,
    :class:`~steadyrun.Torchrun`, or None) run each attempt as that many ranks
    (:mod:`steadyrun.launchers`; ``subprocess`` strategy only): a task's ``Resources``
    are per rank and admission counts them all; the value is rank 0's, and when a rank
    fails the others are stopped and the attempt fails with that rank's error.
    ``packager`` (e.g. :class:`~steadyrun.GitArchivePackager`; ``subprocess`` strategy)
    runs each attempt in the experiment's package instead of in place
    (:mod:`steadyrun.executors.local.package_env`). Raises
    :class:`~steadyrun.errors.ExecutorError` for an unknown strategy or bad option.
    """

    def __init__(self, strategy: str = "subprocess", max_workers: int | None = None,
                 cpus: float | None = None, memory: int | str | None = None,
                 gpus: int | list[int] | None = None, grace_period: float = 5.0,
                 max_log_bytes: int | str | None = logcap.DEFAULT_MAX_LOG_BYTES,
                 ntasks_per_node: int = 1, launcher: Any = None, packager: Any = None) -> None:
        if strategy not in STRATEGIES:
            raise ExecutorError(
                f"LocalExecutor(strategy={strategy!r}) is not a strategy; choose one of: "
                f"{', '.join(STRATEGIES)}")
        if max_workers is not None and (isinstance(max_workers, bool)
                                        or not isinstance(max_workers, int) or max_workers < 1):
            raise ExecutorError(
                f"LocalExecutor(max_workers={max_workers!r}): give a whole number >= 1 or None")
        if not isinstance(grace_period, int | float) or grace_period < 0:
            raise ExecutorError(
                f"LocalExecutor(grace_period={grace_period!r}): give seconds >= 0")
        from steadyrun.launchers import resolve_gang

        self.gang = resolve_gang(1, ntasks_per_node, launcher, "LocalExecutor")
        if self.gang is not None and strategy != "subprocess":
            raise ExecutorError(
                f"LocalExecutor(strategy={strategy!r}, ntasks_per_node={ntasks_per_node}, "
                f"launcher={launcher!r}): ranks run as processes of their own; use "
                "strategy='subprocess' (the default)")
        self.strategy = strategy
        self.packager = package_env.checked(packager, strategy)
        self.max_workers = max_workers
        self.cpus, self.memory, self.gpus = cpus, memory, gpus
        self.grace_period = float(grace_period)
        self.max_log_bytes = _log_cap(max_log_bytes)
        self.name = f"local/{strategy}"
        self.can_preempt = strategy == "subprocess"  # SIGUSR1 reaches the worker
        # in this process, nothing needs the folder before the attempt writes to it
        self.lazy_attempt_dirs = strategy in ("thread", "sequential")
        self._capacity: Capacity | None = None
        self._impl: Any = None

    # -- the contract ------------------------------------------------------------------

    def open(self) -> None:
        """Start the pool (thread, process); nothing to do for the other strategies."""
        if self._impl is None:
            self._impl = _IMPLS[self.strategy](self)

    def close(self) -> None:
        """Stop the pools and kill every attempt still running (its whole tree)."""
        impl, self._impl = self._impl, None
        if impl is not None:
            impl.close()

    def capacity(self) -> Capacity:
        """The detected capacity of this machine, with the explicit options applied."""
        if self._capacity is None:
            from steadyrun.observe.resources import local_capacity

            self._capacity = local_capacity(self.cpus, self.memory, self.gpus)
        return self._capacity

    def available_memory(self) -> int | None:
        from steadyrun.observe.resources import available_memory

        return available_memory()

    def launch(self, spec: AttemptSpec) -> None:
        """Start (or queue) one attempt. Raises ExecutorError when it cannot start: its
        folder is missing, its payload cannot be serialized, the process cannot start."""
        if not spec.lazy_dir and not os.path.isdir(spec.attempt_dir):
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: its folder "
                f"{os.fspath(spec.attempt_dir)!r} does not exist")
        self.open()
        self._impl.launch(spec)

    def wait(self, timeout: float) -> list[Outcome]:
        if self._impl is None:
            return []
        return self._impl.wait(max(0.0, float(timeout)))

    def stop(self, attempt_id: str, kind: str) -> None:
        if self._impl is not None:
            self._impl.stop(attempt_id, kind)

    def pids(self) -> dict[str, int]:
        """Root pid per started attempt, from the moment ``launch`` returns (a pool
        worker's pid for ``process``; none for the in-process strategies, whose attempts
        run in this process)."""
        return {} if self._impl is None else self._impl.pids()

    def free_slots(self) -> int | None:
        """How many more attempts would start right now: the pool's idle workers or
        threads, or ``max_workers`` less the running subprocesses (None when
        ``subprocess`` has no ``max_workers``); ``sequential`` runs one per
        :meth:`wait`. An attempt launched beyond it waits in a queue, where its pid is
        unknown and its time limit already runs."""
        self.open()
        return self._impl.free_slots()

    def to_config(self) -> dict[str, Any]:
        return {"type": "LocalExecutor", "strategy": self.strategy,
                "max_workers": self.max_workers, "cpus": self.cpus, "memory": self.memory,
                "gpus": self.gpus, "grace_period": self.grace_period,
                "max_log_bytes": self.max_log_bytes, **self._gang_config(),
                **package_env.config(self.packager)}

    def _gang_config(self) -> dict[str, Any]:
        from steadyrun.launchers import launcher_config

        if self.gang is None:
            return {}
        return {"ntasks_per_node": self.gang.ntasks_per_node,
                "launcher": launcher_config(self.gang.launcher)}

    # -- shared helpers ----------------------------------------------------------------

    def _pool_size(self) -> int:
        if self.max_workers is not None:
            return self.max_workers
        return max(1, math.ceil(self.capacity().cpus))

    def _attempt_env(self, spec: AttemptSpec) -> dict[str, str]:
        """Variables to add for one attempt: its env and CUDA_VISIBLE_DEVICES."""
        env: dict[str, str] = {}
        if spec.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)
        elif self.capacity().gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        env.update({str(k): str(v) for k, v in spec.env.items()})
        # the tag finds the attempt's processes; the pid lets a worker see its controller die
        env[folder.ATTEMPT_ID_ENV] = spec.attempt_id
        env[folder.CONTROLLER_PID_ENV] = str(os.getpid())
        env[worker.GRACE_ENV] = str(self.grace_period)
        env[logcap.MAX_LOG_ENV] = logcap.env_value(self.max_log_bytes)
        env.update(package_env.worker_env(self._package_dir(spec)))
        return env

    def _package_dir(self, spec: AttemptSpec) -> str | None:
        """The unpacked package an attempt runs in (its working folder), or None."""
        return package_env.folder(self, spec.attempt_dir)

    def __repr__(self) -> str:
        gang = "" if self.gang is None else (
            f", ntasks_per_node={self.gang.ntasks_per_node}, launcher="
            f"{'torchrun' if self.gang.launcher else None!r}")
        return (f"LocalExecutor(strategy={self.strategy!r}, "
                f"max_workers={self.max_workers!r}{gang})")


# --- sequential -------------------------------------------------------------------------


class _Sequential:
    def __init__(self, ex: LocalExecutor) -> None:
        reaper.tag_subprocesses()  # counts the processes an attempt starts
        self._grace = ex.grace_period
        self._cap = ex.max_log_bytes
        self._queue: deque[AttemptSpec] = deque()
        self._done: list[Outcome] = []

    def free_slots(self) -> int:
        return 0 if self._queue else 1

    def launch(self, spec: AttemptSpec) -> None:
        self._queue.append(spec)

    def wait(self, timeout: float) -> list[Outcome]:
        if self._done:
            done, self._done = self._done, []
            return done
        if not self._queue:
            if timeout:
                threading.Event().wait(timeout)  # nothing can arrive: just let time pass
            return []
        spec = self._queue.popleft()
        # one attempt at a time here: every child it starts inherits its tag
        return [_run_in_controller(spec, self._grace, tag_environ=True, cap=self._cap)]

    def stop(self, attempt_id: str, kind: str) -> None:
        for spec in self._queue:
            if spec.attempt_id == attempt_id:
                self._queue.remove(spec)
                self._done.append(_stopped(attempt_id, kind, "before it started"))
                return

    def pids(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._queue.clear()


# --- thread -----------------------------------------------------------------------------


class _Threads:
    def __init__(self, ex: LocalExecutor) -> None:
        import queue

        self._grace = ex.grace_period
        self._cap = ex.max_log_bytes
        self._tasks: Any = queue.SimpleQueue()
        self._out: Any = queue.SimpleQueue()
        self._empty = queue.Empty
        self._lock = threading.Lock()
        self._pending: dict[str, AttemptSpec] = {}
        self._running: dict[str, AttemptSpec] = {}
        self._abandoned: set[str] = set()
        self._closed = False
        reaper.tag_subprocesses()
        self._size = ex._pool_size()
        self._threads = [self._start_thread() for _ in range(self._size)]

    def _start_thread(self) -> threading.Thread:
        t = threading.Thread(target=self._loop, name="steadyrun-thread", daemon=True)
        t.start()
        return t

    def _loop(self) -> None:
        while True:
            spec = self._tasks.get()
            if spec is None:
                return
            aid = spec.attempt_id
            with self._lock:
                if self._pending.pop(aid, None) is None:
                    continue  # stopped while queued: already reported
                self._running[aid] = spec
            outcome = _run_in_controller(spec, self._grace, tag_environ=False, cap=self._cap)
            with self._lock:
                self._running.pop(aid, None)
                if aid in self._abandoned:  # stopped: reported already, a replacement runs
                    self._abandoned.discard(aid)
                    return
            self._out.put(outcome)

    def launch(self, spec: AttemptSpec) -> None:
        with self._lock:
            if self._closed:
                raise ExecutorError(_CLOSED)
            self._pending[spec.attempt_id] = spec
        self._tasks.put(spec)

    def wait(self, timeout: float) -> list[Outcome]:
        try:
            outs = [self._out.get(timeout=timeout)]
        except self._empty:
            return []
        while True:
            try:
                outs.append(self._out.get_nowait())
            except self._empty:
                return outs

    def stop(self, attempt_id: str, kind: str) -> None:
        with self._lock:
            if self._pending.pop(attempt_id, None) is not None:
                self._out.put(_stopped(attempt_id, kind, "before it started"))
                return
            spec = self._running.get(attempt_id)
            if spec is None or attempt_id in self._abandoned:
                return
            self._abandoned.add(attempt_id)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(self._start_thread())
        _end_in_process(spec, self._grace)
        self._out.put(_stopped(attempt_id, kind, "its thread cannot be killed and was "
                                                 "abandoned; what it returns is dropped"))

    def pids(self) -> dict[str, int]:
        return {}

    def free_slots(self) -> int:
        with self._lock:  # an abandoned thread has a replacement: it takes no slot
            busy = len(self._pending) + len(self._running) - len(self._abandoned)
        return max(0, self._size - busy)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            running = list(self._running.values())
            self._pending.clear()
        for spec in running:
            _end_in_process(spec, self._grace)
        for _ in self._threads:
            self._tasks.put(None)


# --- attempts in the controller's own process ------------------------------------------


def _run_in_controller(spec: AttemptSpec, grace: float, *, tag_environ: bool,
                       cap: int | None = logcap.DEFAULT_MAX_LOG_BYTES) -> Outcome:
    """Run one attempt in this process (``thread``, ``sequential``), then end what it
    left running. It writes no identity file: it dies with this process, so there is
    nothing for recovery to find. Its Script and the processes
    it forks carry its tag; with ``tag_environ`` (one attempt at a time) every child does.
    The scan for tagged processes runs only when the attempt started processes."""
    aid, directory = spec.attempt_id, os.fspath(spec.attempt_dir)
    before = reaper.child_activity()
    saved = os.environ.get(folder.ATTEMPT_ID_ENV) if tag_environ else None
    if tag_environ:
        os.environ[folder.ATTEMPT_ID_ENV] = aid
    try:
        res = worker.execute(spec.payload, directory, in_process_streams=True, attempt_id=aid,
                             max_log_bytes=cap, lazy_dir=spec.lazy_dir)
    finally:
        if tag_environ:
            if saved is None:
                os.environ.pop(folder.ATTEMPT_ID_ENV, None)
            else:
                os.environ[folder.ATTEMPT_ID_ENV] = saved
    if _is_script(spec.payload) or reaper.child_activity() != before:
        reaper.end_tagged(folder.ATTEMPT_ID_ENV, aid, min(grace, worker.LEFTOVER_GRACE))
    return res.to_outcome(aid)


def _end_in_process(spec: AttemptSpec, grace: float) -> None:
    """Stop what an in-process attempt runs outside this process: its Script's tree and
    every process carrying its tag (its Python code cannot be stopped)."""
    pid = worker.running_script_pid(spec.attempt_dir)
    if pid is not None:
        proctree.kill_tree(pid, grace)
    reaper.end_tagged(folder.ATTEMPT_ID_ENV, spec.attempt_id, grace)


def _is_script(payload: Any) -> bool:
    cfg = sys.modules.get("steadyrun.config")
    return cfg is not None and isinstance(payload, cfg.Script)


def _log_cap(value: int | str | None) -> int | None:
    """``max_log_bytes`` as bytes (None: no limit), or an ExecutorError saying why not."""
    from steadyrun.errors import TaskDefinitionError
    from steadyrun.units import parse_size

    try:
        cap = parse_size(value, what="LocalExecutor(max_log_bytes=...)")
    except TaskDefinitionError as e:
        raise ExecutorError(str(e)) from None
    if cap is not None and cap < logcap.MIN_MAX_LOG_BYTES:
        raise ExecutorError(
            f"LocalExecutor(max_log_bytes={value!r}): keep at least "
            f"{logcap.MIN_MAX_LOG_BYTES} bytes, or give None for no limit")
    return cap


_IMPLS: dict[str, Any] = {"sequential": _Sequential, "thread": _Threads,
                          "process": _ProcessPool, "subprocess": _Subprocesses}
