"""Slurm job states, in one table, and what an attempt's end is made of them.

As rules:

1. A state in :data:`ACTIVE_STATES` is still in progress: the attempt waits.
2. A job that Slurm **requeued** (``scontrol requeue``, preemption with
   ``PreemptMode=REQUEUE``, a node failure with ``--requeue``) shows one of
   :data:`REQUEUE_STATES`, or ``PENDING`` again after it had started, or a restart count
   above 0. Its attempt ends ``preempted``: the executor cancels the job and the engine
   runs the next attempt as a new job (see :mod:`steadyrun.executors.slurm.preempt`).
3. Final states map to failure kinds through :data:`STATE_KINDS` (``None``: the job
   completed; the attempt's files tell the rest).
4. The controller's own stop wins: a job it cancelled ends with the kind it asked for
   (``cancelled``, ``timeout``, ``preempted``), whatever the worker said on its way out.
5. The worker's word comes next: exit status 76 (or an error record of kind
   ``preempted``) after the preemption signal is ``preempted``; a ``TIMEOUT`` is
   ``preempted`` only when the job asked for a warning signal and the worker recorded
   that it saved, else it stays ``timeout``.
"""

from __future__ import annotations

from steadyrun.attempt.names import EXIT_PREEMPTED

#: Slurm job states that are still in progress.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD", "POWER_UP_NODE", "UPDATE_DB"})

#: States that say the job was requeued (rule 2).
REQUEUE_STATES = frozenset({"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"})

#: States of a job whose batch script has started (a later PENDING is a requeue).
STARTED_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
                            "STAGE_OUT", "RESIZING"})

#: Final Slurm states -> failure kind (``None``: look at the attempt's files).
STATE_KINDS: dict[str, str | None] = {
    "COMPLETED": None,
    "FAILED": "error",
    "OUT_OF_MEMORY": "oom",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "CANCELLED": "cancelled",
    "PREEMPTED": "preempted",
    "REQUEUED": "preempted",
    "REQUEUE_HOLD": "preempted",
    "REQUEUE_FED": "preempted",
    "NODE_FAIL": "lost",
    "BOOT_FAIL": "lost",
    "REVOKED": "lost",
    "SPECIAL_EXIT": "error",
}

# what slurmstepd writes into the job's stderr when jobacct_gather kills it for memory,
# and what the kernel's cgroup OOM killer reports through task/cgroup
_OOM_MARKS = ("exceeded job memory limit", "exceeded memory limit", "oom-kill",
              "out of memory", "oom_kill")


def requeued(state: str, started: bool, restarts: int | None = None) -> bool:
    """Rule 2: True when a job in ``state`` (``started``: it had been seen running;
    ``restarts``: Slurm's restart count, when known) was requeued."""
    if state in REQUEUE_STATES:
        return True
    return state == "PENDING" and (started or bool(restarts))


def classify(info, stop_kind: str | None = None, stderr_tail: str = "", *,
             worker_kind: str | None = None,
             warned: bool = False) -> tuple[str | None, int | None, str]:
    """``(kind, exit_code, message)`` for a job in a final state (``info``, a
    :class:`~steadyrun.executors.slurm.sbatch.JobInfo`): rules 3 to 5.

    ``kind`` is ``None`` for COMPLETED (the caller then reads the attempt's files).
    FAILED is ``error`` unless Slurm killed it with SIGKILL for exceeding its memory
    (``stderr_tail`` shows slurmstepd's note): then ``oom``. ``stop_kind``: the kind the
    executor stopped the job with. ``worker_kind``: the ``kind`` of the worker's error
    record, if any. ``warned``: the job asked for a warning signal (``--signal``)."""
    state = info.state
    kind = STATE_KINDS.get(state, "lost")
    exit_code = info.exit_code
    if info.signal:  # death by signal: as a shell shows it
        exit_code = 128 + info.signal
    lowered = stderr_tail.lower()
    if kind == "error" and info.signal and any(m in lowered for m in _OOM_MARKS):
        kind = "oom"
    said_preempted = worker_kind == "preempted" or (
        info.exit_code == EXIT_PREEMPTED and not info.signal)
    if kind is not None and stop_kind is not None:
        kind = stop_kind  # rule 4
    elif kind == "cancelled":
        if "exceeded job memory limit" in lowered:
            kind = "oom"
        elif "due to time limit" in lowered:
            kind = "timeout"
    elif (kind == "error" and said_preempted) or (
            kind == "timeout" and warned and worker_kind == "preempted"):
        kind = "preempted"
    if kind == "preempted":  # as the worker reports it, whatever ended the job
        exit_code = EXIT_PREEMPTED
    message = f"Slurm job {info.key} ended {state}"
    if info.reason and info.reason not in ("None", "(null)"):
        message += f" ({info.reason})"
    if info.exit_code is not None or info.signal is not None:
        message += f", exit code {info.exit_code or 0}:{info.signal or 0}"
    if kind == "oom" and state != "OUT_OF_MEMORY":
        message += ": it went over its memory limit (--mem)"
    elif kind == "timeout" and state in ("TIMEOUT", "DEADLINE"):
        message += ": it reached its time limit (--time)"
    elif kind == "preempted" and state in ("FAILED", "TIMEOUT"):
        message += ": it was asked to stop early (the --signal warning) and saved"
    return kind, exit_code, message


__all__ = ["ACTIVE_STATES", "REQUEUE_STATES", "STARTED_STATES", "STATE_KINDS", "classify",
           "requeued"]
