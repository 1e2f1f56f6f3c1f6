"""A plain, frozen picture of a running engine, for views that must not touch it.

:meth:`Engine.snapshot() <steadyrun.engine.loop.Engine.snapshot>` returns an
:class:`EngineSnapshot`: one :class:`TaskView` per task (state, attempts, failure kind,
seconds until a retry, the running attempt's latest resource sample and backend
detail) and one :class:`~steadyrun.engine.ledger.CapacityUse` per executor. Building it
only reads the engine, so the live view may call it from its own thread; a value that
changes meanwhile shows on the next snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from steadyrun.engine.ledger import CapacityLedger, CapacityUse
from steadyrun.states import (
    FINAL_TASK_STATES,
    AttemptRun,
    FailureKind,
    TaskRun,
    TaskState,
    failure_kind,
)


@dataclass(frozen=True)
class TaskView:
    """One task as the engine knows it now.

    ``due_in`` is the number of seconds until a retrying task's next attempt may start
    (None otherwise). ``started_at``/``ended_at`` are wall-clock times of the task's
    first start and end; ``attempt_started_at`` that of the running attempt, whose
    latest sample gives ``cpu_percent``, ``rss`` and ``gpu_memory`` (None before the
    first sample, or when it is not sampled here). ``detail`` is the executor's short
    description of the running attempt (a job id), if it has one.
    """

    name: str
    state: TaskState
    attempts: int = 0
    kind: FailureKind | None = None
    exit_code: int | None = None
    message: str = ""
    waiting_for_dependencies: bool = False
    due_in: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    attempt_id: str | None = None
    attempt_started_at: float | None = None
    detail: str | None = None
    cpu_percent: float | None = None
    rss: int | None = None
    gpu_memory: int | None = None


@dataclass(frozen=True)
class EngineSnapshot:
    """Every task and every executor's capacity at ``time`` (wall clock)."""

    exp_id: str
    tasks: tuple[TaskView, ...]
    capacity: tuple[CapacityUse, ...] = ()
    time: float = 0.0

    @property
    def finished(self) -> bool:
        """True when every task is in a final state."""
        return bool(self.tasks) and all(t.state in FINAL_TASK_STATES for t in self.tasks)


def build_snapshot(exp_id: str, runs: Iterable[TaskRun], ledgers: Iterable[CapacityLedger],
                   now: float, latest: Mapping[str, Any],
                   describe: Callable[[AttemptRun], str | None]) -> EngineSnapshot:
    """The snapshot of the engine's ``runs`` and ``ledgers``; ``now`` is the engine's
    clock, ``latest`` the monitor's latest sample per attempt id and ``describe`` the
    executor's detail of a running attempt."""
    views = []
    for tr in list(runs):
        views.append(_task_view(tr, now, latest, describe))
    return EngineSnapshot(exp_id=exp_id, tasks=tuple(views),
                          capacity=tuple(ledger.use() for ledger in list(ledgers)),
                          time=time.time())


def _task_view(tr: TaskRun, now: float, latest: Mapping[str, Any],
               describe: Callable[[AttemptRun], str | None]) -> TaskView:
    state = tr.state
    att = tr.current
    fields: dict[str, Any] = {}
    if state == TaskState.RUNNING and att is not None:
        sample = latest.get(att.attempt_id)
        if sample is not None:
            fields.update(cpu_percent=sample.cpu_percent, rss=sample.rss,
                          gpu_memory=sample.gpu_memory)
        fields.update(attempt_id=att.attempt_id, attempt_started_at=att.started_at,
                      detail=describe(att))
    elif state == TaskState.RETRYING:
        fields["due_in"] = max(0.0, tr.due - now)
    return TaskView(name=tr.name, state=TaskState(state), attempts=tr.attempts,
                    kind=failure_kind(tr.kind),
                    exit_code=tr.exit_code, message=tr.message,
                    waiting_for_dependencies=state == TaskState.PENDING and tr.blocked_by > 0,
                    started_at=tr.started_at, ended_at=tr.ended_at, **fields)


__all__ = ["EngineSnapshot", "TaskView", "build_snapshot"]
