"""Run one attempt anywhere: in this thread, in a pool process, or as
``python -m steadyrun.attempt.worker ATTEMPT_DIR``.

The worker builds the payload, runs it and leaves in the attempt folder:

- ``stdout.log`` / ``stderr.log``: what the attempt printed (a missing file means it
  printed nothing; in-process runs create them only on the first write);
- ``result.pkl``: the return value, pickled (cloudpickle where plain pickle cannot), on
  success;
- ``error.json``: ``{type, message, traceback, oom, exit_code}`` on failure.

Both result files are written atomically (a temporary file, then ``os.replace``), so a
reader never sees half a file. Exit codes of ``python -m steadyrun.attempt.worker``: 0 success,
1 the payload raised (a failed :class:`~steadyrun.Script` exits with its own code), 3 out
of memory, 2 the attempt folder or its payload file is missing.

This module imports little at start (no psutil, no YAML unless the payload is YAML): it
is started once per attempt by the subprocess strategy.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

TYPE_CHECKING = False  # typing costs ~10 ms to import; this module starts every attempt
if TYPE_CHECKING:
    from typing import Any

PAYLOAD_YAML = "payload.yaml"
PAYLOAD_PKL = "payload.pkl"
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
RESULT_FILE = "result.pkl"
ERROR_FILE = "error.json"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_ATTEMPT_DIR = 2
EXIT_OOM = 3

#: Environment variable through which an executor passes its ``sys.path`` to the worker,
#: so that modules importable in the controller are importable in the attempt.
PARENT_PATH_ENV = "STEADYRUN_PARENT_PATH"

# "can't allocate memory": torch's CPU allocator failing to allocate
_OOM_TEXT = ("cuda out of memory", "out of memory", "can't allocate memory",
             "cannot allocate memory")
# values that plain pickle writes faithfully (no class defined in a __main__)
_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes)
_Outcome: Any = None
_ErrorInfo: Any = None


class AttemptResult:
    """How :func:`execute` ended.

    ``kind`` is ``None`` on success, else ``"error"`` or ``"oom"``. ``value`` is the
    return value (``None`` for scripts); ``value_bytes`` its pickle (what ``result.pkl``
    holds). ``error`` is the dict written to ``error.json``. ``exit_code`` is set only
    when the attempt chose one (a script's exit status, ``sys.exit(n)``).
    """

    __slots__ = ("kind", "value", "value_bytes", "error", "exit_code")

    def __init__(self, kind: str | None = None, value: Any = None,
                 value_bytes: bytes | None = None, error: dict[str, Any] | None = None,
                 exit_code: int | None = None) -> None:
        self.kind = kind
        self.value = value
        self.value_bytes = value_bytes
        self.error = error
        self.exit_code = exit_code

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
        """The :class:`~steadyrun.executors.base.Outcome` for this result."""
        global _Outcome, _ErrorInfo
        if _Outcome is None:
            from steadyrun.executors.base import ErrorInfo, Outcome

            _Outcome, _ErrorInfo = Outcome, ErrorInfo
        Outcome, ErrorInfo = _Outcome, _ErrorInfo
        if self.kind is None:
            return Outcome(attempt_id, None, exit_code=self.exit_code, value=self.value,
                           has_value=with_value)
        err = ErrorInfo.from_dict(self.error or {})
        return Outcome(attempt_id, self.kind, exit_code=self.exit_code, error=err,
                       message=f"{err.type}: {err.message}")


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
            _atomic_write(os.path.join(directory, PAYLOAD_YAML), text.encode("utf-8"))
            return PAYLOAD_YAML
    import cloudpickle

    _atomic_write(os.path.join(directory, PAYLOAD_PKL), cloudpickle.dumps(payload))
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
            return config.from_yaml(f.read())
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
            in_process_streams: bool = False) -> AttemptResult:
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
    """
    directory = os.fspath(attempt_dir)
    return _execute(payload, directory, "thread" if in_process_streams else "fd")


def main(argv: list[str] | None = None) -> int:
    """``python -m steadyrun.attempt.worker ATTEMPT_DIR``: run the attempt there; return the exit
    status (see the module docstring)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) == 2 and args[0] == "--pool":  # a process pool's worker (process strategy)
        from multiprocessing.connection import Connection

        _extend_sys_path()
        fd = int(args[1])
        os.set_inheritable(fd, False)
        pool_loop(Connection(fd))
        return EXIT_OK
    if len(args) != 1:
        print("usage: python -m steadyrun.attempt.worker ATTEMPT_DIR", file=sys.stderr)
        return EXIT_BAD_ATTEMPT_DIR
    directory = args[0]
    if not os.path.isdir(directory):
        print(f"steadyrun.attempt.worker: attempt folder {directory!r} does not exist",
              file=sys.stderr)
        return EXIT_BAD_ATTEMPT_DIR
    _redirect_fds(directory)
    _extend_sys_path()
    try:
        payload = read_payload(directory)
    except FileNotFoundError as e:
        print(f"steadyrun.attempt.worker: {e}", file=sys.stderr)
        result = _failure(e, exit_code=EXIT_BAD_ATTEMPT_DIR)
        _write_error(directory, result)
        return EXIT_BAD_ATTEMPT_DIR
    except BaseException as e:  # a payload this process cannot load is the attempt's error
        result = _failure(e)
        _write_error(directory, result)
        _print_traceback(result)
        return result.process_exit_code
    result = _execute(payload, directory, "none")
    if not result.ok:
        _print_traceback(result)
    return result.process_exit_code


def running_script_pid(attempt_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the Script process an in-process attempt is running, if any (so that a
    thread executor can stop a script although it cannot stop the thread)."""
    proc = _RUNNING_SCRIPTS.get(os.fspath(attempt_dir))
    return None if proc is None else proc.pid


# --- pool worker loop (process strategy) --------------------------------------------------


def pool_loop(conn: Any) -> None:
    """Body of a reusable pool process: receive ``(attempt_id, payload_pickle, dir,
    env)``, run it with ``env`` set in ``os.environ`` (restored afterwards), send back
    ``(attempt_id, kind, value_bytes, error, exit_code)``; stop on ``None``.
    ``value_bytes`` is ``None`` when the value is large (the caller reads ``result.pkl``
    instead)."""
    import pickle

    recv, send = conn.recv, conn.send
    while True:
        try:
            msg = recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        attempt_id, blob, directory, env = msg
        saved_env = _set_env(env)
        try:
            payload = pickle.loads(blob)
        except BaseException as e:
            result = _failure(e)
            _write_error(directory, result)
        else:
            result = _execute(payload, directory, "fd")
            del payload
        finally:
            _set_env(saved_env)
        vb = result.value_bytes
        if vb is not None and len(vb) > _INLINE_VALUE_LIMIT:
            vb = None
        send((attempt_id, result.kind, vb, result.error, result.exit_code))
        del result, vb


_INLINE_VALUE_LIMIT = 1 << 20


# --- internals --------------------------------------------------------------------------

_RUNNING_SCRIPTS: dict[str, Any] = {}
_local = threading.local()
_router_lock = threading.Lock()


def _execute(payload: Any, directory: str, streams: str) -> AttemptResult:
    """``streams``: ``"fd"`` (dup2 fds 1/2 for the duration), ``"thread"`` (per-thread
    ``sys.stdout`` routing) or ``"none"`` (the caller already redirected)."""
    try:
        return _execute_in(payload, directory, streams)
    except Exception as e:  # the attempt folder is unusable (removed, full disk)
        result = _failure(e)
        result.error["message"] = (  # type: ignore[index]
            f"the worker could not use the attempt folder {directory}: {e}")
        return result


def _execute_in(payload: Any, directory: str, streams: str) -> AttemptResult:
    if streams == "thread":
        _ensure_router()
        out, err = _LazyLog(_join(directory, STDOUT_LOG)), _LazyLog(
            _join(directory, STDERR_LOG))
        prev = (getattr(_local, "stdout", None), getattr(_local, "stderr", None))
        _local.stdout, _local.stderr = out, err
        try:
            result = _run(payload, directory, (out, err))
        finally:
            _local.stdout, _local.stderr = prev
            out.close()
            err.close()
    elif streams == "fd":
        saved = _redirect_fds(directory, keep=True)
        swapped = _streams_on_fds()
        try:
            result = _run(payload, directory, None)
        finally:
            _restore_streams(swapped)
            _restore_fds(saved)
    else:
        result = _run(payload, directory, None)
    if result.ok:
        _write_value(directory, result)
    if not result.ok:
        _write_error(directory, result)
    return result


def _run(payload: Any, directory: str, logs: tuple[_LazyLog, _LazyLog] | None) -> AttemptResult:
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


def _run_script(script: Any, directory: str, logs: tuple[_LazyLog, _LazyLog] | None
                ) -> AttemptResult:
    import subprocess

    env = dict(os.environ)
    env.update(script.env)
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


def _write_value(directory: str, result: AttemptResult) -> None:
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
    _atomic_write(_join(directory, RESULT_FILE), data)
    result.value_bytes = data


def _write_error(directory: str, result: AttemptResult) -> None:
    import json

    err = dict(result.error or {})
    err.setdefault("exit_code", result.process_exit_code)
    try:
        _atomic_write(_join(directory, ERROR_FILE),
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


def _join(directory: str, name: str) -> str:
    return f"{directory}{os.sep}{name}"  # os.path.join costs more, and per attempt


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _redirect_fds(directory: str, keep: bool = False) -> tuple[int, int] | None:
    """Point fds 1 and 2 at the attempt's log files; return the saved originals when
    ``keep``. Skips a descriptor that already points at its log (the executor opened it)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    saved = (os.dup(1), os.dup(2)) if keep else None
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    for fd, name in ((1, STDOUT_LOG), (2, STDERR_LOG)):
        path = os.path.join(directory, name)
        if not keep and _same_file(fd, path):
            continue
        log = os.open(path, flags, 0o600)
        os.dup2(log, fd)
        os.close(log)
    return saved


def _restore_fds(saved: tuple[int, int] | None) -> None:
    if saved is None:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    for fd, orig in zip((1, 2), saved, strict=True):
        os.dup2(orig, fd)
        os.close(orig)


def _streams_on_fds() -> tuple[Any, Any] | None:
    """Make ``sys.stdout``/``sys.stderr`` write to fds 1/2 when they do not already (an
    embedding host or a test runner replaced them); return what to put back."""
    def on_fd(stream: Any, fd: int) -> bool:
        try:
            return stream.fileno() == fd
        except (AttributeError, OSError, ValueError):
            return False

    if on_fd(sys.stdout, 1) and on_fd(sys.stderr, 2):
        return None
    saved = (sys.stdout, sys.stderr)
    sys.stdout = open(os.dup(1), "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                      errors="backslashreplace")
    sys.stderr = open(os.dup(2), "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                      errors="backslashreplace")
    return saved


def _restore_streams(saved: tuple[Any, Any] | None) -> None:
    if saved is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.close()
    sys.stdout, sys.stderr = saved


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _set_env(env: dict[str, str | None] | None) -> dict[str, str | None] | None:
    """Apply ``env`` (``None`` values delete); return what restores the previous state."""
    if not env:
        return None
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return saved


def _extend_sys_path() -> None:
    extra = os.environ.get(PARENT_PATH_ENV)
    if extra:
        for entry in extra.split(os.pathsep):
            if entry and entry not in sys.path:
                sys.path.append(entry)


class _LazyLog:
    """A log file created on the first write (so silent attempts cost no files)."""

    __slots__ = ("path", "_f")

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: Any = None

    def file(self) -> Any:
        if self._f is None:
            self._f = open(self.path, "a", buffering=1, encoding="utf-8",  # noqa: SIM115
                           errors="backslashreplace")
        return self._f

    def write(self, s: str) -> int:
        return self.file().write(s)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class _StreamRouter:
    """Stands in for ``sys.stdout``/``sys.stderr``: writes from a thread running an
    attempt go to that attempt's log, every other write to the original stream."""

    def __init__(self, original: Any, attr: str) -> None:
        self._original = original
        self._attr = attr

    def write(self, s: str) -> int:
        target = getattr(_local, self._attr, None)
        if target is not None:
            return target.write(s)
        if self._original is None:
            return len(s)
        return self._original.write(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        target = getattr(_local, self._attr, None)
        if target is not None:
            target.flush()
        elif self._original is not None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _ensure_router() -> None:
    if isinstance(sys.stdout, _StreamRouter) and isinstance(sys.stderr, _StreamRouter):
        return
    with _router_lock:
        if not isinstance(sys.stdout, _StreamRouter):
            sys.stdout = _StreamRouter(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _StreamRouter):
            sys.stderr = _StreamRouter(sys.stderr, "stderr")


if __name__ == "__main__":
    sys.exit(main())
