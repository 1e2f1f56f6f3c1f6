"""The state machines of tasks and attempts, in one place.

Every state change the engine (or ``resume``) makes goes through :func:`transition`,
which raises :class:`~steadyrun.errors.InvalidTransition` for anything not listed here.

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
retrying   failed                                        its controller died meanwhile
running    succeeded                                     the attempt succeeded
running    retrying                                      failed; the policy retries it
running    failed                                        failed; no retry is left
running    cancelled                                     the attempt was cancelled
running    pending                                       submitted early behind a
                                                         dependency that then failed
failed,    pending                                       ``resume`` reopens the task
cancelled,
skipped
========== ============================================= ==============================

An attempt is ``running`` from the moment it is recorded (just before launch) until it
becomes ``succeeded``, ``failed`` (with a kind: error, oom, timeout, lost) or
``cancelled``; those three are final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.errors import InvalidTransition, TaskFailed
from steadyrun.executors.base import Executor
from steadyrun.task import Resources, Task

TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "skipped", "cancelled"}),
    "retrying": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "retrying", "failed", "cancelled", "pending"}),
    "succeeded": frozenset(),
    "failed": frozenset({"pending"}),
    "cancelled": frozenset({"pending"}),
    "skipped": frozenset({"pending"}),
}
ATTEMPT_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
FINAL_TASK_STATES = frozenset({"succeeded", "failed", "cancelled", "skipped"})


def transition(table: dict[str, frozenset[str]], what: str, old: str, new: str) -> str:
    """Return ``new`` if ``old -> new`` is allowed in ``table``, else raise."""
    if new not in table.get(old, frozenset()):
        raise InvalidTransition(f"{what}: {old} -> {new} is not an allowed state change")
    return new


@dataclass
class AttemptRun:
    """One attempt while the engine watches it."""

    number: int
    attempt_id: str
    dir: Path
    resources: Resources
    gpus: list[int]
    executor: Executor
    started: float  # engine clock
    started_at: float  # wall clock
    deadline: float | None
    state: str = "running"
    stopping: str | None = None
    early: bool = False  # submitted behind running dependencies (backend holds it)


@dataclass
class TaskRun:
    """Everything the engine knows about one task during a run."""

    task: Task
    payload: Any
    resources: Resources
    position: int = 0
    blocked_by: int = 0  # dependencies not yet succeeded
    state: str = "pending"
    attempts: int = 0
    # attempts that retries do not count: made by an earlier run (resume), or withdrawn
    # because a dependency they were submitted behind failed
    uncounted_attempts: int = 0
    lost: int = 0
    current: AttemptRun | None = None
    due: float = 0.0
    changes: list[dict[str, Any]] = field(default_factory=list)
    value: Any = None
    has_value: bool = False
    result_path: Path | None = None
    error: TaskFailed | None = None
    kind: str | None = None
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
