"""The state machines of tasks and attempts, in one place.

States and failure kinds are :class:`~enum.StrEnum` members: they compare equal to
their plain string values, which is what the store keeps and what users read in
``status``. Every state change the engine (or ``resume``) makes goes through
:func:`transition`, which raises :class:`~steadyrun.errors.InvalidTransition` for
anything not listed here.

State machines (enforced by :func:`transition`; anything else raises
:class:`~steadyrun.errors.InvalidTransition`):

========== ============================================= ==============================
task       may become                                    when
========== ============================================= ==============================
pending    running                                       deps succeeded, request fits
pending    skipped                                       a dependency failed for good
pending    cancelled                                     the experiment was cancelled
retrying   running                                       its backoff delay has passed
retrying   cancelled                                     the experiment was cancelled
retrying   failed                                        its controller died or broke
running    succeeded                                     the attempt succeeded
running    retrying                                      failed; the policy retries it
running    failed                                        failed; no retry is left
running    cancelled                                     the attempt was cancelled
running    pending                                       submitted early behind a
                                                         dependency that then failed
failed,    pending                                       ``resume`` reopens the task
cancelled,
skipped
succeeded  pending                                       ``resume`` reruns it by name
                                                         or with ``rerun="all"``
========== ============================================= ==============================

An attempt is ``running`` from the moment it is recorded (just before launch) until it
becomes ``succeeded``, ``failed`` (with a :class:`FailureKind`: error, oom, timeout,
lost, preempted) or ``cancelled``; those three are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from steadyrun.errors import InvalidTransition, TaskFailed

if TYPE_CHECKING:  # annotations only: `steadyrun list` checks --state without them
    from steadyrun.executors.base import Executor
    from steadyrun.task import Resources, Task


class ExperimentState(StrEnum):
    """Where an experiment is: ``created`` until its controller starts it, ``running``
    while one drives it (``resume`` makes it ``running`` again), then ``succeeded``,
    ``failed`` or ``cancelled``."""

    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(StrEnum):
    """Where a task is in its life (see the table in the module docs)."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class AttemptState(StrEnum):
    """Where one attempt is: ``running`` until one of the three final states."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailureKind(StrEnum):
    """Why an attempt did not succeed; retries choose by kind.

    ``DEPENDENCY`` never reaches the store: it is the engine's name for an attempt
    submitted early behind a dependency that then failed (stored as ``cancelled``).
    """

    ERROR = "error"
    OOM = "oom"
    TIMEOUT = "timeout"
    LOST = "lost"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    DEPENDENCY = "dependency"


TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.RUNNING, TaskState.SKIPPED, TaskState.CANCELLED}),
    TaskState.RETRYING: frozenset({TaskState.RUNNING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.RUNNING: frozenset({TaskState.SUCCEEDED, TaskState.RETRYING, TaskState.FAILED,
                                  TaskState.CANCELLED, TaskState.PENDING}),
    TaskState.SUCCEEDED: frozenset({TaskState.PENDING}),  # chosen by name for a rerun
    TaskState.FAILED: frozenset({TaskState.PENDING}),
    TaskState.CANCELLED: frozenset({TaskState.PENDING}),
    TaskState.SKIPPED: frozenset({TaskState.PENDING}),
}
ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    AttemptState.RUNNING: frozenset({AttemptState.SUCCEEDED, AttemptState.FAILED,
                                     AttemptState.CANCELLED}),
    AttemptState.SUCCEEDED: frozenset(),
    AttemptState.FAILED: frozenset(),
    AttemptState.CANCELLED: frozenset(),
}
FINAL_TASK_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED,
                               TaskState.SKIPPED})
#: Task states the engine may still start (nothing of them runs now).
WAITING_TASK_STATES = frozenset({TaskState.PENDING, TaskState.RETRYING})

S = TypeVar("S", bound=StrEnum)
_NO_STATES: frozenset[Any] = frozenset()


def transition(table: Mapping[S, frozenset[S]], what: str, old: str, new: str) -> S:
    """The member of ``table`` named ``new`` if ``old -> new`` is allowed, else raise
    :class:`~steadyrun.errors.InvalidTransition` naming ``what``. Plain strings (as read
    from the store) are accepted for both states."""
    # a StrEnum member hashes like its value, so plain strings find their entries
    lookup: Mapping[Any, frozenset[S]] = table
    for member in lookup.get(old, _NO_STATES):
        if member == new:
            return member
    raise InvalidTransition(f"{what}: {old} -> {new} is not an allowed state change")


def failure_kind(value: str | None) -> FailureKind | None:
    """The :class:`FailureKind` an executor reported (None: success). A kind this
    version does not know is an ``error``, so it is still reported and never lost."""
    if value is None:
        return None
    try:
        return FailureKind(value)
    except ValueError:
        return FailureKind.ERROR


@dataclass
class AttemptRun:
    """One attempt while the engine watches it."""

    number: int
    attempt_id: str
    dir: Path
    resources: Resources
    gpus: list[int]
    executor: Executor
    started: float  # engine clock: when it was launched
    started_at: float  # wall clock
    deadline: float | None
    state: AttemptState = AttemptState.RUNNING
    stopping: FailureKind | None = None
    early: bool = False  # submitted behind running dependencies (backend holds it)


@dataclass
class TaskRun:
    """Everything the engine knows about one task during a run."""

    task: Task
    payload: Any
    resources: Resources
    position: int = 0
    blocked_by: int = 0  # dependencies not yet succeeded
    state: TaskState = TaskState.PENDING
    attempts: int = 0
    # attempts that retries do not count: made by an earlier run (resume), withdrawn
    # because a dependency they were submitted behind failed, or preempted
    uncounted_attempts: int = 0
    preemptions: int = 0  # attempts that ended preempted (Retry.max_preemptions)
    lost: int = 0
    current: AttemptRun | None = None
    due: float = 0.0
    changes: list[dict[str, Any]] = field(default_factory=list)
    value: Any = None
    has_value: bool = False
    error: TaskFailed | None = None
    kind: FailureKind | None = None
    exit_code: int | None = None
    message: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    waiting_noted: bool = False
    queued: bool = False
    peak_rss: int | None = None
    peak_gpu_memory: int | None = None
    cpu_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.task.name
