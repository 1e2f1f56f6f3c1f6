"""What a worker process does for itself around a payload, so that an attempt can always
be found again and leaves nothing behind.

- :func:`keep_descendants` makes this process a child subreaper (Linux): a daemon the
  payload starts (``setsid``, a double fork) stays its descendant instead of moving to
  init, so it can be found and killed with the attempt;
- :func:`die_with_parent` asks the kernel to send a signal when the parent goes away;
- :func:`record_identity` writes ``identity.json`` before the payload starts;
- :func:`controller_gone` says whether the controller that launched us has died.

Light on purpose (``os`` only; no ``ctypes`` module, no ``json``): the worker of the
``subprocess`` strategy calls it once per attempt. Everything here is silently skipped
where the platform does not offer it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs milliseconds to import: this runs in every worker
if TYPE_CHECKING:
    from typing import Any

_started: dict[int, float] = {}  # pid -> its start time (a forked child has another pid)
_host: list[str] = []
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_prctl_fn: list[object] = []


def _prctl(option: int, arg: int) -> bool:
    """``prctl(option, arg)`` through the bare ``_ctypes`` extension (the ``ctypes``
    package costs milliseconds to import); False where it is not available."""
    if not _prctl_fn:
        try:
            import _ctypes

            lib: Any = _ctypes

            class _Int(lib._SimpleCData):
                _type_ = "i"

            class _Libc:
                _handle = lib.dlopen(None, 0)

            class _Fn(lib.CFuncPtr):
                _flags_ = lib.FUNCFLAG_CDECL | lib.FUNCFLAG_USE_ERRNO
                _restype_ = _Int

            _prctl_fn.append(_Fn(("prctl", _Libc())))
        except Exception:  # not Linux, or no prctl in this libc
            _prctl_fn.append(None)
    fn = _prctl_fn[0]
    if fn is None:
        return False
    try:
        return fn(option, arg, 0, 0, 0) == 0  # type: ignore[operator]
    except Exception:
        return False


def keep_descendants() -> bool:
    """Make this process the child subreaper of its descendants (Linux); True if done."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when the thread that started it
    exits (Linux); True if done."""
    return _prctl(_PR_SET_PDEATHSIG, int(signum))


def take_controller_pid(name: str) -> int | None:
    """The controller pid an executor put in the environment variable ``name``, or None;
    the variable is removed, so that a controller the payload starts in turn does not
    hand it on to workers of its own (they would take it for theirs)."""
    text = os.environ.pop(name, None)
    return int(text) if text and text.isdigit() else None


def controller_gone(controller_pid: int | None) -> bool:
    """True when a controller pid is known and it is no longer our parent (it died and
    this process was handed to another)."""
    return controller_pid is not None and os.getppid() != controller_pid


def record_identity(directory: str, attempt_id: str, file_name: str, *, pool: bool = False,
                    controller_pid: int | None = None) -> None:
    """Write the identity file (``file_name`` in ``directory``, 0600) that
    :func:`steadyrun.attempt.folder.read_identity` reads: this process's pid and start
    time, the attempt, host, controller and whether it is a pool worker. Raises
    OSError when the folder cannot be written.

    One ``write`` without a rename (it is on every attempt's path): a reader that comes
    in between sees no valid identity. That is safe because the reader is a recovery
    after the controller died, and a worker checks for that only after this returns."""
    import time

    pid = os.getpid()
    started = _started.get(pid)
    if started is None:  # a controller records many attempts: read /proc once
        from steadyrun.attempt.liveness import process_start_time

        started = _started[pid] = process_start_time(pid) or 0.0
    if not _host:
        _host.append(_json_str(os.uname().nodename))
    text = (f'{{"attempt_id": {_json_str(attempt_id)}, "pid": {pid}, "started": {started!r}, '
            f'"host": {_host[0]}, "controller_pid": '
            f'{"null" if controller_pid is None else int(controller_pid)}, '
            f'"pool": {"true" if pool else "false"}, "written_at": {time.time()!r}}}')
    fd = os.open(f"{directory}{os.sep}{file_name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def has_children() -> bool:
    """True when this process has a child, running or not yet reaped. Reaps one that
    already exited, so call it only where every child is the attempt's."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def _json_str(text: str) -> str:
    if text.isalnum() or (text.isprintable() and '"' not in text and "\\" not in text
                          and text.isascii()):
        return f'"{text}"'
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
