"""The engine's decisions as pure functions: what an ended attempt was, and what next.

:func:`classify` names the failure kind of an ended attempt from what the executor
reported and what the engine knows (it was stopping the attempt, the attempt was
submitted early behind a dependency that failed, the process looked out of memory).
:func:`next_step` chooses what happens to the task: it succeeded, it is retried (maybe
degraded first), it fails for good, it is cancelled, or it waits for its dependencies
again. Neither reads a clock, the store or an executor, so every rule is testable
with plain values; the engine records and acts on what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from steadyrun.states import AttemptState, FailureKind, failure_kind
from steadyrun.task import Degrade, Retry


@dataclass(frozen=True)
class Verdict:
    """What an ended attempt was: ``kind`` None means it succeeded. ``message``, when
    set, explains the kind better than the executor's own message did."""

    kind: FailureKind | None
    message: str | None = None

    @property
    def attempt_state(self) -> AttemptState:
        """The attempt's final state: withdrawn and cancelled attempts are
        ``cancelled``, other failures ``failed``."""
        if self.kind is None:
            return AttemptState.SUCCEEDED
        if self.kind in (FailureKind.CANCELLED, FailureKind.DEPENDENCY):
            return AttemptState.CANCELLED
        return AttemptState.FAILED


_SUCCEEDED = Verdict(None)  # shared: the common case allocates nothing


def classify(reported: str | None, *, stopping: FailureKind | None = None,
             early: bool = False, dependency_failed: bool = False,
             oom_evidence: str | None = None) -> Verdict:
    """The final kind of an ended attempt.

    ``reported`` is the executor's kind (None: it succeeded; an unknown kind counts as
    ``error``). ``stopping`` is why the engine was stopping it, if it was: that reason
    wins over however the kill looked. ``early`` with ``dependency_failed`` (an attempt
    the backend held behind a dependency that did not succeed) is ``dependency``, not
    a failure of this task. ``oom_evidence`` turns a ``lost`` attempt into ``oom``
    and becomes its message. An attempt that succeeded while being stopped succeeded.
    """
    kind = failure_kind(reported)
    if kind is None:
        return _SUCCEEDED
    if early and dependency_failed and stopping in (None, FailureKind.DEPENDENCY):
        return Verdict(FailureKind.DEPENDENCY)
    if stopping is not None:
        return Verdict(stopping)
    if kind is FailureKind.LOST and oom_evidence:
        return Verdict(FailureKind.OOM, oom_evidence)
    return Verdict(kind)


def timed_out(limit: float | None, executor_message: str = "") -> Verdict:
    """The verdict of an attempt the engine stopped at its time limit: ``"timed out
    after 3s"``, plus what the executor added to its own ``"stopped by the executor
    (timeout)"`` (a thread that could not be killed, a Ray task that would not end)."""
    from steadyrun.units import format_limit

    message = "timed out" if limit is None else f"timed out after {format_limit(limit)}"
    if executor_message.startswith("stopped by"):
        detail = executor_message.partition(")")[2].lstrip(":; ")
        if detail:
            message += f" ({detail})"
    return Verdict(FailureKind.TIMEOUT, message)


class Action(StrEnum):
    """What happens to a task after one of its attempts ended."""

    SUCCEED = "succeed"
    RETRY = "retry"
    FAIL = "fail"
    CANCEL = "cancel"
    REQUEUE = "requeue"  # wait for its dependencies again


@dataclass(frozen=True)
class Step:
    """The decision :func:`next_step` returns.

    ``degrade``: change the payload or the memory request before the retry (after an
    out-of-memory failure). ``counted``: the ended attempt counts against the policy's
    ``max_attempts`` (withdrawn and preempted attempts do not). ``failures`` is the
    number of counted failures so far, which sets the backoff delay of a retry;
    ``backoff`` False: the retry starts at once (after a preemption).
    """

    action: Action
    degrade: bool = False
    counted: bool = True
    failures: int = 0
    backoff: bool = True


_SUCCEED = Step(Action.SUCCEED)


def next_step(kind: FailureKind | None, *, policy: Retry, attempts_made: int,
              degrade: Degrade | None = None, cancelling: bool = False,
              preemptions: int = 0) -> Step:
    """What to do with a task whose attempt ended as ``kind``.

    ``attempts_made`` counts the attempts that count against ``policy`` (this one
    included). A failure is retried when the policy retries its kind and attempts are
    left; an ``oom`` with a ``degrade`` is retried (degraded) while attempts are left
    even if ``policy.on`` leaves out ``oom``; a ``preempted`` attempt is retried at once
    (no backoff) and not counted, while ``preemptions`` (the task's preempted attempts,
    this one included) is at most ``policy.max_preemptions``. Nothing is retried while
    the experiment is ``cancelling``.
    """
    if kind is None:
        return _SUCCEED
    if kind is FailureKind.DEPENDENCY:
        return Step(Action.REQUEUE, counted=False)
    if kind is FailureKind.CANCELLED:
        return Step(Action.CANCEL)
    if kind is FailureKind.PREEMPTED:  # asked to stop by the backend, not its own fault
        over = preemptions > policy.max_preemptions
        return Step(Action.FAIL if cancelling or over else Action.RETRY, counted=False,
                    backoff=False)
    left = attempts_made < policy.max_attempts
    degrades = kind is FailureKind.OOM and degrade is not None and left
    if cancelling or not (degrades or policy.should_retry(kind, attempts_made)):
        return Step(Action.FAIL, failures=attempts_made)
    return Step(Action.RETRY, degrade=degrades, failures=attempts_made)


__all__ = ["Action", "Step", "Verdict", "classify", "next_step"]
