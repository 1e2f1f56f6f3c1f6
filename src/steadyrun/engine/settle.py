"""Recording the end of a run that left the loop by an exception.

A second Ctrl-C, a store error (a full disk) or a bug ends the engine's loop without
the usual bookkeeping. :func:`settle_after_exception` then writes what the store still accepts:
every attempt still ``running`` becomes ``cancelled`` (after Ctrl-C) or ``failed`` as
``lost``, its task follows through the state machine, and the experiment becomes
``cancelled`` or ``failed`` with its controller released, so it never stays
``running`` with nobody driving it. The caller has already stopped the executors.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping

from steadyrun.errors import InvalidTransition, StoreError, StoreFull
from steadyrun.states import (
    TASK_TRANSITIONS,
    FailureKind,
    TaskRun,
    TaskState,
    transition,
)
from steadyrun.store.db import Store

log = logging.getLogger(__name__)


def settle_after_exception(store: Store, exp_id: str, exc: BaseException,
                           runs: Mapping[str, TaskRun]) -> str:
    """Record the end of experiment ``exp_id`` after ``exc`` stopped its engine; return
    the experiment's final state (``cancelled`` after a ``KeyboardInterrupt``, else
    ``failed``).

    Works from the store's rows (the truth after a rollback) and mirrors the changes
    into ``runs``. Each part is written as far as the store allows: a failure to write
    is logged (logger ``steadyrun.engine.settle``), never raised, so the original
    exception is what the caller sees.
    """
    interrupted = isinstance(exc, KeyboardInterrupt)
    final = "cancelled" if interrupted else "failed"
    if interrupted:
        message = "cancelled: the controller was interrupted before its attempts ended"
    elif isinstance(exc, StoreFull):
        message = (f"stopped: the disk holding the store filled up; `steadyrun resume "
                   f"{exp_id}` runs it again once there is space")
    else:
        message = f"the controller stopped on an unexpected error ({type(exc).__name__}: {exc})"
    settling = store.settling() if hasattr(store, "settling") else contextlib.nullcontext()
    with settling:
        return _record(store, exp_id, exc, runs, interrupted, final, message)


def _record(store: Store, exp_id: str, exc: BaseException, runs: Mapping[str, TaskRun],
            interrupted: bool, final: str, message: str) -> str:
    try:
        with store.transaction():
            _settle_rows(store, exp_id, interrupted, message, runs)
            store.add_event(exp_id, "controller_stopped",
                            data={"error": type(exc).__name__, "message": message})
    except Exception as err:  # noqa: BLE001 - the store may be what failed; go on
        log.warning("could not record the attempts and tasks of %s as %s%s", exp_id, final,
                    _why(err), exc_info=not isinstance(err, StoreError))
    try:
        store.update_experiment(exp_id, state=final, ended_at=time.time(),
                                controller_pid=None)
    except Exception as err:  # noqa: BLE001
        log.error("could not record experiment %s as %s%s; `steadyrun resume` will "
                  "settle it", exp_id, final, _why(err),
                  exc_info=not isinstance(err, StoreError))
    return final


def _why(err: Exception) -> str:
    # a store error is one clear line; anything else gets its traceback
    return f" ({err})" if isinstance(err, StoreError) else ""


def _settle_rows(store: Store, exp_id: str, interrupted: bool, message: str,
                 runs: Mapping[str, TaskRun]) -> None:
    now = time.time()
    kind = FailureKind.CANCELLED if interrupted else FailureKind.LOST
    attempt_state = "cancelled" if interrupted else "failed"
    task_state = TaskState.CANCELLED if interrupted else TaskState.FAILED
    for a in store.attempts(exp_id):
        if a.state == "running":
            store.update_attempt(exp_id, a.task, a.number, state=attempt_state, kind=str(kind),
                                 ended_at=now, message=message)
    # pending tasks stay pending after an error (resume runs them); Ctrl-C cancels them
    # as a first Ctrl-C would have
    open_states = {TaskState.RUNNING, TaskState.RETRYING}
    if interrupted:
        open_states.add(TaskState.PENDING)
    for t in store.tasks(exp_id):
        if t.state not in open_states:
            continue
        try:
            new = transition(TASK_TRANSITIONS, f"task {t.name!r}", t.state, task_state)
        except InvalidTransition:  # not a state this end may change: keep it
            continue
        task_kind = None if t.state == TaskState.PENDING else kind
        store.update_task(exp_id, t.name, state=str(new), message=message,
                          kind=None if task_kind is None else str(task_kind))
        store.add_event(exp_id, str(new), task=t.name)
        tr = runs.get(t.name)
        if tr is not None:
            tr.state, tr.current, tr.message = new, None, message
            tr.kind = task_kind
