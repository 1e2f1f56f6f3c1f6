"""The engine: one scheduler loop that drives a DAG of tasks on any executor.

It owns the DAG, admission by resources, retries with backoff, degradation on
out-of-memory, timeouts and cancellation, and writes every state change to the store
before acting on it. Executors only start, watch and stop attempts (see
``executors/base.py``). The loop never sleeps for one task: it waits on the executor
with a timeout that ends at the next deadline or retry, so a task in backoff never
blocks the others.

The task and attempt state machines are written down in :mod:`steadyrun.states`;
every change goes through :func:`~steadyrun.states.transition`. Resource sampling,
memory enforcement and out-of-memory evidence live in :mod:`steadyrun.engine.watch`.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from steadyrun.attempt.folder import log_tail, read_error
from steadyrun.engine.records import describe_changes, resources_dict, unique
from steadyrun.engine.watch import import_remote_samples, sampler_for
from steadyrun.errors import TaskFailed
from steadyrun.executors.base import AttemptSpec, Capacity, Executor, Outcome
from steadyrun.states import (
    ATTEMPT_TRANSITIONS,
    FINAL_TASK_STATES,
    TASK_TRANSITIONS,
    AttemptRun,
    TaskRun,
    transition,
)
from steadyrun.store.db import Store
from steadyrun.task import Task, apply_degrade

_MAX_WAIT = 0.25  # seconds: how long the loop may wait without looking at cancel requests
_HEARTBEAT_EVERY = 2.0
_REQUEST_POLL = 0.2  # seconds between looks at requests from other processes


class Engine:
    """Drive ``tasks`` of experiment ``exp_id`` to the end on ``executor``.

    ``clock`` is the scheduling clock (``time.monotonic``; a fake in tests); ``rng``
    draws the backoff jitter; ``on_change(task_run, state)`` is told every task state
    change (the live views listen here). ``run()`` returns the :class:`TaskRun` of every
    task; it raises nothing for task failures (they are in the runs), and re-raises
    ``KeyboardInterrupt`` after a Ctrl-C has cancelled and recorded everything.
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
        self.store = store
        self.exp_id = exp_id
        self.executor = executor
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_change = on_change
        self.handle_sigint = handle_sigint
        self.runs: dict[str, TaskRun] = {
            t.name: TaskRun(task=t, payload=t.payload, resources=t.resources, position=i,
                            blocked_by=len(set(t.depends_on)))
            for i, t in enumerate(tasks)}
        self.dependants: dict[str, list[str]] = {name: [] for name in self.runs}
        for t in tasks:
            for dep in set(t.depends_on):
                self.dependants[dep].append(t.name)
        # Ready tasks wait in one FIFO queue per shape (executor and request): when the
        # head of a queue does not fit, nothing behind it does, so a pass of the loop
        # costs one look per shape, not one per task.
        self.ready: dict[tuple[Any, ...], deque[TaskRun]] = {}
        self.retry_heap: list[tuple[float, int, str]] = []
        self.unfinished = len(self.runs)
        for name, info in (prior or {}).items():
            self._restore(self.runs[name], info)
        for tr in self.runs.values():
            if tr.blocked_by == 0 and tr.state == "pending":
                self._enqueue(tr)
        self.executors: list[Executor] = unique([executor, *(t.executor for t in tasks)])
        self.capacity: dict[int, Capacity] = {}
        self.used: dict[int, list[float]] = {}
        self.free_gpus: dict[int, list[int]] = {}
        self.running: dict[str, TaskRun] = {}
        self.monitor_interval = monitor_interval
        self.watch: Any = None
        self._cancel = threading.Event()
        self._cancel_tasks: set[str] = set()
        self._pending_stops: list[tuple[AttemptRun, str]] = []
        self._last_requests = 0.0
        self._interrupted = False
        self._cancel_swept = False
        self._last_heartbeat = 0.0
        self._host = socket.gethostname()

    # --- public ---------------------------------------------------------------------

    def request_cancel(self) -> None:
        """Ask the loop to stop every running attempt and cancel what has not started.
        Safe to call from another thread or a signal handler."""
        self._cancel.set()

    def executor_for(self, task: Task) -> Executor:
        return task.executor or self.executor

    def run(self) -> dict[str, TaskRun]:
        """Run the loop until every task is final; see the class docs."""
        import psutil

        self.store.acquire_controller(self.exp_id, os.getpid(), self._host,
                                      psutil.Process().create_time())
        self.store.update_experiment(self.exp_id, state="running", started_at=time.time(),
                                     ended_at=None)
        with self.store.transaction():
            for tr in list(self.runs.values()):
                if tr.state in ("failed", "cancelled", "skipped"):
                    self._skip_dependants(tr)  # kept as they were by a resume
        previous = self._install_sigint()
        opened: list[Executor] = []
        try:
            for ex in self.executors:
                ex.open()
                opened.append(ex)
                cap = ex.capacity()
                self.capacity[id(ex)] = cap
                self.used[id(ex)] = [0.0, 0.0]
                self.free_gpus[id(ex)] = list(cap.gpus)


            self.watch = sampler_for(self.store, self.exp_id, self.executors,
                                     self.monitor_interval)
            if self.watch is not None:
                self.watch.start()
            self._loop()
        finally:
            if self.watch is not None:
                with contextlib.suppress(Exception):
                    self.watch.stop()
            for ex in opened:
                with contextlib.suppress(Exception):
                    ex.close()
            self._restore_sigint(previous)
            self.store.release_controller(self.exp_id, os.getpid())
        if self._interrupted:
            raise KeyboardInterrupt
        return self.runs

    # --- the loop -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._take_requests()
            launches, stops = self._plan()
            for attempt, kind in stops:
                attempt.executor.stop(attempt.attempt_id, kind)
            if launches:
                self._launch(launches)
                self._record_pids(launches)
                if self._enqueue_early_dependants([tr for tr, _ in launches
                                                   if tr.state == "running"]):
                    continue  # submit them behind their dependencies in this same instant
            if not self.running and self.unfinished == 0:
                break
            outcomes = self._wait(self._wait_timeout())
            if outcomes:
                with self.store.transaction():
                    for outcome in outcomes:
                        self._complete(outcome)
            self._heartbeat()
        final = "cancelled" if self._cancel.is_set() else (
            "failed" if any(tr.state != "succeeded" for tr in self.runs.values())
            else "succeeded")
        self.store.update_experiment(self.exp_id, state=final, ended_at=time.time(),
                                     controller_pid=None)

    def _plan(self) -> tuple[list[tuple[TaskRun, AttemptSpec]], list[tuple[AttemptRun, str]]]:
        """Decide what to launch and stop in this pass, and record it (one commit)."""
        now = self.clock()
        launches: list[tuple[TaskRun, AttemptSpec]] = []
        stops: list[tuple[AttemptRun, str]] = []
        with self.store.transaction():
            if self._cancel.is_set():
                if not self._cancel_swept:
                    self._cancel_swept = True
                    for tr in self.runs.values():
                        if tr.state in ("pending", "retrying"):
                            self._set_state(tr, "cancelled",
                                            message="the experiment was cancelled")
                    self.ready.clear()
                    self.retry_heap.clear()
                for tr in self.running.values():
                    att = tr.current
                    if att is not None and att.stopping is None:
                        att.stopping = "cancelled"
                        stops.append((att, "cancelled"))
                return launches, stops
            stops.extend(self._pending_stops)
            self._pending_stops.clear()
            while self._cancel_tasks:
                tr = self.runs[self._cancel_tasks.pop()]
                if tr.state in ("pending", "retrying"):
                    self._set_state(tr, "cancelled", message="cancelled on request")
                    self._skip_dependants(tr)
                elif tr.current is not None and tr.current.stopping is None:
                    tr.current.stopping = "cancelled"
                    stops.append((tr.current, "cancelled"))
            for tr in self.running.values():
                att = tr.current
                if (att is not None and att.stopping is None and att.deadline is not None
                        and now >= att.deadline):
                    att.stopping = "timeout"
                    self._event("timeout", tr, after_s=round(now - att.started, 3),
                                limit_s=tr.task.timeout)
                    stops.append((att, "timeout"))
            if self.watch is not None:
                for attempt_id, rss, request in self.watch.over_memory(self.running):
                    tr = self.running[attempt_id]
                    att = tr.current
                    if att is not None and att.stopping is None:
                        att.stopping = "oom"
                        self._event("memory_enforced", tr, rss=rss, request=request)
                        stops.append((att, "oom"))
            while self.retry_heap and self.retry_heap[0][0] <= now:
                _, _, name = heapq.heappop(self.retry_heap)
                if self.runs[name].state == "retrying":
                    self._enqueue(self.runs[name])
            for key in sorted(self.ready, key=lambda k: self.ready[k][0].position):
                queue = self.ready[key]
                while queue:
                    head = queue[0]
                    if head.state not in ("pending", "retrying") or (
                            head.blocked_by and not self._early_ready(head)):
                        queue.popleft().queued = False  # cancelled, or its deps changed
                        continue
                    spec = self._admit(head)
                    if spec is None:
                        break
                    queue.popleft().queued = False
                    launches.append((head, spec))
                if not queue:
                    del self.ready[key]
        return launches, stops

    def _enqueue(self, tr: TaskRun) -> None:
        if tr.queued:
            return
        tr.queued = True
        ex = self.executor_for(tr.task)
        req = tr.resources
        key = (id(ex), req.cpus, req.memory_bytes, req.gpus)
        self.ready.setdefault(key, deque()).append(tr)

    def _early_ready(self, tr: TaskRun) -> bool:
        """True when ``tr`` may be submitted now behind its running dependencies: its
        executor holds attempts until others succeed, and every dependency has
        succeeded or is running on that same executor."""
        ex = self.executor_for(tr.task)
        if not ex.supports_dependencies or tr.state != "pending":
            return False
        for name in tr.task.depends_on:
            dep = self.runs[name]
            if dep.state == "succeeded":
                continue
            if (dep.state != "running" or dep.current is None or dep.current.stopping
                    or self.executor_for(dep.task) is not ex):
                return False
        return True

    def _enqueue_early_dependants(self, launched: list[TaskRun]) -> int:
        """Queue the dependants that may now be submitted early; return how many."""
        count = 0
        for tr in launched:
            for name in self.dependants[tr.name]:
                child = self.runs[name]
                if not child.queued and self._early_ready(child):
                    self._enqueue(child)
                    count += 1
        return count

    def _admit(self, tr: TaskRun) -> AttemptSpec | None:
        """Reserve resources and record a new attempt when ``tr``'s request fits now."""
        ex = self.executor_for(tr.task)
        key = id(ex)
        cap, used, free_gpus = self.capacity[key], self.used[key], self.free_gpus[key]
        req = tr.resources
        if (used[0] + req.cpus > cap.cpus + 1e-9 or used[1] + req.memory_bytes > cap.memory
                or req.gpus > len(free_gpus)):
            return None
        if req.memory_bytes:
            available = ex.available_memory()
            if available is not None and req.memory_bytes > available:
                if not tr.waiting_noted:
                    tr.waiting_noted = True
                    self._event("waiting_for_memory", tr, request=req.memory_bytes,
                                available=available)
                return None
        used[0] += req.cpus
        used[1] += req.memory_bytes
        gpus = sorted(free_gpus)[:req.gpus]
        for g in gpus:
            free_gpus.remove(g)
        tr.attempts += 1
        number = tr.attempts
        now, wall = self.clock(), time.time()
        attempt_id = f"{self.exp_id}/{tr.name}/{number}"
        path = self.store.insert_attempt(
            self.exp_id, tr.name, number, state="running", started_at=wall, host=self._host,
            executor=getattr(ex, "name", type(ex).__name__),
            resources=resources_dict(req, gpus),
            changes=tr.changes[-1] if tr.changes and tr.changes[-1].get("before") == number
            else {})
        early = tr.blocked_by > 0
        tr.current = AttemptRun(
            number=number, attempt_id=attempt_id, dir=path, resources=req, gpus=gpus,
            executor=ex, started=now, started_at=wall, early=early,
            deadline=now + tr.task.timeout if tr.task.timeout and not early else None)
        if tr.started_at is None:
            tr.started_at = wall
        self._set_state(tr, "running", attempts=number)
        self.running[attempt_id] = tr
        if self.watch is not None:
            self.watch.track(attempt_id, tr.name, number)
        env = {"STEADYRUN_EXPERIMENT": self.exp_id, "STEADYRUN_TASK": tr.name,
               "STEADYRUN_ATTEMPT": str(number)}
        jobs = [ex.job_key(d.current.attempt_id) for d in
                (self.runs[n] for n in tr.task.depends_on) if d.current is not None]
        return AttemptSpec(attempt_id=attempt_id, task=tr.name, number=number,
                           payload=tr.payload, attempt_dir=path, resources=req, gpus=gpus,
                           env=env, depends_on_jobs=[j for j in jobs if j])

    def _launch(self, launches: list[tuple[TaskRun, AttemptSpec]]) -> None:
        """Hand this pass's attempts to their executors, all of one executor at once."""
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
        if failed:
            with self.store.transaction():
                for attempt_id, exc in failed.items():
                    self._complete(Outcome(attempt_id=attempt_id, kind="lost",
                                           message=f"could not launch: {exc}"))

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
        for tr in self.running.values():
            att = tr.current
            if att is not None and att.deadline is not None and att.stopping is None:
                horizon = min(horizon, att.deadline)
        return max(0.0, horizon - now)

    # --- outcomes -------------------------------------------------------------------

    def _complete(self, outcome: Outcome) -> None:
        tr = self.running.pop(outcome.attempt_id, None)
        if tr is None or tr.current is None:
            return  # an outcome for an attempt already settled (e.g. after a stop)
        att = tr.current
        tr.current = None
        self._release(att)
        wall = time.time()
        kind = outcome.kind
        peaks = self.watch.settle(outcome.attempt_id) if self.watch is not None else {}
        if not peaks and att.executor.samples_remotely:  # sampled on its node
            peaks = import_remote_samples(self.store, self.exp_id, tr.name, att.number,
                                          att.dir)
        tr.peak_rss = peaks.get("peak_rss")
        tr.peak_gpu_memory = peaks.get("peak_gpu_memory")
        tr.cpu_seconds = peaks.get("cpu_seconds")
        if att.early and kind is not None and (att.stopping in (None, "dependency")) and any(
                self.runs[d].state != "succeeded" for d in tr.task.depends_on):
            kind = "dependency"  # held behind a dependency that did not succeed
        elif kind is not None and att.stopping is not None:
            kind = att.stopping  # we stopped it: say why, whatever the signal looked like
        elif kind == "lost" and self.watch is not None:
            evidence = self.watch.oom_evidence(
                outcome, tr.peak_rss, att.resources.memory_bytes,
                self.capacity[id(att.executor)].memory)
            if evidence:
                kind, outcome.message = "oom", evidence
        info = (outcome.error.to_dict() if outcome.error is not None
                else read_error(att.dir) if kind else None)
        tr.kind = kind
        tr.exit_code = (outcome.exit_code if outcome.exit_code is not None
                        else (info or {}).get("exit_code"))
        if kind is None:
            att.state = transition(ATTEMPT_TRANSITIONS, f"attempt {att.attempt_id}",
                                   att.state, "succeeded")
            self.store.update_attempt(self.exp_id, tr.name, att.number, state="succeeded",
                                      ended_at=wall, exit_code=outcome.exit_code,
                                      pid=outcome.pid, **peaks)
            tr.value, tr.has_value = outcome.value, outcome.has_value
            tr.result_path = att.dir / "result.pkl"
            tr.ended_at = wall
            self._set_state(tr, "succeeded", kind=None, message="")
            for name in self.dependants[tr.name]:
                child = self.runs[name]
                child.blocked_by -= 1
                if child.blocked_by == 0 and child.state == "pending":
                    self._enqueue(child)
                elif child.blocked_by == 0 and child.current is not None:
                    # submitted early; its time limit starts now that it may run
                    child.current.early = False
                    if child.task.timeout:
                        child.current.deadline = self.clock() + child.task.timeout
            return
        if kind == "dependency":
            self._requeue_after_dependency(tr, att, wall)
            return
        message = outcome.message or (info or {}).get("message", "") or kind
        new_attempt_state = "cancelled" if kind == "cancelled" else "failed"
        att.state = transition(ATTEMPT_TRANSITIONS, f"attempt {att.attempt_id}", att.state,
                               new_attempt_state)
        self.store.update_attempt(
            self.exp_id, tr.name, att.number, state=new_attempt_state, kind=kind,
            ended_at=wall, exit_code=tr.exit_code, pid=outcome.pid, error=info,
            message=message, **peaks)
        if kind == "lost":
            tr.lost += 1
        if kind == "cancelled":
            tr.ended_at = wall
            self._set_state(tr, "cancelled", kind=kind, message=message)
            self._stop_early_dependants(tr)
            self._skip_dependants(tr)
            return
        policy = tr.task.policy
        made = tr.attempts - tr.uncounted_attempts  # attempts of this run count
        retry = (policy.should_retry(kind, made)
                 or (kind == "oom" and tr.task.degrade is not None
                     and made < policy.max_attempts))
        note = ""
        if retry and kind == "oom" and tr.task.degrade is not None:
            cap = self.capacity[id(att.executor)]
            payload, resources, changes = apply_degrade(tr.task, tr.payload, tr.resources,
                                                        cap.memory)
            if changes:
                tr.payload, tr.resources = payload, resources
                tr.changes.append({"before": tr.attempts + 1, **changes})
                self._event("degraded", tr, changes=changes)
            else:
                retry = False
                note = "; degradation reached its limit after " + describe_changes(tr.changes)
        if retry and not self._cancel.is_set():
            delay = policy.delay(made, self.rng)
            tr.due = self.clock() + delay
            heapq.heappush(self.retry_heap, (tr.due, tr.position, tr.name))
            self._event("retry_scheduled", tr, kind=kind, delay_s=round(delay, 3),
                        next_attempt=tr.attempts + 1)
            self._set_state(tr, "retrying", kind=kind, message=message)
            self._stop_early_dependants(tr)
            return
        tr.ended_at = wall
        tr.message = message + note
        tr.error = TaskFailed(
            tr.name, kind, tr.message, exit_code=tr.exit_code,
            remote_traceback=(info or {}).get("traceback") or None,
            log_tail=log_tail(att.dir), attempts=tr.attempts)
        self._set_state(tr, "failed", kind=kind, message=tr.message)
        self._stop_early_dependants(tr)
        self._skip_dependants(tr)

    def _stop_early_dependants(self, tr: TaskRun) -> None:
        for name in self.dependants[tr.name]:
            att = self.runs[name].current
            if att is not None and att.early and att.stopping is None:
                att.stopping = "dependency"
                self._pending_stops.append((att, "dependency"))

    def _requeue_after_dependency(self, tr: TaskRun, att: AttemptRun, wall: float) -> None:
        """An attempt submitted behind a dependency that then failed: not a failure of
        this task. It waits again (or is skipped when the dependency failed for good)."""
        att.state = transition(ATTEMPT_TRANSITIONS, f"attempt {att.attempt_id}", att.state,
                               "cancelled")
        self.store.update_attempt(self.exp_id, tr.name, att.number, state="cancelled",
                                  kind="cancelled", ended_at=wall,
                                  message="withdrawn: a dependency did not succeed")
        tr.uncounted_attempts += 1  # numbered in the store, not held against its retries
        self._set_state(tr, "pending", message="waiting for its dependencies again")
        failed = [self.runs[d] for d in tr.task.depends_on
                  if self.runs[d].state in ("failed", "cancelled", "skipped")]
        if failed:
            self._skip_one(tr, failed[0])
        elif self._early_ready(tr):
            self._enqueue(tr)

    def _skip_one(self, tr: TaskRun, cause: TaskRun) -> None:
        self._set_state(tr, "skipped", message=f"not run: dependency {cause.name!r} "
                                               f"{cause.state}")
        self._skip_dependants(tr)

    def _skip_dependants(self, failed: TaskRun) -> None:
        stack = list(self.dependants[failed.name])
        while stack:
            tr = self.runs[stack.pop()]
            if tr.state == "pending":
                self._set_state(tr, "skipped",
                                message=f"not run: dependency {failed.name!r} {failed.state}")
                stack.extend(self.dependants[tr.name])

    def _restore(self, tr: TaskRun, info: dict[str, Any]) -> None:
        """Take over what an earlier run recorded (resume): a succeeded task is done and
        unblocks its dependants; any other starts again with its attempts counted."""
        tr.attempts = tr.uncounted_attempts = int(info.get("attempts") or 0)
        if info.get("state") == "succeeded":
            tr.state = "succeeded"
            tr.result_path = info.get("result_path")
            self.unfinished -= 1
            for name in self.dependants[tr.name]:
                self.runs[name].blocked_by -= 1
        elif info.get("state") in ("failed", "cancelled", "skipped"):
            tr.state = info["state"]  # kept as it was: not chosen for a rerun
            tr.kind, tr.message = info.get("kind"), info.get("message") or ""
            self.unfinished -= 1

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

    def _record_pids(self, launches: list[tuple[TaskRun, AttemptSpec]]) -> None:
        pids: dict[str, int] = {}
        for ex in self.executors:
            pids.update(ex.pids())
        with self.store.transaction():
            for tr, spec in launches:
                pid = pids.get(spec.attempt_id)
                if pid is not None:
                    self.store.update_attempt(self.exp_id, tr.name, spec.number, pid=pid)

    def _release(self, att: AttemptRun) -> None:
        key = id(att.executor)
        self.used[key][0] -= att.resources.cpus
        self.used[key][1] -= att.resources.memory_bytes
        self.free_gpus[key].extend(att.gpus)

    # --- recording ------------------------------------------------------------------

    def _set_state(self, tr: TaskRun, state: str, **fields: Any) -> None:
        old = tr.state
        tr.state = transition(TASK_TRANSITIONS, f"task {tr.name!r}", old, state)
        self.unfinished += (old in FINAL_TASK_STATES) - (state in FINAL_TASK_STATES)
        self.store.update_task(self.exp_id, tr.name, state=state, **fields)
        self.store.add_event(self.exp_id, state, task=tr.name, attempt=tr.attempts or None)
        if self.on_change is not None:
            self.on_change(tr, state)

    def _event(self, event: str, tr: TaskRun, **data: Any) -> None:
        self.store.add_event(self.exp_id, event, task=tr.name, attempt=tr.attempts or None,
                             data=data)

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
            if self._cancel.is_set():  # a second Ctrl-C: stop waiting for a clean end
                raise KeyboardInterrupt
            self._interrupted = True
            self.request_cancel()

        return signal.signal(signal.SIGINT, on_sigint)

    def _restore_sigint(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


__all__ = ["Engine", "TaskRun"]
