"""Preemption inside an attempt: the payload's side, and the worker's.

A backend that must take an attempt's machine away (a cluster preempting or requeueing
a job, a time limit with ``checkpoint_on_timeout=True``) asks the attempt to stop early
and save: it sends **SIGUSR1** to the worker process (a gang's node agent forwards it
to every rank). A backend that can only send SIGTERM says that SIGTERM means the same
by setting ``$STEADYRUN_PREEMPT_ON_TERM=1`` for the worker, or by writing the file
``preempt`` into the attempt folder before it signals.

What the worker then does, within its grace period (``$STEADYRUN_STOP_GRACE``, the
executor's ``grace_period``):

1. :func:`should_stop` turns true;
2. the callbacks given to :func:`on_preempt` run, in the order given, in the worker's
   main thread (the payload's loop pauses while they run); one that raises is reported
   on stderr and the others still run;
3. a class payload with a ``checkpoint(self, *args, **kwargs)`` method (submitit's
   ``Checkpointable`` shape) is asked for the payload to run next; what it returns is
   saved (cloudpickle, owner-only) as ``checkpoint.pkl`` in the task's folder
   (:func:`steadyrun.task_dir`), and the task's next attempt runs it instead of the
   original payload (in a gang, rank 0 saves);
4. when callbacks or a ``checkpoint()`` ran, at once; otherwise (a loop that polls
   :func:`should_stop`) when the payload returns or raises, or when the grace period
   is over, whatever the payload is doing: the worker ends the payload's processes
   and exits with
   :data:`EXIT_PREEMPTED`; ``error.json`` says ``{"kind": "preempted"}``. The attempt is
   ``preempted`` whatever the payload did after the request: its return value is
   dropped. The engine retries a preempted attempt at once, without counting it
   against ``Retry.max_attempts`` (``Retry.max_preemptions`` bounds it).

A saved ``checkpoint.pkl`` is loaded only when it is a regular file owned by this user
that nobody else may write, in a folder that only this user may use (what steadyrun
makes); anything else is reported and ignored (the original payload runs). It is
removed when an attempt succeeds.

Where it applies: worker processes (``LocalExecutor`` with the ``subprocess`` strategy,
its gangs, and the cluster backends that run the same worker). The in-process
strategies (``thread``, ``sequential``) and the ``process`` pool have no signal to give:
:func:`attempt` and :func:`should_stop` answer from the environment there (outside a
worker process :func:`attempt` raises :class:`~steadyrun.errors.NotInAttempt`), and
``checkpoint_on_timeout=True`` is refused when the experiment starts.

Light at import (standard library only): the worker imports it for every attempt.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from steadyrun.attempt.names import (
    ATTEMPT_NUMBER_ENV,
    CHECKPOINT_FILE,
    ERROR_FILE,
    EXIT_PREEMPTED,
    PREEMPT_MARKER,
    PREEMPT_ON_TERM_ENV,
    PREEMPTIONS_ENV,
    PREVIOUS_KIND_ENV,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[[], Any])

__all__ = ["EXIT_PREEMPTED", "AttemptInfo", "attempt", "on_preempt", "should_stop"]


class AttemptInfo:
    """Which attempt of its task is running: ``number`` (1 for the first), the kind the
    previous attempt ended with (``previous_kind``: ``"preempted"``, ``"error"``, ...;
    None for a first attempt) and how many attempts were ``preempted`` before this
    one. Read-only."""

    __slots__ = ("number", "previous_kind", "preemptions")

    number: int
    previous_kind: str | None
    preemptions: int

    def __init__(self, number: int, previous_kind: str | None = None,
                 preemptions: int = 0) -> None:
        object.__setattr__(self, "number", number)
        object.__setattr__(self, "previous_kind", previous_kind)
        object.__setattr__(self, "preemptions", preemptions)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"AttemptInfo is read-only: cannot set {name!r}")

    @property
    def preempted(self) -> bool:
        """True when the previous attempt was preempted (its checkpoint is the place to
        start from)."""
        return self.previous_kind == "preempted"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttemptInfo) and (
            (self.number, self.previous_kind, self.preemptions)
            == (other.number, other.previous_kind, other.preemptions))

    def __hash__(self) -> int:
        return hash((self.number, self.previous_kind, self.preemptions))

    def __repr__(self) -> str:
        return (f"AttemptInfo(number={self.number}, previous_kind={self.previous_kind!r}, "
                f"preemptions={self.preemptions})")


def attempt() -> AttemptInfo:
    """The running attempt: its number, and whether the previous attempt was preempted
    (``run.attempt().preempted``), so a payload knows to load its checkpoint.

    Raises :class:`~steadyrun.errors.NotInAttempt` outside a worker process of an
    attempt (the in-process strategies do not set ``$STEADYRUN_ATTEMPT``)."""
    text = os.environ.get(ATTEMPT_NUMBER_ENV, "")
    if not text.isdigit():
        from steadyrun.errors import NotInAttempt

        raise NotInAttempt(
            "run.attempt() is only known inside an attempt's worker process "
            f"(${ATTEMPT_NUMBER_ENV} is not set here; the thread and sequential "
            "strategies run payloads in the controller)")
    count = os.environ.get(PREEMPTIONS_ENV, "")
    return AttemptInfo(int(text), os.environ.get(PREVIOUS_KIND_ENV) or None,
                       int(count) if count.isdigit() else 0)


def on_preempt(callback: F) -> F:
    """Run ``callback()`` (no arguments) when this attempt is asked to stop early, within
    the grace period, before the worker ends the payload: the place to save a
    checkpoint into :func:`steadyrun.task_dir`. Returns ``callback``, so it can be used
    as a decorator. Callbacks run in the order given, in the worker's main thread;
    one that raises is reported on stderr. Registered for the current attempt only."""
    if not callable(callback):
        raise TypeError(f"run.on_preempt() takes a callable, got {type(callback).__name__}")
    _callbacks.append(callback)
    return callback


def should_stop() -> bool:
    """True once this attempt has been asked to stop early (preempted, or at its time
    limit with ``checkpoint_on_timeout=True``): a loop that polls it saves its state
    and returns; the attempt then ends as ``preempted`` and the next one resumes."""
    return _stop.is_set()


# --- the worker's side ------------------------------------------------------------------

_stop = threading.Event()
_callbacks: list[Callable[[], Any]] = []
_lock = threading.RLock()  # a second signal may arrive while the first is handled
_where: dict[str, Any] = {}  # result_dir, attempt_dir, payload, timer, save


def install(result_dir: str, attempt_dir: str | None = None, *, save: bool = True) -> None:
    """Make SIGUSR1 a preemption request for this process (a worker, or a rank whose
    folder is ``result_dir`` inside ``attempt_dir``). ``save``: this process saves a
    class payload's checkpoint (a gang's rank 0)."""
    import signal

    _where.update(result_dir=result_dir, attempt_dir=attempt_dir or result_dir, save=save)
    signal.signal(signal.SIGUSR1, _on_signal)


def term_is_preemption(attempt_dir: str | None = None) -> bool:
    """True when a SIGTERM to this worker (or the node agent of ``attempt_dir``) means
    "preempted" (see the module docs)."""
    if os.environ.get(PREEMPT_ON_TERM_ENV) == "1":
        return True
    folder = attempt_dir or _where.get("attempt_dir")
    return isinstance(folder, str) and os.path.exists(os.path.join(folder, PREEMPT_MARKER))


def request() -> None:
    """Act on a preemption request (once): flag, forward, callbacks, checkpoint, and the
    grace period's timer."""
    with _lock:
        if _stop.is_set():
            return
        _stop.set()
    _forward_to_scripts()
    timer = threading.Timer(_grace(), _expire)
    timer.daemon = True
    _where["timer"] = timer
    timer.start()
    for callback in list(_callbacks):
        try:
            callback()
        except BaseException as e:  # noqa: BLE001 - the others still get their chance
            _say(f"an on_preempt callback failed: {type(e).__name__}: {e}")
    saved = _save_checkpoint(_where.get("payload"))
    if (_callbacks or saved) and _where.get("result_dir"):  # it saved: end it now
        _expire("the attempt was asked to stop early (preempted); it saved and stopped")


def resume(payload: Any, attempt_dir: str) -> Any:
    """The payload to run: the one a class payload's ``checkpoint()`` saved in the task
    folder when there is a usable one, else ``payload``. Remembers it for a later
    checkpoint."""
    path = _checkpoint_path(attempt_dir)
    if path is not None and os.path.lexists(path):
        problem = _unsafe(path)
        if problem:
            _say(f"ignoring {path}: {problem}; the task's original payload runs")
        else:
            import pickle

            try:
                with open(path, "rb") as f:
                    payload = pickle.load(f)
            except Exception as e:  # noqa: BLE001 - the original payload still runs
                _say(f"could not load {path} ({type(e).__name__}: {e}); "
                     "the task's original payload runs")
    _where["payload"] = payload
    _where["checkpoint"] = path
    return payload


def settle(result: Any) -> Any:
    """``result`` (an :class:`~steadyrun.attempt.worker.AttemptResult`) as the worker
    records it: ``preempted`` when a request came, whatever the payload did after it;
    on success the saved checkpoint is removed (the task is done). The attempt's
    callbacks are forgotten (a pool or thread runs the next attempt in this process)."""
    _callbacks.clear()
    if not _stop.is_set():
        if result.ok and _where.get("checkpoint") and _where.get("save"):
            with contextlib.suppress(OSError):
                os.unlink(_where["checkpoint"])
        return result
    timer = _where.get("timer")
    if timer is not None:
        timer.cancel()
    from steadyrun.attempt.worker import AttemptResult

    return AttemptResult("preempted", None, error=_record(
        "the attempt was asked to stop early (preempted) and stopped"),
        exit_code=EXIT_PREEMPTED)


# --- internals --------------------------------------------------------------------------


def _on_signal(signum: int, frame: Any) -> None:
    request()


def _record(message: str) -> dict[str, Any]:
    return {"type": "Preempted", "message": message, "traceback": "", "oom": False,
            "kind": "preempted", "exit_code": EXIT_PREEMPTED}


def _expire(message: str = "") -> None:
    """The payload saved, or the grace period is over and it still runs: record, end
    its processes, exit with :data:`EXIT_PREEMPTED`."""
    import json

    from steadyrun.attempt import fsio, logcap, worker

    try:
        folder = _where.get("result_dir")
        if folder:
            record = _record(message or "the attempt was asked to stop early (preempted) "
                             f"and was ended after its grace period of {_grace():g}s")
            fsio.atomic_write(os.path.join(folder, ERROR_FILE),
                                 json.dumps(record, indent=1).encode("utf-8"))
        worker.end_leftovers(min(_grace(), 1.0))
        logcap.finish_active(logcap.DRAIN_WAIT)
    finally:
        os._exit(EXIT_PREEMPTED)


def _forward_to_scripts() -> None:
    """SIGUSR1 to a Script payload's process, so it can save too."""
    import signal

    worker = sys.modules.get("steadyrun.attempt.worker")
    for proc in list(getattr(worker, "_RUNNING_SCRIPTS", {}).values()):
        with contextlib.suppress(OSError, ValueError):
            proc.send_signal(signal.SIGUSR1)


def _save_checkpoint(payload: Any) -> bool:
    """Ask a class payload for the payload to run next and save it in the task folder;
    True when the payload is checkpointable (whichever rank saves)."""
    method = getattr(payload, "checkpoint", None)
    path = _where.get("checkpoint")
    if method is None or not callable(method) or isinstance(payload, type) or not path:
        return False
    if not _where.get("save", True):
        return True
    try:
        following = method()
        if following is None:
            return True
        import cloudpickle

        from steadyrun.attempt import fsio

        fsio.atomic_write(path, cloudpickle.dumps(following))
    except BaseException as e:  # noqa: BLE001 - the attempt still ends as preempted
        _say(f"{type(payload).__name__}.checkpoint() failed: {type(e).__name__}: {e}")
    return True


def _checkpoint_path(attempt_dir: str) -> str | None:
    from steadyrun.attempt.context import task_dir_for

    try:
        return os.path.join(task_dir_for(attempt_dir), CHECKPOINT_FILE)
    except OSError:
        return None


def _unsafe(path: str) -> str:
    """Why the file at ``path`` must not be unpickled ("" when it may be)."""
    import stat

    uid = os.geteuid()
    try:
        st = os.lstat(path)
        parent = os.stat(os.path.dirname(path))
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != uid or parent.st_uid != uid:
        return "it or its folder belongs to another user"
    if st.st_mode & 0o022 or parent.st_mode & 0o077:
        return "it or its folder may be changed by other users (expected owner-only)"
    return ""


def _grace() -> float:
    from steadyrun.attempt.worker import _stop_grace

    return _stop_grace()


def _say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"steadyrun: {message}", file=sys.stderr, flush=True)
