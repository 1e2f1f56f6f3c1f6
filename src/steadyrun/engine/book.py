"""The engine's book of tasks: the DAG, the ready queues, and what every outcome does.

:class:`TaskBook` holds one :class:`~steadyrun.states.TaskRun` per task, who depends on
whom, the FIFO queues of tasks ready to start and the heap of tasks waiting for a
retry. An attempt's outcome goes through it as classify -> record -> decide -> act:
:func:`~steadyrun.engine.decisions.classify` names the failure kind, the attempt's row
is written, :func:`~steadyrun.engine.decisions.next_step` decides, and one small method
acts (succeed, retry, fail, cancel, requeue). Every task state change goes through the
state machine and is written to the store before anything acts on it. The loop that
drives it is :class:`~steadyrun.engine.loop.Engine`.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from steadyrun.attempt.folder import log_tail, read_error
from steadyrun.attempt.logcap import join_parts
from steadyrun.engine.decisions import Action, Step, Verdict, classify, next_step, timed_out
from steadyrun.engine.ledger import CapacityLedger
from steadyrun.engine.records import describe_changes, time_limit
from steadyrun.engine.watch import Watch, import_remote_samples
from steadyrun.errors import TaskFailed
from steadyrun.executors.base import Executor, Outcome
from steadyrun.states import (
    ATTEMPT_TRANSITIONS,
    FINAL_TASK_STATES,
    TASK_TRANSITIONS,
    AttemptRun,
    FailureKind,
    TaskRun,
    TaskState,
    failure_kind,
    transition,
)
from steadyrun.store.db import Store
from steadyrun.task import Task, apply_degrade

_WITHDRAWN = "withdrawn: a dependency did not succeed"
#: Task states a resume keeps as they were; their dependants are skipped.
GIVEN_UP = frozenset({TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED})


@dataclass
class _Ended:
    """An attempt that just ended, as recorded: what acting on the decision needs."""

    tr: TaskRun
    att: AttemptRun
    kind: FailureKind | None
    message: str
    info: dict[str, Any] | None
    wall: float

class TaskBook:
    """Every task of one run, and the rules that move them (see the module docs).

    ``prior`` is what an earlier run recorded per task (resume). ``on_change(task_run,
    state)`` is told every task state change. The engine fills ``ledgers`` (one per
    executor), ``running`` (attempt id -> task run) and ``watch`` as it runs.
    """

    def __init__(self, store: Store, exp_id: str, tasks: list[Task], executor: Executor, *,
                 clock: Callable[[], float], rng: random.Random,
                 on_change: Callable[[TaskRun, str], None] | None,
                 prior: dict[str, dict[str, Any]] | None) -> None:
        self.store = store
        self.exp_id = exp_id
        self.executor = executor
        self.clock = clock
        self.rng = rng
        self.on_change = on_change
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
        if prior:  # a resumed task's next attempt is told its last one was preempted
            last = {row.task: row.kind for row in store.attempts(exp_id)}
            for name, kind in last.items():
                tr = self.runs.get(name)
                if (kind == FailureKind.PREEMPTED and tr is not None
                        and tr.state not in FINAL_TASK_STATES):
                    tr.kind = FailureKind.PREEMPTED
        for tr in self.runs.values():
            if tr.blocked_by == 0 and tr.state == TaskState.PENDING:
                self._enqueue(tr)
        self.ledgers: dict[int, CapacityLedger] = {}
        self.running: dict[str, TaskRun] = {}
        self.watch: Watch | None = None
        self._cancel = threading.Event()
        self._pending_stops: list[tuple[AttemptRun, FailureKind]] = []

    def executor_for(self, task: Task) -> Executor:
        return task.executor or self.executor

    @staticmethod
    def _stopping(tr: TaskRun, kind: FailureKind) -> tuple[AttemptRun, FailureKind] | None:
        """Mark ``tr``'s attempt as being stopped for ``kind``; None when it has none or
        is being stopped already (the first reason is the one recorded)."""
        att = tr.current
        if att is None or att.stopping is not None:
            return None
        att.stopping = kind
        return att, kind

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
        if not ex.supports_dependencies or tr.state != TaskState.PENDING:
            return False
        for name in tr.task.depends_on:
            dep = self.runs[name]
            if dep.state == TaskState.SUCCEEDED:
                continue
            if (dep.state != TaskState.RUNNING or dep.current is None or dep.current.stopping
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

    # --- outcomes: classify -> record -> decide -> act ------------------------------

    def _complete(self, outcome: Outcome) -> None:
        tr = self.running.pop(outcome.attempt_id, None)
        if tr is None or tr.current is None:
            return  # an outcome for an attempt already settled (e.g. after a stop)
        att, tr.current = tr.current, None
        self.ledgers[id(att.executor)].release(att.executor.request_of(att.resources),
                                               att.gpus)
        peaks = self._collect_peaks(tr, att)
        verdict = self._classify(tr, att, outcome)
        ended = self._record_end(tr, att, outcome, verdict, peaks)
        if verdict.kind is FailureKind.PREEMPTED:
            tr.preemptions += 1
        step = next_step(verdict.kind, policy=tr.task.policy,
                         attempts_made=tr.attempts - tr.uncounted_attempts,
                         degrade=tr.task.degrade, cancelling=self._cancel.is_set(),
                         preemptions=tr.preemptions)
        if not step.counted:
            tr.uncounted_attempts += 1  # numbered in the store, not held against retries
        if step.action is Action.SUCCEED:
            self._succeed(ended, outcome)
        elif step.action is Action.REQUEUE:
            self._requeue_after_dependency(tr)
        elif step.action is Action.CANCEL:
            self._cancel_task(ended)
        elif step.action is Action.RETRY:
            self._retry(ended, step)
        elif verdict.kind is FailureKind.PREEMPTED and not self._cancel.is_set():
            self._fail(ended, f"; preempted {tr.preemptions} times, more than "
                       f"Retry.max_preemptions={tr.task.policy.max_preemptions}")
        else:
            self._fail(ended)

    def _collect_peaks(self, tr: TaskRun, att: AttemptRun) -> dict[str, Any]:
        """The attempt's resource peaks as attempt-row fields (also kept on ``tr``)."""
        peaks = self.watch.settle(att.attempt_id) if self.watch is not None else {}
        if not peaks and (att.executor.samples_remotely  # sampled on its node(s)
                          or att.executor.gang is not None):
            peaks = import_remote_samples(self.store, self.exp_id, tr.name, att.number,
                                          att.dir)
        tr.peak_rss = peaks.get("peak_rss")
        tr.peak_gpu_memory = peaks.get("peak_gpu_memory")
        tr.cpu_seconds = peaks.get("cpu_seconds")
        return peaks

    def _classify(self, tr: TaskRun, att: AttemptRun, outcome: Outcome) -> Verdict:
        evidence = None
        if outcome.kind == FailureKind.LOST and self.watch is not None:
            evidence = self.watch.oom_evidence(
                outcome, tr.peak_rss, att.executor.request_of(att.resources).memory_bytes,
                self.ledgers[id(att.executor)].capacity.memory)
        dependency_failed = att.early and any(
            self.runs[d].state != TaskState.SUCCEEDED for d in tr.task.depends_on)
        verdict = classify(outcome.kind, stopping=att.stopping, early=att.early,
                           dependency_failed=dependency_failed, oom_evidence=evidence)
        if att.stopping is FailureKind.OOM and self.watch is not None:  # stopped by sampling
            sampled = self.watch.over_memory_message(att.attempt_id)
            if sampled and verdict.kind is FailureKind.OOM:
                return Verdict(FailureKind.OOM, sampled)
        elif verdict.kind is FailureKind.OOM and outcome.kind == FailureKind.OOM:
            self._note_kernel_oom(tr, att)
        elif verdict.kind is FailureKind.TIMEOUT and att.stopping is FailureKind.TIMEOUT:
            return timed_out(time_limit(tr.task), outcome.message)
        elif att.stopping is FailureKind.PREEMPTED and tr.task.checkpoint_on_timeout:
            limit = timed_out(time_limit(tr.task)).message
            return Verdict(FailureKind.PREEMPTED, f"{limit}: asked to save and stop "
                           "(checkpoint_on_timeout=True); the next attempt resumes")
        return verdict

    def _note_kernel_oom(self, tr: TaskRun, att: AttemptRun) -> None:
        """A ``memory_enforced`` event for an attempt the kernel stopped at its memory
        cgroup's limit (what the cgroup counted is in the attempt folder)."""
        from steadyrun.attempt.memcg import read_record

        record = read_record(att.dir)
        if record and record.get("oom_kills"):
            self._event("memory_enforced", tr, mechanism="kernel", rss=record.get("peak"),
                        request=record.get("limit"), oom_kills=record.get("oom_kills"))

    def _record_end(self, tr: TaskRun, att: AttemptRun, outcome: Outcome, verdict: Verdict,
                    peaks: dict[str, Any]) -> _Ended:
        """Write the attempt's end to its row; keep its kind and exit code on ``tr``."""
        wall = time.time()
        kind = verdict.kind
        info = None
        if kind is not None:
            join_parts(att.dir)  # a killed worker's capped logs: their tails joined
            info = outcome.error.to_dict() if outcome.error is not None else read_error(att.dir)
        message = ""
        if kind is not None and kind is not FailureKind.DEPENDENCY:
            message = verdict.message or outcome.message or (info or {}).get("message") or kind
        tr.kind = kind if kind is not FailureKind.DEPENDENCY else None
        tr.exit_code = (outcome.exit_code if outcome.exit_code is not None
                        else (info or {}).get("exit_code"))
        state = verdict.attempt_state
        att.state = transition(ATTEMPT_TRANSITIONS, f"attempt {att.attempt_id}", att.state,
                               state)
        # the store gets plain strings: binding an enum costs sqlite an adaptation each
        fields: dict[str, Any] = {"state": str(state), "ended_at": wall, **peaks}
        if outcome.pid is not None:  # keep the pid recorded at launch when it says none
            fields["pid"] = outcome.pid
        if kind is None:
            fields["exit_code"] = outcome.exit_code
            if outcome.result_bytes is not None:  # small: kept with the row, no file
                fields["result"] = outcome.result_bytes
        elif kind is FailureKind.DEPENDENCY:
            fields.update(kind=str(FailureKind.CANCELLED), message=_WITHDRAWN)
        else:
            fields.update(kind=str(kind), exit_code=tr.exit_code, error=info, message=message)
        self.store.update_attempt(self.exp_id, tr.name, att.number, **fields)
        if kind is FailureKind.LOST:
            tr.lost += 1
        return _Ended(tr, att, kind, message, info, wall)

    def _succeed(self, ended: _Ended, outcome: Outcome) -> None:
        tr = ended.tr
        tr.value, tr.has_value = outcome.value, outcome.has_value
        tr.ended_at = ended.wall
        self._set_state(tr, TaskState.SUCCEEDED, kind=None, message="")
        for name in self.dependants[tr.name]:
            child = self.runs[name]
            child.blocked_by -= 1
            if child.blocked_by == 0 and child.state == TaskState.PENDING:
                self._enqueue(child)
            elif child.blocked_by == 0 and child.current is not None:
                # submitted early; its time limit starts now that it may run
                child.current.early = False
                limit = time_limit(child.task)
                if limit is not None:
                    child.current.deadline = self.clock() + limit

    def _cancel_task(self, ended: _Ended) -> None:
        tr = ended.tr
        tr.ended_at = ended.wall
        self._set_state(tr, TaskState.CANCELLED, kind=ended.kind, message=ended.message)
        self._stop_early_dependants(tr)
        self._skip_dependants(tr)

    def _retry(self, ended: _Ended, step: Step) -> None:
        tr = ended.tr
        if step.degrade and not self._degrade(tr, ended.att):
            self._fail(ended, "; degradation reached its limit after "
                       + describe_changes(tr.changes))
            return
        delay = tr.task.policy.delay(step.failures, self.rng) if step.backoff else 0.0
        tr.due = self.clock() + delay
        heapq.heappush(self.retry_heap, (tr.due, tr.position, tr.name))
        self._event("retry_scheduled", tr, kind=ended.kind, delay_s=round(delay, 3),
                    next_attempt=tr.attempts + 1)
        self._set_state(tr, TaskState.RETRYING, kind=ended.kind, message=ended.message)
        self._stop_early_dependants(tr)

    def _degrade(self, tr: TaskRun, att: AttemptRun) -> bool:
        """Change ``tr``'s payload or request for its next attempt after an OOM and
        record what changed; False when nothing could change any more."""
        cap = self.ledgers[id(att.executor)].capacity
        payload, resources, changes = apply_degrade(tr.task, tr.payload, tr.resources,
                                                    cap.memory)
        if not changes:
            return False
        tr.payload, tr.resources = payload, resources
        tr.changes.append({"before": tr.attempts + 1, **changes})
        self._event("degraded", tr, changes=changes)
        return True

    def _fail(self, ended: _Ended, note: str = "") -> None:
        tr = ended.tr
        kind = ended.kind or FailureKind.ERROR
        tr.ended_at = ended.wall
        tr.message = ended.message + note
        tr.error = TaskFailed(
            tr.name, kind, tr.message, exit_code=tr.exit_code,
            remote_traceback=(ended.info or {}).get("traceback") or None,
            log_tail=log_tail(ended.att.dir), attempts=tr.attempts)
        self._set_state(tr, TaskState.FAILED, kind=kind, message=tr.message)
        self._stop_early_dependants(tr)
        self._skip_dependants(tr)

    def _stop_early_dependants(self, tr: TaskRun) -> None:
        for name in self.dependants[tr.name]:
            child = self.runs[name]
            if child.current is not None and child.current.early:
                stop = self._stopping(child, FailureKind.DEPENDENCY)
                if stop is not None:
                    self._pending_stops.append(stop)

    def _requeue_after_dependency(self, tr: TaskRun) -> None:
        """An attempt submitted behind a dependency that then failed: not a failure of
        this task. It waits again (or is skipped when the dependency failed for good)."""
        self._set_state(tr, TaskState.PENDING, message="waiting for its dependencies again")
        failed = [self.runs[d] for d in tr.task.depends_on if self.runs[d].state in GIVEN_UP]
        if failed:
            self._skip_one(tr, failed[0])
        elif self._early_ready(tr):
            self._enqueue(tr)

    def _skip_one(self, tr: TaskRun, cause: TaskRun) -> None:
        self._set_state(tr, TaskState.SKIPPED,
                        message=f"not run: dependency {cause.name!r} {cause.state}")
        self._skip_dependants(tr)

    def _skip_dependants(self, failed: TaskRun) -> None:
        stack = list(self.dependants[failed.name])
        while stack:
            tr = self.runs[stack.pop()]
            if tr.state == TaskState.PENDING:
                self._set_state(tr, TaskState.SKIPPED,
                                message=f"not run: dependency {failed.name!r} {failed.state}")
                stack.extend(self.dependants[tr.name])

    def _restore(self, tr: TaskRun, info: dict[str, Any]) -> None:
        """Take over what an earlier run recorded (resume): a succeeded task is done and
        unblocks its dependants; any other starts again with its attempts counted."""
        tr.attempts = tr.uncounted_attempts = int(info.get("attempts") or 0)
        state = info.get("state")
        if state == TaskState.SUCCEEDED:
            tr.state = TaskState.SUCCEEDED
            self.unfinished -= 1
            for name in self.dependants[tr.name]:
                self.runs[name].blocked_by -= 1
        elif state in GIVEN_UP:
            tr.state = TaskState(state)  # kept as it was: not chosen for a rerun
            tr.kind = failure_kind(info.get("kind"))
            tr.message = info.get("message") or ""
            self.unfinished -= 1

    # --- recording ------------------------------------------------------------------

    def _set_state(self, tr: TaskRun, state: TaskState, **fields: Any) -> None:
        old = tr.state
        tr.state = transition(TASK_TRANSITIONS, f"task {tr.name!r}", old, state)
        self.unfinished += (old in FINAL_TASK_STATES) - (state in FINAL_TASK_STATES)
        value = str(state)  # plain strings for the store, as in _record_end
        if fields.get("kind") is not None:
            fields["kind"] = str(fields["kind"])
        self.store.update_task(self.exp_id, tr.name, state=value, **fields)
        self.store.add_event(self.exp_id, value, task=tr.name, attempt=tr.attempts or None)
        if self.on_change is not None:
            self.on_change(tr, state)

    def _event(self, event: str, tr: TaskRun, **data: Any) -> None:
        self.store.add_event(self.exp_id, event, task=tr.name, attempt=tr.attempts or None,
                             data=data)

__all__ = ["GIVEN_UP", "TaskBook"]
