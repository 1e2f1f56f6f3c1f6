"""Run one attempt anywhere: in this thread, in a pool process, or as
``python -m steadyrun.attempt.worker ATTEMPT_DIR``.

The worker builds the payload, runs it and leaves in the attempt folder:

- ``stdout.log`` / ``stderr.log``: what the attempt printed (a missing file means it
  printed nothing; in-process runs create them only on the first write), each capped:
  past ``max_log_bytes`` only its head and its tail are kept (:mod:`steadyrun.attempt.logcap`);
- ``result.pkl``: the return value, pickled (cloudpickle where plain pickle cannot), on
  success (a small one stays in memory where the folder is made lazily: ``lazy_dir``);
- ``error.json``: ``{type, message, traceback, oom, exit_code}`` on failure.

Both are written atomically (a temporary file, then ``os.replace``). Exit codes of
``python -m steadyrun.attempt.worker``: 0 success, 1 the payload raised (a failed
:class:`~steadyrun.Script` exits with its own code), 3 out of memory, 2 the attempt
folder or its payload file is missing, 75 its controller was
gone before the payload started (it did not run), 76 the attempt was preempted (SIGUSR1:
see :mod:`steadyrun.attempt.preempt`); stopped with SIGTERM, it ends the payload's
processes first, then dies of the signal.

A worker process (this entry point, and each attempt of a ``--pool`` worker) writes
``identity.json`` before the payload starts, so a controller that restarts after a crash
can find it and kill it. When the executor named its controller (``STEADYRUN_CONTROLLER_PID``)
and that is no longer the worker's parent, the payload does not run. The worker keeps
every process its payload starts as a descendant (a child subreaper on Linux, so
``setsid`` and double-forked daemons too) and ends what is left of them when the payload
ends or when it is stopped: an attempt leaves no orphans. A pool worker also ends with
its controller (a parent-death signal, and a thread that watches its parent).

This module imports little at start (no psutil, no YAML unless the payload is YAML; file
names come from :mod:`steadyrun.attempt.names`, which holds constants only): it is
started once per attempt by the subprocess strategy.
"""

from __future__ import annotations

import os
import sys
import threading

from steadyrun.attempt import logcap, preempt  # standard library only
from steadyrun.attempt.fsio import SMALL_RESULT_BYTES, atomic_write, join, make_dir
from steadyrun.attempt.names import (  # constants only: free to import
    ATTEMPT_ID_ENV,
    CONTROLLER_PID_ENV,
    ERROR_FILE,
    IDENTITY_FILE,
    PAYLOAD_PKL,
    PAYLOAD_YAML,
    RESULT_FILE,
    STDERR_LOG,
    STDOUT_LOG,
)

TYPE_CHECKING = False  # typing costs ~10 ms to import; this module starts every attempt
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_ATTEMPT_DIR = 2
EXIT_OOM = 3
#: The controller died before the payload started; the payload did not run (``lost``).
EXIT_CONTROLLER_GONE = 75
#: Asked to stop early and save (SIGUSR1): the attempt was ``preempted``.
EXIT_PREEMPTED = preempt.EXIT_PREEMPTED

#: Seconds a worker gives its payload's processes between SIGTERM and SIGKILL when it is
#: stopped (the executor's grace period; default 5).
GRACE_ENV = "STEADYRUN_STOP_GRACE"
#: Seconds given to what a payload left running after it ended normally.
LEFTOVER_GRACE = 1.0

#: Environment variable through which a launcher hands a Script's env values (JSON) to
#: a worker process, so that they never sit in a file (the payload keeps names only).
HANDED_ENV = "STEADYRUN_SCRIPT_ENV"

#: Environment variable through which an executor passes its ``sys.path`` to the worker,
#: so that modules importable in the controller are importable in the attempt.
PARENT_PATH_ENV = "STEADYRUN_PARENT_PATH"

# "can't allocate memory": torch's CPU allocator failing to allocate
_OOM_TEXT = ("cuda out of memory", "out of memory", "can't allocate memory",
             "cannot allocate memory")
# values that plain pickle writes faithfully (no class defined in a __main__)
_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes)


class AttemptResult:
    """How :func:`execute` ended.

    ``kind`` is ``None`` on success, else ``"error"`` or ``"oom"``. ``value`` is the
    return value (``None`` for scripts); ``value_bytes`` its pickle (what ``result.pkl``
    holds, or with ``kept`` what the caller stores instead). ``error`` is the dict
    written to ``error.json``. ``exit_code`` is set only when the attempt chose one (a
    script's exit status, ``sys.exit(n)``).
    """

    __slots__ = ("kind", "value", "value_bytes", "error", "exit_code", "kept")

    def __init__(self, kind: str | None = None, value: Any = None,
                 value_bytes: bytes | None = None, error: dict[str, Any] | None = None,
                 exit_code: int | None = None) -> None:
        self.kind = kind
        self.value = value
        self.value_bytes = value_bytes
        self.error = error
        self.exit_code = exit_code
        self.kept = False  # value_bytes is not in result.pkl: the caller keeps it

    @property
    def ok(self) -> bool:
        return self.kind is None

    @property
    def process_exit_code(self) -> int:
        """The exit status ``python -m steadyrun.attempt.worker`` uses for this result."""
        if self.kind is None:
            return EXIT_OK
        if self.exit_code is not None:
            return self.exit_code
        return EXIT_OOM if self.kind == "oom" else EXIT_FAILED

    def to_outcome(self, attempt_id: str, *, with_value: bool = True) -> Any:
        """The :class:`~steadyrun.executors.base.Outcome` for this result (through
        :func:`steadyrun.attempt.outcome.outcome_of`, like every executor's)."""
        from steadyrun.attempt.outcome import outcome_of

        if self.kind is None:
            if with_value:
                done = outcome_of(attempt_id, exit_code=self.exit_code, value=self.value)
                if self.kept:
                    done.result_bytes = self.value_bytes
                return done
            return outcome_of(attempt_id, exit_code=self.exit_code)
        return outcome_of(attempt_id, exit_code=self.exit_code, error=self.error or {
            "type": "Error", "message": self.kind, "oom": self.kind == "oom"})


# --- payload files ----------------------------------------------------------------------


def write_payload(payload: Any, attempt_dir: str | os.PathLike[str], *,
                  prefer: str = "yaml") -> str:
    """Write ``payload`` into ``attempt_dir`` for a worker process; return the file name.

    YAML (``payload.yaml``) when :func:`steadyrun.config.to_yaml` can write it, so the
    attempt can be read and rerun by a person, and read by another Python version;
    otherwise a cloudpickle (``payload.pkl``: lambdas, closures, objects without an
    import path). ``prefer="pickle"`` writes the cloudpickle straight away: the worker
    then starts about 20 ms sooner (it need not import YAML), fine when it runs the same
    interpreter as the caller. Raises what cloudpickle raises (``pickle.PicklingError``,
    ``TypeError``) when neither works.
    """
    from steadyrun.errors import SerializationError

    directory = os.fspath(attempt_dir)
    config: Any = None
    if prefer != "pickle":
        try:
            from steadyrun import config
        except ModuleNotFoundError as e:  # config.py absent in a partial install
            if e.name != "steadyrun.config":
                raise
    if config is not None:
        try:
            text = config.to_yaml(payload)
        except SerializationError:
            pass
        else:
            atomic_write(os.path.join(directory, PAYLOAD_YAML), text.encode("utf-8"))
            return PAYLOAD_YAML
    import cloudpickle

    atomic_write(os.path.join(directory, PAYLOAD_PKL), cloudpickle.dumps(payload))
    return PAYLOAD_PKL


def read_payload(attempt_dir: str | os.PathLike[str]) -> Any:
    """The payload :func:`write_payload` left in ``attempt_dir``.

    Raises :class:`FileNotFoundError` when there is none; errors of unpickling or of
    reading YAML (a module that cannot be imported here) pass through.
    """
    directory = os.fspath(attempt_dir)
    yaml_path = os.path.join(directory, PAYLOAD_YAML)
    if os.path.exists(yaml_path):
        from steadyrun import config

        with open(yaml_path, encoding="utf-8") as f:
            return config.from_yaml(f.read(), source=yaml_path)
    pkl_path = os.path.join(directory, PAYLOAD_PKL)
    if os.path.exists(pkl_path):
        import pickle  # cloudpickle's output loads with plain pickle (it imports what it needs)

        with open(pkl_path, "rb") as f:
            return pickle.load(f)
    raise FileNotFoundError(
        f"no payload in {directory}: expected {PAYLOAD_YAML} or {PAYLOAD_PKL} "
        "(written by steadyrun.attempt.worker.write_payload)")


# --- running ----------------------------------------------------------------------------


def execute(payload: Any, attempt_dir: str | os.PathLike[str], *,
            in_process_streams: bool = False, attempt_id: str | None = None,
            max_log_bytes: int | None = logcap.FROM_ENV,
            lazy_dir: bool = False) -> AttemptResult:
    """Run ``payload`` once and record how it ended in ``attempt_dir``.

    A ``Config`` is built (its value is the result), a ``Partial`` is built then called
    with no arguments, a plain callable is called, a ``Script`` runs as a child process
    (its ``env`` added to this environment; value ``None``; a non-zero exit is a failure
    with that exit code). Never raises for the payload's own failures: they come back as
    ``kind="error"`` or ``"oom"`` and in ``error.json``.

    Output: with ``in_process_streams=False`` the process's file descriptors 1 and 2 are
    pointed at the log files for the duration (child processes' output lands there too);
    use it only where this process runs one attempt at a time. With ``True`` (thread and
    sequential strategies) writes to ``sys.stdout``/``sys.stderr`` *from this thread* go to
    the log files; output of other threads, of C code and of child processes other than
    a Script's does not.

    ``attempt_id``: a Script's process gets ``STEADYRUN_ATTEMPT_ID=<attempt_id>`` in its
    environment, so what it leaves running can be found later
    (:func:`steadyrun.attempt.reaper.end_tagged`).

    ``max_log_bytes`` caps each log (head and tail kept, a line says what was dropped;
    ``None``: no limit); by default ``$STEADYRUN_MAX_LOG_BYTES``, else 256 MiB.

    ``lazy_dir``: ``attempt_dir`` is made only for something to keep (a log line, an
    error, a value pickled larger than :data:`~steadyrun.attempt.fsio.SMALL_RESULT_BYTES`;
    a smaller one stays in ``value_bytes``, ``kept``, for the caller to store).
    """
    directory = os.fspath(attempt_dir)
    prev = getattr(_local, "attempt_id", None)
    _local.attempt_id = attempt_id
    try:
        return _execute(payload, directory, "thread" if in_process_streams else "fd",
                        max_log_bytes, lazy_dir)
    finally:
        _local.attempt_id = prev


def main(argv: list[str] | None = None) -> int:
    """``python -m steadyrun.attempt.worker ATTEMPT_DIR``: run the attempt there; return the exit
    status (see the module docstring)."""
    args = sys.argv[1:] if argv is None else list(argv)
    from steadyrun.attempt import guard

    controller = guard.take_controller_pid(CONTROLLER_PID_ENV)
    if len(args) == 2 and args[0] == "--pool":  # a process pool's worker (process strategy)
        from steadyrun.attempt.pool import pool_main

        return pool_main(int(args[1]), controller)
    if len(args) != 1:
        print("usage: python -m steadyrun.attempt.worker ATTEMPT_DIR", file=sys.stderr)
        return EXIT_BAD_ATTEMPT_DIR
    directory = args[0]
    if not os.path.isdir(directory):
        print(f"steadyrun.attempt.worker: attempt folder {directory!r} does not exist",
              file=sys.stderr)
        return EXIT_BAD_ATTEMPT_DIR
    guard.keep_descendants()
    _take_handed_env()
    attempt_id = os.environ.get(ATTEMPT_ID_ENV) or os.path.basename(directory.rstrip(os.sep))
    try:
        guard.record_identity(directory, attempt_id, IDENTITY_FILE, controller_pid=controller)
    except OSError as e:  # the payload may still run; only a later recovery is blind
        print(f"steadyrun.attempt.worker: could not write {IDENTITY_FILE}: {e}",
              file=sys.stderr)
    if guard.controller_gone(controller):
        return EXIT_CONTROLLER_GONE  # recovery may already have called this attempt lost
    _install_stop_handler()
    preempt.install(directory)  # SIGUSR1: stop early and save
    capture = logcap.capture_fds(directory)  # fds 1 and 2 into the capped logs
    from steadyrun.attempt.streams import line_buffered

    line_buffered()  # so a foreground run and `logs --follow` show each line at once
    _extend_sys_path()
    try:
        try:
            payload = read_payload(directory)
        except FileNotFoundError as e:
            print(f"steadyrun.attempt.worker: {e}", file=sys.stderr)
            result = _failure(e, exit_code=EXIT_BAD_ATTEMPT_DIR)
            _write_error(directory, result)
            return EXIT_BAD_ATTEMPT_DIR
        except BaseException as e:  # a payload this process cannot load is its error
            result = _failure(e)
            _write_error(directory, result)
            _print_traceback(result)
            return result.process_exit_code
        result = _execute(preempt.resume(payload, directory), directory, "none")
        if not result.ok:
            _print_traceback(result)
        end_leftovers(LEFTOVER_GRACE)
        return result.process_exit_code
    finally:
        capture.finish(LEFTOVER_GRACE)


def end_leftovers(grace: float) -> list[int]:
    """End what the payload left running in this worker's process tree (SIGTERM,
    ``grace`` seconds, SIGKILL) and reap it; return the pids ended. Costs one system
    call when nothing is left. Only for a process whose children are all the
    attempt's (a worker, never a controller)."""
    from steadyrun.attempt import guard

    if not guard.has_children():
        return []
    from steadyrun.attempt.reaper import end_descendants

    return end_descendants(grace)


def _stop_grace() -> float:
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV) or 5.0))
    except ValueError:
        return 5.0


def _on_stop(signum: int, frame: Any) -> None:
    """SIGTERM (a timeout, a cancel, the controller's death): end the whole tree, then
    die of that signal (so the exit reads as it would have without this handler), at
    once, whatever the payload was in the middle of."""
    import signal

    if preempt.term_is_preemption() and not preempt.should_stop():  # the first one only
        return preempt.request()  # the worker ends within the grace period
    try:
        end_leftovers(_stop_grace())
        logcap.finish_active(logcap.DRAIN_WAIT)  # what the payload printed last, kept
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)


def _install_stop_handler() -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_stop)


def running_script_pid(attempt_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the Script process an in-process attempt is running, if any (so that a
    thread executor can stop a script although it cannot stop the thread)."""
    proc = _RUNNING_SCRIPTS.get(os.fspath(attempt_dir))
    return None if proc is None else proc.pid


# --- internals --------------------------------------------------------------------------

_RUNNING_SCRIPTS: dict[str, Any] = {}
_HANDED: str | None = None  # a Script's env values (JSON), handed over by the launcher
_local = threading.local()


def _execute(payload: Any, directory: str, streams: str,
             cap: int | None = logcap.FROM_ENV, lazy: bool = False) -> AttemptResult:
    """``streams``: ``"fd"`` (dup2 fds 1/2 for the duration), ``"thread"`` (per-thread
    ``sys.stdout`` routing) or ``"none"`` (the caller already redirected); ``cap``: of
    each log (:data:`~steadyrun.attempt.logcap.FROM_ENV`: from the environment)."""
    from steadyrun.attempt import context  # task folder, thread counts

    entered = context.enter(directory, process_wide=streams != "thread", lazy=lazy)
    try:
        return _execute_in(payload, directory, streams,
                           logcap.cap_from_env() if cap == logcap.FROM_ENV else cap, lazy)
    except Exception as e:  # the attempt folder is unusable (removed, full disk)
        result = _failure(e)
        result.error["message"] = (  # type: ignore[index]
            f"the worker could not use the attempt folder {directory}: {e}")
        return result
    finally:
        context.leave(entered)


def _execute_in(payload: Any, directory: str, streams: str, cap: int | None,
                lazy: bool = False) -> AttemptResult:
    if streams == "thread":
        from steadyrun.attempt.streams import LazyLog, ensure_router

        ensure_router()
        out, err = LazyLog(join(directory, STDOUT_LOG), cap, lazy), LazyLog(
            join(directory, STDERR_LOG), cap, lazy)
        prev = (getattr(_local, "stdout", None), getattr(_local, "stderr", None))
        _local.stdout, _local.stderr = out, err
        try:
            result = _run(payload, directory, (out, err))
        finally:
            _local.stdout, _local.stderr = prev
            out.close()
            err.close()
    elif streams == "fd":
        capture = logcap.capture_fds(directory, cap, keep=True)
        from steadyrun.attempt.streams import line_buffered, restore_streams, streams_on_fds

        swapped = streams_on_fds()
        line_buffered()
        try:
            result = _run(payload, directory, None)
        finally:
            restore_streams(swapped)
            capture.finish(logcap.DRAIN_WAIT)
    else:
        result = _run(payload, directory, None)
    result = preempt.settle(result)  # asked to stop early: preempted, whatever it did
    if result.ok:
        _write_value(directory, result, lazy)
    if not result.ok:
        _write_error(directory, result, lazy)
    return result


def _run(payload: Any, directory: str, logs: tuple[Any, Any] | None) -> AttemptResult:
    cfg = sys.modules.get("steadyrun.config")  # an instance's class module is loaded already
    try:
        if cfg is not None and isinstance(payload, cfg.Script):
            return _run_script(payload, directory, logs)
        if cfg is not None and isinstance(payload, cfg.Partial):
            value = payload.build()()
        elif cfg is not None and isinstance(payload, cfg.Buildable):
            value = payload.build()
        elif callable(payload):
            value = payload()
        else:
            raise TypeError(
                f"cannot run a payload of type {type(payload).__name__}: give a Partial, "
                "Config, Script or callable")
    except SystemExit as e:
        code = e.code
        if code is None or code == 0:
            return AttemptResult(None, None)
        exit_code = code if isinstance(code, int) else EXIT_FAILED
        return _failure(e, exit_code=exit_code)
    except BaseException as e:  # the payload's failure is the result, whatever it is
        return _failure(e)
    return AttemptResult(None, value)


def _run_script(script: Any, directory: str, logs: tuple[Any, Any] | None
                ) -> AttemptResult:
    import subprocess

    from steadyrun.attempt import context
    from steadyrun.config.secrets import script_env

    env = context.script_env(dict(os.environ))
    env.update(script_env(script, _HANDED))
    attempt_id = getattr(_local, "attempt_id", None)
    if attempt_id:  # lets the controller find what the script leaves running
        env[ATTEMPT_ID_ENV] = attempt_id
    kwargs: dict[str, Any] = {}
    if logs is not None:
        kwargs["stdout"] = logs[0].file()
        kwargs["stderr"] = logs[1].file()
    else:
        sys.stdout and sys.stdout.flush()
        sys.stderr and sys.stderr.flush()
    proc = subprocess.Popen(script.command(python=sys.executable), env=env,
                            start_new_session=logs is not None, **kwargs)
    _RUNNING_SCRIPTS[directory] = proc
    try:
        rc = proc.wait()
    finally:
        _RUNNING_SCRIPTS.pop(directory, None)
    if rc == 0:
        return AttemptResult(None, None, exit_code=0)
    if rc < 0:
        import signal

        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        message = f"the script was killed by {name}"
        exit_code = 128 - rc
    else:
        message = f"the script exited with code {rc}"
        exit_code = rc
    err = {"type": "ScriptFailed", "message": f"{message}: {script!r}", "traceback": "",
           "oom": False, "exit_code": exit_code}
    return AttemptResult("error", None, error=err, exit_code=exit_code)


def _take_handed_env() -> None:
    """Move the env values a launcher handed over out of this process's environment
    (the payload's own processes do not inherit the carrier variable)."""
    global _HANDED
    _HANDED = os.environ.pop(HANDED_ENV, None)


def _failure(exc: BaseException, exit_code: int | None = None) -> AttemptResult:
    import traceback

    oom = is_oom(exc)
    tb = "".join(traceback.format_exception(exc))
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:
        message = f"<{name}: its message could not be rendered>"
    kind = "oom" if oom else "error"
    code = exit_code if exit_code is not None else (EXIT_OOM if oom else EXIT_FAILED)
    err = {"type": name, "message": message, "traceback": tb, "oom": oom, "exit_code": code}
    return AttemptResult(kind, None, error=err, exit_code=exit_code)


def is_oom(exc: BaseException) -> bool:
    """MemoryError, a CUDA out-of-memory error (by name: torch is never imported), or a
    RuntimeError saying "out of memory" (or torch's CPU allocator's "can't allocate
    memory"), here or anywhere in its cause chain."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MemoryError):
            return True
        if any(c.__name__ == "OutOfMemoryError" for c in type(e).__mro__):
            return True
        if isinstance(e, RuntimeError):
            text = str(e).lower()
            if any(t in text for t in _OOM_TEXT):
                return True
        e = e.__cause__ or e.__context__
    return False


def _write_value(directory: str, result: AttemptResult, lazy: bool = False) -> None:
    import pickle

    value = result.value
    try:
        if type(value) in _PLAIN_TYPES:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        elif "cloudpickle" in sys.modules:
            data = sys.modules["cloudpickle"].dumps(value)
        else:
            try:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                import cloudpickle

                data = cloudpickle.dumps(value)
    except BaseException as e:
        failed = _failure(e)
        failed.error["message"] = (  # type: ignore[index]
            f"the return value (a {type(value).__name__}) could not be pickled: "
            f"{failed.error['message']}; return plain data (numbers, lists, dicts, arrays) "  # type: ignore[index]
            "or save it to a file and return its path")
        result.kind, result.value, result.error = "error", None, failed.error
        return
    result.value_bytes = data
    result.kept = lazy and len(data) <= SMALL_RESULT_BYTES  # the caller stores it
    if not result.kept:
        atomic_write(join(make_dir(directory) if lazy else directory, RESULT_FILE), data)


def _write_error(directory: str, result: AttemptResult, lazy: bool = False) -> None:
    import json

    err = dict(result.error or {})
    err.setdefault("exit_code", result.process_exit_code)
    try:
        if lazy:
            make_dir(directory)
        atomic_write(join(directory, ERROR_FILE),
                      json.dumps(err, indent=1, default=str).encode("utf-8"))
    except OSError as e:  # the folder vanished: the outcome still carries the error
        print(f"steadyrun.attempt.worker: could not write {ERROR_FILE}: {e}", file=sys.__stderr__)


def _print_traceback(result: AttemptResult) -> None:
    err = result.error or {}
    text = err.get("traceback") or f"{err.get('type')}: {err.get('message')}\n"
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _extend_sys_path() -> None:
    extra = os.environ.get(PARENT_PATH_ENV)
    if extra:
        for entry in extra.split(os.pathsep):
            if entry and entry not in sys.path:
                sys.path.append(entry)


if __name__ == "__main__":
    sys.exit(main())
