"""How an attempt ended, turned into an :class:`~steadyrun.executors.base.Outcome`.

One set of rules for every executor, so an attempt that ends the same way is reported
the same way wherever it ran. The inputs are facts, never messages parsed back:

- ``stopped``: the executor stopped it (``timeout``, ``cancelled``): that kind, whatever
  the exit status looked like;
- ``error``: the error record the worker wrote (``error.json``, or the same dict sent
  over a pipe): ``oom`` when the record says so, else ``error``;
- ``signal``: the worker process was killed by a signal it did not ask for: ``lost``
  (the engine may still call it ``oom`` from memory evidence);
- ``oom_kill``: the kernel's OOM killer ended a process of the attempt (its memory
  cgroup counted the kill): ``oom`` with that evidence as its message, unless the
  attempt succeeded all the same (its payload survived the loss of a child);
- ``exit_code``: :data:`~steadyrun.attempt.worker.EXIT_PREEMPTED`, or an error record
  whose ``kind`` is ``preempted``, is ``preempted`` (the attempt was asked to stop early
  and save: :mod:`steadyrun.attempt.preempt`), for every executor;
  :data:`~steadyrun.attempt.worker.EXIT_CONTROLLER_GONE` without an error
  record is ``lost`` (the worker saw its controller gone and never ran the payload);
  any other non-zero code without a record is ``error`` with that code (``os._exit(n)``
  in a payload); 0 is success, unless the caller knows no result was left.

Light at import (the classes of ``executors.base`` load on first use).
"""

from __future__ import annotations

from steadyrun.attempt.names import EXIT_PREEMPTED
from steadyrun.attempt.worker import EXIT_CONTROLLER_GONE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from steadyrun.executors.base import ErrorInfo, Outcome

_MISSING: Any = object()


def split_status(returncode: int | None) -> tuple[int | None, int | None]:
    """A ``Popen.returncode`` as ``(exit_code, signal)``: ``-9`` is ``(None, 9)``."""
    if returncode is None:
        return None, None
    if returncode < 0:
        return None, -returncode
    return returncode, None


def shell_status(exit_code: int | None, signal: int | None) -> int | None:
    """The status as a shell shows it: ``128 + N`` for a death by signal ``N``."""
    return 128 + signal if signal is not None else exit_code


def signal_name(num: int) -> str:
    """``SIGKILL`` for 9; ``signal 64`` for a number without a name."""
    import signal

    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def outcome_of(attempt_id: str, *, exit_code: int | None = None, signal: int | None = None,
               error: Mapping[str, Any] | ErrorInfo | None = None, stopped: str | None = None,
               detail: str = "", has_result: bool | None = None, value: Any = _MISSING,
               pid: int | None = None, host: str | None = None,
               process: str | None = None, oom_kill: str | None = None) -> Outcome:
    """The :class:`Outcome` of an attempt that ended as described (rules in the module
    docstring). ``exit_code``/``signal``: how its process ended (``signal`` set only for
    a death by signal; both None for an attempt that ran in this process). ``error``:
    the worker's error record. ``stopped``: the kind the executor stopped it with, and
    ``detail`` what to add to the message. ``has_result``: whether ``result.pkl`` is
    there (None: not checked). ``value``: the return value when it came back in memory.
    ``process`` names the process in messages (``"the pool worker (pid 12)"``).
    ``oom_kill``: the evidence of a kernel OOM kill in the attempt's memory cgroup
    (:func:`steadyrun.attempt.memcg.oom_message`), None when there was none."""
    from steadyrun.executors.base import ErrorInfo, Outcome

    status = shell_status(exit_code, signal)
    if stopped is not None:
        message = f"stopped by the executor ({stopped})" + (f": {detail}" if detail else "")
        return Outcome(attempt_id, stopped, exit_code=status, message=message, pid=pid,
                       host=host)
    if oom_kill and (error is not None or signal is not None or exit_code not in (0, None)
                     or has_result is False):
        return _oom_killed(attempt_id, oom_kill, status, error, signal, pid, host)
    if is_preempted(exit_code, error):
        return _preempted(attempt_id, status, error, pid, host)
    if error is not None:
        err = error if isinstance(error, ErrorInfo) else ErrorInfo.from_dict(dict(error))
        if status is None and not isinstance(error, ErrorInfo):
            code = error.get("exit_code")
            status = code if isinstance(code, int) else None
        return Outcome(attempt_id, "oom" if err.oom else "error", exit_code=status, error=err,
                       message=f"{err.type}: {err.message}", pid=pid, host=host)
    if signal is not None:
        name = signal_name(signal)
        message = f"{process} was killed by {name}" if process else f"killed by signal {name}"
        return Outcome(attempt_id, "lost", exit_code=status, message=message, pid=pid,
                       host=host)
    who = process or "the worker"
    if exit_code == EXIT_CONTROLLER_GONE:
        return Outcome(attempt_id, "lost", exit_code=status, pid=pid, host=host,
                       message=f"{who} found its controller gone and did not run the payload")
    if exit_code in (0, None) and has_result is not False:
        if value is _MISSING:
            return Outcome(attempt_id, None, exit_code=exit_code, pid=pid, host=host)
        return Outcome(attempt_id, None, exit_code=exit_code, value=value, has_value=True,
                       pid=pid, host=host)
    from steadyrun.attempt.folder import RESULT_FILE, STDERR_LOG

    if exit_code in (0, None):
        message = f"{who} exited with code 0 but left no {RESULT_FILE}; see {STDERR_LOG}"
    else:
        message = (f"{who} exited with code {exit_code} without reporting an error; "
                   f"see {STDERR_LOG}")
    return Outcome(attempt_id, "error", exit_code=status, pid=pid, host=host, message=message,
                   error=ErrorInfo("WorkerExited", message))


def is_preempted(exit_code: int | None,
                 error: Mapping[str, Any] | ErrorInfo | None = None) -> bool:
    """True when a worker's exit status or error record says the attempt was
    preempted (:data:`~steadyrun.attempt.worker.EXIT_PREEMPTED`)."""
    if exit_code == EXIT_PREEMPTED:
        return True
    if error is None or not hasattr(error, "get"):
        return False
    return error.get("kind") == "preempted" or (
        exit_code is None and error.get("exit_code") == EXIT_PREEMPTED)


def _preempted(attempt_id: str, status: int | None,
               error: Mapping[str, Any] | ErrorInfo | None, pid: int | None,
               host: str | None) -> Outcome:
    from steadyrun.executors.base import ErrorInfo, Outcome

    err = None
    if error is not None:
        err = error if isinstance(error, ErrorInfo) else ErrorInfo.from_dict(dict(error))
    message = err.message if err is not None and err.message else (
        "the attempt was asked to stop early (preempted)")
    return Outcome(attempt_id, "preempted", exit_code=EXIT_PREEMPTED if status is None
                   else status, error=err, message=message, pid=pid, host=host)


def _oom_killed(attempt_id: str, evidence: str, status: int | None,
                error: Mapping[str, Any] | ErrorInfo | None, signal: int | None,
                pid: int | None, host: str | None) -> Outcome:
    """``oom`` for an attempt the kernel's OOM killer ended; what the worker saw of it
    (a Script killed by SIGKILL) follows the evidence."""
    from steadyrun.executors.base import ErrorInfo, Outcome

    seen = ""
    trace = ""
    if error is not None:
        err = error if isinstance(error, ErrorInfo) else ErrorInfo.from_dict(dict(error))
        seen, trace = f"{err.type}: {err.message}", err.traceback
    elif signal is not None:
        seen = f"the worker was killed by {signal_name(signal)}"
    message = evidence + (f"; {seen}" if seen else "")
    return Outcome(attempt_id, "oom", exit_code=status, pid=pid, host=host, message=message,
                   error=ErrorInfo("MemoryLimitExceeded", message, trace, oom=True))
