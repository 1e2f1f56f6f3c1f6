"""The engine: one scheduler loop that drives a DAG of tasks on any executor.

It owns the DAG, admission by resources, retries with backoff, degradation on
out-of-memory, timeouts and cancellation, and writes every state change to the store
before acting on it. Executors only start, watch and stop attempts (see
``executors/base.py``). The loop never sleeps for one task: it waits on the executor
with a timeout that ends at the next deadline or retry, so a task in backoff never
blocks the others.

Each pass plans (stops, then admissions through one
:class:`~steadyrun.engine.ledger.CapacityLedger` per executor, never more than the
executor's ``free_slots()``), records, launches, and then takes the outcomes that
arrived. What each outcome does to its task (classify -> record -> decide -> act, with
the pure functions of :mod:`steadyrun.engine.decisions`) and the DAG's bookkeeping are
in :class:`~steadyrun.engine.book.TaskBook`, which the engine extends. The task and attempt state
machines are written down in :mod:`steadyrun.states`; every change goes through
:func:`~steadyrun.states.transition`. Resource sampling, memory enforcement and
out-of-memory evidence live in :mod:`steadyrun.engine.watch`.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from steadyrun.engine.book import GIVEN_UP, TaskBook
from steadyrun.engine.crashpoints import crash_point
from steadyrun.engine.ledger import CapacityLedger
from steadyrun.engine.records import resources_dict, time_limit, unique
from steadyrun.engine.settle import settle_after_exception
from steadyrun.engine.snapshot import EngineSnapshot, build_snapshot
from steadyrun.engine.watch import ENFORCE_INTERVAL, sampler_for
from steadyrun.executors.base import AttemptSpec, Executor, Outcome
from steadyrun.states import (
    WAITING_TASK_STATES,
    AttemptRun,
    FailureKind,
    TaskRun,
    TaskState,
)
from steadyrun.store.db import Store
from steadyrun.task import Resources, Task

log = logging.getLogger(__name__)

_MAX_WAIT = 0.25  # seconds: how long the loop may wait without looking at cancel requests
_HEARTBEAT_EVERY = 2.0
_REQUEST_POLL = 0.2  # seconds between looks at requests from other processes

Plan = tuple[list[tuple[TaskRun, AttemptSpec]], list[tuple[AttemptRun, FailureKind]]]


class Engine(TaskBook):
    """Drive ``tasks`` of experiment ``exp_id`` to the end on ``executor``.

    ``clock`` is the scheduling clock (``time.monotonic``; a fake in tests); ``rng``
    draws the backoff jitter; ``on_change(task_run, state)`` is told every task state
    change (the live views listen here; others read :meth:`snapshot`). ``run()``
    returns the :class:`TaskRun` of every task; it raises nothing for task failures
    (they are in the runs), and re-raises ``KeyboardInterrupt`` after a Ctrl-C has
    cancelled and recorded everything. Any other way out of the loop (a second
    Ctrl-C, a store error, a bug) closes the executors, records the experiment as
    ``cancelled`` or ``failed``, and re-raises.
    """

    def __init__(
        self,
        store: Store,
        exp_id: str,
        tasks: list[Task],
        executor: Executor,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_change: Callable[[TaskRun, str], None] | None = None,
        handle_sigint: bool = True,
        prior: dict[str, dict[str, Any]] | None = None,
        monitor_interval: float | None = 1.0,
    ) -> None:
        super().__init__(store, exp_id, tasks, executor, clock=clock,
                         rng=rng or random.Random(), on_change=on_change, prior=prior)
        self.handle_sigint = handle_sigint
        self.executors: list[Executor] = unique([executor, *(t.executor for t in tasks)])
        self.monitor_interval = monitor_interval
        self._opened: list[Executor] = []
        self._watch_stopped = False
        self._cancel_tasks: set[str] = set()
        self._last_requests = 0.0
        self._interrupted = False
        self._winding_down = False
        self._cancel_swept = False
        self._last_heartbeat = 0.0
        self._host = socket.gethostname()
        self._unwritten_pids: list[tuple[str, int, int]] = []

    # --- public ---------------------------------------------------------------------

    def request_cancel(self) -> None:
        """Ask the loop to stop every running attempt and cancel what has not started.
        Safe to call from another thread or a signal handler."""
        self._cancel.set()

    def snapshot(self) -> EngineSnapshot:
        """A frozen picture of every task and every executor's capacity in use.

        Safe from another thread (it only reads); a backend whose
        ``describe_attempt`` fails shows no detail rather than failing the picture."""
        latest = self.watch.latest() if self.watch is not None else {}
        return build_snapshot(self.exp_id, self.runs.values(), self.ledgers.values(),
                              self.clock(), latest, _describe)

    def run(self) -> dict[str, TaskRun]:
        """Run the loop until every task is final; see the class docs."""
        import psutil

        self.store.acquire_controller(self.exp_id, os.getpid(), self._host,
                                      psutil.Process().create_time())
        previous = self._install_sigint()
        try:
            self._start()
            self._loop()
        except BaseException as exc:
            self._winding_down = True  # a further Ctrl-C must not cut the recording short
            self._shutdown()
            settle_after_exception(self.store, self.exp_id, exc, self.runs)
            raise
        finally:
            self._shutdown()
            self._restore_sigint(previous)
            try:
                self.store.release_controller(self.exp_id, os.getpid())
            except Exception:  # noqa: BLE001 - never hide why the run ended
                log.warning("could not release the controller lock of %s", self.exp_id,
                            exc_info=True)
        if self._interrupted:
            raise KeyboardInterrupt
        return self.runs

    # --- start and end --------------------------------------------------------------

    def _start(self) -> None:
        self.store.update_experiment(self.exp_id, state="running", started_at=time.time(),
                                     ended_at=None)
        with self.store.transaction():
            for tr in list(self.runs.values()):
                if tr.state in GIVEN_UP:
                    self._skip_dependants(tr)  # kept as they were by a resume
        for ex in self.executors:
            ex.open()
            self._opened.append(ex)
            self.ledgers[id(ex)] = CapacityLedger(ex.capacity(),
                                                  getattr(ex, "name", type(ex).__name__))
        self.watch = sampler_for(self.store, self.exp_id, self.executors,
                                 self.monitor_interval)
        if self.watch is not None:
            self.watch.start()

    def _shutdown(self) -> None:
        """Stop sampling and close the opened executors (closing kills what still runs
        there). Idempotent; failures are logged, never raised."""
        if self.watch is not None and not self._watch_stopped:
            self._watch_stopped = True
            with contextlib.suppress(Exception):
                self.watch.stop()
        while self._opened:
            ex = self._opened.pop(0)
            try:
                ex.close()
            except Exception:  # noqa: BLE001 - close the others all the same
                log.warning("could not close executor %s", getattr(ex, "name", ex),
                            exc_info=True)

    # --- the loop -------------------------------------------------------------------

    def _loop(self) -> None:
        outcomes: list[Outcome] = []
        while True:
            self._take_requests()
            if self.watch is not None:
                self.watch.sample_enforced(self.running)
            launches, stops = self._plan(outcomes)
            outcomes = []
            for attempt, kind in stops:
                attempt.executor.stop(attempt.attempt_id, kind)
            if launches:
                crash_point("attempt-recorded")
                self._launch(launches)
                self._note_pids(launches)
                if self._enqueue_early_dependants([tr for tr, _ in launches
                                                   if tr.state == TaskState.RUNNING]):
                    continue  # submit them behind their dependencies in this same instant
            if not self.running and self.unfinished == 0:
                break
            outcomes = self._wait(self._wait_timeout())
            if outcomes:
                crash_point("outcome-received")
            self._heartbeat()
        self._winding_down = True
        final = "cancelled" if self._cancel.is_set() else (
            "failed" if any(tr.state != TaskState.SUCCEEDED for tr in self.runs.values())
            else "succeeded")
        self.store.update_experiment(self.exp_id, state=final, ended_at=time.time(),
                                     controller_pid=None)

    def _plan(self, outcomes: list[Outcome]) -> Plan:
        """Record the outcomes that arrived, decide what to stop and what to launch in
        this pass, and record that too, in one commit (a group commit: nothing is acted
        on before it): the ends first, then cancellations, time limits and memory
        limits, then admissions."""
        now = self.clock()
        with self.store.transaction():
            self._write_pids()
            for outcome in outcomes:
                self._complete(outcome)
            if self._cancel.is_set():
                return [], self._cancel_everything()
            stops, self._pending_stops = self._pending_stops, []
            stops += self._cancel_requested_tasks()
            stops += self._expired(now)
            stops += self._over_memory()
            self._release_due_retries(now)
            return self._admit_ready(), stops

    def _cancel_everything(self) -> list[tuple[AttemptRun, FailureKind]]:
        if not self._cancel_swept:
            self._cancel_swept = True
            for tr in self.runs.values():
                if tr.state in WAITING_TASK_STATES:
                    self._set_state(tr, TaskState.CANCELLED,
                                    message="the experiment was cancelled")
            self.ready.clear()
            self.retry_heap.clear()
        return [stop for tr in self.running.values()
                if (stop := self._stopping(tr, FailureKind.CANCELLED)) is not None]

    def _cancel_requested_tasks(self) -> list[tuple[AttemptRun, FailureKind]]:
        stops = []
        while self._cancel_tasks:
            tr = self.runs[self._cancel_tasks.pop()]
            if tr.state in WAITING_TASK_STATES:
                self._set_state(tr, TaskState.CANCELLED, message="cancelled on request")
                self._skip_dependants(tr)
            elif (stop := self._stopping(tr, FailureKind.CANCELLED)) is not None:
                stops.append(stop)
        return stops

    def _expired(self, now: float) -> list[tuple[AttemptRun, FailureKind]]:
        stops = []
        for tr in self.running.values():
            att = tr.current
            if att is not None and att.deadline is not None and now >= att.deadline:
                save = tr.task.checkpoint_on_timeout  # preempted: it saves, then resumes
                stop = self._stopping(tr, FailureKind.PREEMPTED if save else FailureKind.TIMEOUT)
                if stop is not None:
                    self._event("timeout", tr, after_s=round(now - att.started, 3),
                                limit_s=tr.task.timeout, checkpoint=save)
                    stops.append(stop)
        return stops

    def _over_memory(self) -> list[tuple[AttemptRun, FailureKind]]:
        stops = []
        if self.watch is not None:
            for attempt_id, rss, request in self.watch.over_memory(self.running):
                tr = self.running[attempt_id]
                stop = self._stopping(tr, FailureKind.OOM)
                if stop is not None:
                    self._event("memory_enforced", tr, rss=rss, request=request,
                                mechanism="sampling")
                    stops.append(stop)
        return stops

    def _release_due_retries(self, now: float) -> None:
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, _, name = heapq.heappop(self.retry_heap)
            if self.runs[name].state == TaskState.RETRYING:
                self._enqueue(self.runs[name])

    def _admit_ready(self) -> list[tuple[TaskRun, AttemptSpec]]:
        """Admit the heads of the ready queues while they fit, oldest task first."""
        launches: list[tuple[TaskRun, AttemptSpec]] = []
        if not self.ready:
            return launches
        for ex in self.executors:
            self.ledgers[id(ex)].open_pass(ex.free_slots())
        for key in sorted(self.ready, key=lambda k: self.ready[k][0].position):
            queue = self.ready[key]
            while queue:
                head = queue[0]
                if head.state in WAITING_TASK_STATES and (
                        not head.blocked_by or self._early_ready(head)):
                    spec = self._admit(head)
                    if spec is None:
                        break  # nothing behind it has another shape: the queue waits
                    launches.append((head, spec))
                queue.popleft().queued = False  # admitted, cancelled, or its deps changed
            if not queue:
                del self.ready[key]
        return launches

    def _admit(self, tr: TaskRun) -> AttemptSpec | None:
        """Reserve resources and record a new attempt when ``tr``'s request fits now
        (by the ledger, and by the memory the executor measures free)."""
        ex = self.executor_for(tr.task)
        ledger = self.ledgers[id(ex)]
        req = tr.resources
        whole = ex.request_of(req)  # a gang takes every rank's share
        if not ledger.fits(whole) or not self._memory_free(whole, tr, ex):
            return None
        gpus = ledger.take(whole)
        tr.attempts += 1
        number = tr.attempts
        wall = time.time()
        attempt_id = f"{self.exp_id}/{tr.name}/{number}"
        lazy = ex.lazy_attempt_dirs
        path = self.store.insert_attempt(
            self.exp_id, tr.name, number, make_dir=not lazy, state="running",
            started_at=wall, host=self._host,
            executor=getattr(ex, "name", type(ex).__name__),
            resources=resources_dict(req, gpus),
            changes=tr.changes[-1] if tr.changes and tr.changes[-1].get("before") == number
            else {})
        # its time limit starts when the launch returned (see _launch)
        tr.current = AttemptRun(
            number=number, attempt_id=attempt_id, dir=path, resources=req, gpus=gpus,
            executor=ex, started=self.clock(), started_at=wall, early=tr.blocked_by > 0,
            deadline=None)
        if tr.started_at is None:
            tr.started_at = wall
        self._set_state(tr, TaskState.RUNNING, attempts=number)
        self.running[attempt_id] = tr
        if self.watch is not None:
            self.watch.track(attempt_id, tr.name, number, attempt_dir=path, executor=ex)
        env = {"STEADYRUN_EXPERIMENT": self.exp_id, "STEADYRUN_TASK": tr.name,
               "STEADYRUN_ATTEMPT": str(number), "STEADYRUN_CPUS": f"{req.cpus:g}"}
        if tr.kind is not None and number > 1:  # how the previous attempt ended
            env["STEADYRUN_PREVIOUS_KIND"] = str(tr.kind)
        if tr.preemptions:
            env["STEADYRUN_PREEMPTIONS"] = str(tr.preemptions)
        if ex.gang is not None:  # each node agent samples its ranks this often
            env["STEADYRUN_SAMPLE_INTERVAL"] = (
                f"{self.watch.monitor.interval:g}" if self.watch is not None else "0")
        jobs = [ex.job_key(d.current.attempt_id) for d in
                (self.runs[n] for n in tr.task.depends_on) if d.current is not None]
        return AttemptSpec(attempt_id=attempt_id, task=tr.name, number=number,
                           payload=tr.payload, attempt_dir=path, resources=req, gpus=gpus,
                           env=env, depends_on_jobs=[j for j in jobs if j], lazy_dir=lazy,
                           checkpoint_on_timeout=tr.task.checkpoint_on_timeout)

    def _memory_free(self, req: Resources, tr: TaskRun, ex: Executor) -> bool:
        """False (with one ``waiting_for_memory`` event per task) while the executor
        measures less free memory than ``req`` (``tr``'s whole request)."""
        request = req.memory_bytes
        if not request:
            return True
        available = ex.available_memory()
        if available is None or request <= available:
            return True
        if not tr.waiting_noted:
            tr.waiting_noted = True
            self._event("waiting_for_memory", tr, request=request, available=available)
        return False

    def _launch(self, launches: list[tuple[TaskRun, AttemptSpec]]) -> None:
        """Hand this pass's attempts to their executors, all of one executor at once;
        start the time limit of those that started."""
        by_executor: dict[int, list[AttemptSpec]] = {}
        for tr, spec in launches:
            by_executor.setdefault(id(self.executor_for(tr.task)), []).append(spec)
        failed: dict[str, Exception] = {}
        for ex in self.executors:
            specs = by_executor.get(id(ex))
            if specs:
                try:
                    failed.update(ex.launch_many(specs))
                except Exception as exc:  # the backend refused the whole batch
                    failed.update({spec.attempt_id: exc for spec in specs})
        crash_point("launched")
        self._start_clocks(launches)
        if failed:
            with self.store.transaction():
                for attempt_id, error in failed.items():
                    self._complete(Outcome(attempt_id=attempt_id, kind=FailureKind.LOST,
                                           message=f"could not launch: {error}"))

    def _start_clocks(self, launches: list[tuple[TaskRun, AttemptSpec]]) -> None:
        """Launched attempts started now: their time limits count from here (one held
        behind its dependencies gets its limit when they succeed)."""
        now = self.clock()
        for tr, spec in launches:
            att = tr.current
            if att is not None and att.attempt_id == spec.attempt_id:
                att.started = now
                limit = time_limit(tr.task)
                if limit is not None and not att.early:
                    att.deadline = now + limit

    def _wait(self, timeout: float) -> list[Outcome]:
        if len(self.executors) == 1:
            return self.executors[0].wait(timeout)
        outcomes: list[Outcome] = []
        slice_s = min(timeout, 0.02)
        for ex in self.executors:
            outcomes.extend(ex.wait(slice_s if not outcomes else 0.0))
        return outcomes

    def _wait_timeout(self) -> float:
        now = self.clock()
        horizon = now + _MAX_WAIT
        if self.retry_heap:
            horizon = min(horizon, self.retry_heap[0][0])
        if self.watch is not None and self.watch.enforcing:  # memory held by sampling
            horizon = min(horizon, now + ENFORCE_INTERVAL)
        for tr in self.running.values():
            att = tr.current
            if att is not None and att.deadline is not None and att.stopping is None:
                horizon = min(horizon, att.deadline)
        return max(0.0, horizon - now)

    def _take_requests(self) -> None:
        """Apply cancel requests that other processes left in the store."""
        now = time.monotonic()
        if now - self._last_requests < _REQUEST_POLL:
            return
        self._last_requests = now
        for req in self.store.take_requests(self.exp_id):
            if req.kind != "cancel":
                continue
            if req.task is None:
                self.request_cancel()
            elif req.task in self.runs:
                self._cancel_tasks.add(req.task)

    def _note_pids(self, launches: list[tuple[TaskRun, AttemptSpec]]) -> None:
        """Note each launched attempt's root pid, for its row (status and monitoring;
        recovery finds workers by the identity file they write): written with the next
        pass's commit, before that pass records any end."""
        pids: dict[str, int] = {}
        for ex in self.executors:
            pids.update(ex.pids())
        for tr, spec in launches:
            pid = pids.get(spec.attempt_id)
            if pid is not None:
                self._unwritten_pids.append((tr.name, spec.number, pid))

    def _write_pids(self) -> None:
        for task, number, pid in self._unwritten_pids:
            self.store.update_attempt(self.exp_id, task, number, pid=pid)
        self._unwritten_pids.clear()

    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat >= _HEARTBEAT_EVERY:
            self._last_heartbeat = now
            self.store.update_experiment(self.exp_id, heartbeat=now)

    # --- Ctrl-C ---------------------------------------------------------------------

    def _install_sigint(self) -> Any:
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum: int, frame: Any) -> None:
            if self._winding_down:  # recording the end: an interruption would leave it half
                return
            if self._cancel.is_set():  # a second Ctrl-C: stop waiting for a clean end
                raise KeyboardInterrupt
            self._interrupted = True
            self.request_cancel()

        return signal.signal(signal.SIGINT, on_sigint)

    def _restore_sigint(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _describe(att: AttemptRun) -> str | None:
    """The executor's detail of a running attempt; None when it has none or fails."""
    try:
        return att.executor.describe_attempt(att.attempt_id)
    except Exception:  # noqa: BLE001 - a view must never fail on a backend detail
        return None


__all__ = ["Engine", "TaskRun"]
