"""Preemption, time-limit warnings and requeues on Slurm.

``SlurmExecutor(signal="USR1@90", requeue=True)``; as rules:

1. ``signal="[B:]NAME@SECONDS"`` asks Slurm for ``--signal=B:NAME@SECONDS``: the batch
   shell gets ``NAME`` about ``SECONDS`` before the time limit (Slurm checks time limits
   every 30 s or so, so the signal may come up to a minute early). The batch script
   runs the worker in the background and passes the signal on as **SIGUSR1** (for a
   gang, to every node agent, with ``scancel --signal=USR1``): the payload's
   ``run.on_preempt`` callbacks or class ``checkpoint()`` save, the worker exits 76 and
   the attempt ends ``preempted``; the next attempt starts at once, from the checkpoint,
   as a new job with a fresh time limit.
2. With ``Task(checkpoint_on_timeout=True)`` and no ``signal``, the job asks for
   ``B:USR1@G`` by itself, ``G`` being the executor's ``grace_period`` (at least
   :data:`MIN_WARNING` seconds); the task's own ``timeout`` is met the same way
   (``scancel --batch --signal=USR1``).
3. ``requeue=True`` writes ``--requeue`` (else ``--no-requeue``: Slurm never reruns a
   job behind the controller's back) and tells the worker that SIGTERM means
   "preempted" (``$STEADYRUN_PREEMPT_ON_TERM=1``): a requeue or a preemption with
   ``PreemptMode=REQUEUE`` sends SIGTERM, and the payload saves within Slurm's
   ``KillWait``. A cancel from steadyrun still ends ``cancelled``: the controller knows
   it asked.
4. A requeued job is followed under a **new attempt, with a new job**: the executor sees
   the job requeued (:func:`steadyrun.executors.slurm.states.requeued`), cancels it and
   ends the attempt ``preempted`` once the job can no longer run anything; the engine
   then submits the next attempt. One job per attempt keeps each attempt's folder, logs
   and job id one-to-one, keeps exactly-once results and reclaiming simple, and costs
   nothing: a requeued job waits in PENDING behind a BeginTime delay (about two
   minutes) anyway. Should the rerun start first, the batch script sees
   ``$SLURM_RESTART_COUNT`` above 0 and exits 76 at once without running anything.
5. An attempt whose job was requeued while no controller ran is found out when the
   experiment is resumed (:func:`reclaim_requeued`): the job is cancelled, and the
   attempt comes out ``preempted``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from steadyrun.attempt.names import ERROR_FILE, EXIT_PREEMPTED
from steadyrun.errors import ExecutorError

#: The shortest warning asked for by itself under ``checkpoint_on_timeout`` (seconds).
MIN_WARNING = 30
#: Seconds past the grace period after which a job asked to save (SIGUSR1) is cancelled.
SIGNAL_SLACK = 30
#: Reasons a PENDING job may show after a requeue (its restart count is then read).
REQUEUE_REASONS = ("BeginTime", "JobHeldAdmin", "JobHeldUser", "Requeued")
#: Signals a job may ask for before its time limit (``signal=``).
SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "QUIT", "ALRM", "URG", "XCPU", "WINCH")
_SIGNAL_RE = re.compile(r"^(?:B:)?(?:SIG)?([A-Z0-9]+)@([0-9]+)$")


def parse_signal(value: str | None) -> tuple[str, int] | None:
    """``(NAME, SECONDS)`` of ``signal="[B:]NAME@SECONDS"`` (``NAME`` without ``SIG``,
    upper case), None for None. Raises :class:`~steadyrun.errors.ExecutorError` for
    anything else, saying what would do."""
    if value is None:
        return None
    found = _SIGNAL_RE.match(str(value).strip().upper()) if isinstance(value, str) else None
    if found is None or int(found.group(2)) <= 0 or found.group(1) not in SIGNALS:
        raise ExecutorError(
            f"SlurmExecutor(signal={value!r}): give 'NAME@SECONDS' (or 'B:NAME@SECONDS'), "
            f"NAME one of {', '.join(SIGNALS)} and SECONDS > 0, e.g. signal='USR1@90': "
            "the job gets the signal that long before its time limit")
    return found.group(1), int(found.group(2))


def check_grace(value: object) -> float:
    """``grace_period`` as seconds; raises :class:`~steadyrun.errors.ExecutorError` for
    anything but a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ExecutorError(f"SlurmExecutor(grace_period={value!r}): give seconds >= 0, "
                            "the time a payload gets to save once asked to stop")
    return float(value)


def warning_for(parsed: tuple[str, int] | None, checkpoint_on_timeout: bool,
                grace_period: float) -> tuple[str, int] | None:
    """The warning a job asks for (rules 1 and 2), or None."""
    if parsed is not None:
        return parsed
    if checkpoint_on_timeout:
        return "USR1", max(MIN_WARNING, math.ceil(grace_period))
    return None


def worker_grace(warning: tuple[str, int] | None, grace_period: float) -> float:
    """The worker's grace period: the executor's, but never past the time limit the
    warning announces."""
    return grace_period if warning is None else min(grace_period, float(warning[1]))


def restart_guard() -> list[str]:
    """Batch script lines: a rerun of a requeued job exits 76 at once (rule 4)."""
    return ['if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then',
            '    echo "steadyrun: Slurm requeued job ${SLURM_JOB_ID:-}; its attempt ended'
            ' preempted and the next attempt runs as a new job" >&2',
            f"    exit {EXIT_PREEMPTED}",
            "fi"]


def forwarding_lines(command: str, name: str, gang: bool) -> list[str]:
    """Batch script lines that run ``command`` in the background and pass the signal
    ``name`` on as SIGUSR1 (rule 1): bash runs a trap only between commands, so the
    shell waits in a loop. SIGTERM (a cancel, a requeue) reaches every process of the
    job from Slurm itself; the shell only keeps waiting, so the worker can save."""
    target = ('scancel --signal=USR1 "${SLURM_JOB_ID}" 2>/dev/null' if gang
              else 'kill -USR1 "$STEADYRUN_CHILD" 2>/dev/null')
    lines = [f"{command} &",
             "STEADYRUN_CHILD=$!",
             f"trap '{target}' {name}"]
    if name != "TERM":
        lines.append("trap ':' TERM")
    return lines + ["while :; do",
                    '    wait "$STEADYRUN_CHILD"; STEADYRUN_STATUS=$?',
                    '    kill -0 "$STEADYRUN_CHILD" 2>/dev/null || break',
                    "done",
                    'exit "$STEADYRUN_STATUS"']


def find_requeued(tunnel: Any, attempts: Iterable[Any],
                  queue: Mapping[str, Any]) -> list[Any]:
    """The attempts whose jobs Slurm requeued (rule 4), by what ``squeue`` said
    (``queue``); a PENDING job never seen running whose reason a requeue gives costs
    one ``scontrol`` call for all of them. Each found attempt notes why
    (``requeued``)."""
    from steadyrun.executors.slurm import sbatch as sb
    from steadyrun.executors.slurm import states

    found, unsure = [], []
    for att in attempts:
        info = queue.get(att.key)
        if info is None or att.requeued:
            continue
        if states.requeued(info.state, att.started):
            att.requeued = f"Slurm requeued job {att.key} ({info.state}"
            found.append(att)
        elif info.state == "PENDING" and info.reason in REQUEUE_REASONS:
            unsure.append(att)
    if unsure:
        ids = sb.split_keys(a.key for a in unsure)
        res = tunnel.run(["scontrol", "-o", "show", "job"] + (ids if len(ids) == 1 else []))
        jobs = sb.parse_scontrol(res.stdout) if res.returncode == 0 else {}
        for att in unsure:
            job = jobs.get(att.key)
            if job is not None and states.requeued(job.state, False, job.restarts):
                att.requeued = f"Slurm requeued job {att.key} (restarts {job.restarts}"
                found.append(att)
    for att in found:
        att.requeued += ": preempted or `scontrol requeue`)"
    return found


def due_for_cancel(tunnel: Any, attempts: Iterable[Any], queue: Mapping[str, Any],
                   grace_period: float) -> list[Any]:
    """The attempts whose jobs the executor must now cancel: those Slurm requeued (rule
    4; their attempts end ``preempted``) and those still running ``SIGNAL_SLACK``
    seconds past the grace period after SIGUSR1."""
    attempts = list(attempts)
    due = []
    for att in find_requeued(tunnel, attempts, queue):
        if att.stop_kind is None:
            att.stop_kind = "preempted"
            due.append(att)
    late = time.monotonic() - grace_period - SIGNAL_SLACK
    for att in attempts:
        if att.signalled_at is not None and att.signalled_at < late:
            att.signalled_at = None
            due.append(att)
    return due


def record_preempted(attempt_dir: str | Path, message: str) -> bool:
    """Write the attempt's error record as ``preempted`` unless the worker wrote one;
    True when the folder now says ``preempted``."""
    path = Path(attempt_dir) / ERROR_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        return data.get("kind") == "preempted"
    from steadyrun.attempt import folder

    record = {"type": "Preempted", "message": message, "traceback": "", "oom": False,
              "kind": "preempted", "exit_code": EXIT_PREEMPTED}
    try:
        folder.atomic_write(path, json.dumps(record, indent=1).encode())
    except OSError:
        return False
    return True


def reclaim_recorded(attempt_dir: str | Path) -> str | None:
    """Rule 5: when the job the attempt folder records (``slurm.json``) was requeued,
    cancel it, wait until it can no longer run anything, and record the attempt as
    ``preempted``; returns what was done, or None when the job was not requeued (or
    the folder records no job)."""
    from steadyrun.executors.slurm.records import INFO_FILE
    from steadyrun.executors.slurm.tunnel import tunnel_from_config

    try:
        info = json.loads((Path(attempt_dir) / INFO_FILE).read_text())
        key = str(info["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    tunnel = tunnel_from_config(info.get("tunnel"))
    try:
        return _reclaim_requeued(attempt_dir, key, tunnel)
    except ExecutorError:
        return None
    finally:
        tunnel.close()


def _reclaim_requeued(attempt_dir: str | Path, key: str, tunnel: Any) -> str | None:
    from steadyrun.executors.slurm import sbatch as sb
    from steadyrun.executors.slurm import states

    res = tunnel.run(["scontrol", "-o", "show", "job", key])
    job = sb.parse_scontrol(res.stdout).get(key) if res.returncode == 0 else None
    if job is None or not (job.restarts or states.requeued(job.state, False)):
        return None  # a rerun of a requeued job (restarts > 0) never runs the payload
    deadline = time.monotonic() + 60
    while True:
        tunnel.run(["scancel", key])
        res = tunnel.run(["scontrol", "-o", "show", "job", key])
        job = sb.parse_scontrol(res.stdout).get(key) if res.returncode == 0 else None
        if job is None or job.state not in states.ACTIVE_STATES or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    record_preempted(attempt_dir, f"Slurm requeued job {key} while no controller ran; "
                     "the next attempt resumes from the task's checkpoint")
    return f"Slurm had requeued job {key}: cancelled it; the attempt was preempted"


__all__ = ["MIN_WARNING", "REQUEUE_REASONS", "SIGNALS", "SIGNAL_SLACK", "check_grace",
           "due_for_cancel", "find_requeued", "forwarding_lines", "parse_signal",
           "reclaim_recorded", "record_preempted", "restart_guard", "warning_for",
           "worker_grace"]
