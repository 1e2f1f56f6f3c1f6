"""Ending what an attempt left running: the descendants of a worker process, and the
processes that carry an attempt's tag in their environment.

- :func:`end_descendants` runs in a worker that made itself a child subreaper
  (:func:`steadyrun.attempt.guard.keep_descendants`): daemons its payload started are
  still its descendants, so it can end them all (SIGTERM, a grace period, SIGKILL), reap
  them, and go on until it has no child left.
- :func:`end_tagged` runs in the controller: every process of this user whose
  environment says ``STEADYRUN_ATTEMPT_ID=<id>`` belongs to that attempt. It finds what
  an attempt run in the controller's own process left (``thread``, ``sequential``), and
  what a worker left when it was killed before it could clean up.

Both skip processes that vanish or may not be signalled; neither raises for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

#: Longest time a round of killing waits after SIGKILL (an uninterruptible process).
_KILL_WAIT = 5.0


def end_descendants(grace: float = 1.0) -> list[int]:
    """End every descendant of this process and reap its children; return the pids that
    were signalled. The first round gets SIGTERM and up to ``grace`` seconds; anything
    still alive, or started meanwhile, gets SIGKILL. Loops until this process has no
    child left at all (with a subreaper, no descendant either)."""
    import psutil

    me = psutil.Process()
    ended: list[int] = []
    first = True
    for _ in range(100):  # each round ends what exists; forks during a round need another
        try:
            procs = me.children(recursive=True)
        except psutil.Error:
            procs = []
        if not procs:
            if not _reap_children():
                return ended
            continue
        sig = signal.SIGTERM if first else signal.SIGKILL
        _send(psutil, procs, sig)
        alive = _wait_gone(psutil, procs, grace if first else _KILL_WAIT)
        if alive and first:
            _send(psutil, alive, signal.SIGKILL)
            _wait_gone(psutil, alive, _KILL_WAIT)
        first = False
        ended.extend(p.pid for p in procs)
    return ended


def tagged_pids(env_name: str, value: str) -> list[int]:
    """Pids of this user's processes (not this one) whose environment holds
    ``env_name=value``. Reads ``/proc`` (Linux); empty elsewhere."""
    needle = f"{env_name}={value}".encode()
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                data = f.read()
        except OSError:  # gone, or another user's
            continue
        if needle in data.split(b"\0"):
            found.append(int(name))
    return found


def end_tagged(env_name: str, value: str, grace: float = 1.0) -> list[int]:
    """End every process of this user tagged ``env_name=value`` in its environment, and
    its descendants: SIGTERM, up to ``grace`` seconds, SIGKILL. Returns the pids that
    were signalled (empty when none was found, the usual case)."""
    pids = tagged_pids(env_name, value)
    if not pids:
        return []
    import psutil

    procs: dict[int, Any] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            procs[pid] = p
            for c in p.children(recursive=True):
                if c.pid != os.getpid():
                    procs.setdefault(c.pid, c)
    targets = list(procs.values())
    _send(psutil, targets, signal.SIGTERM)
    alive = _wait_gone(psutil, targets, grace, reap=False)
    if alive:
        _send(psutil, alive, signal.SIGKILL)
        _wait_gone(psutil, alive, _KILL_WAIT, reap=False)
    return sorted(procs)


def child_activity() -> tuple[int, int]:
    """A cheap token (one system call) that changes when this process started child
    processes: the page faults of the children it reaped, and the processes that Python
    code forked or that ``subprocess`` started (counted once :func:`tag_subprocesses`
    is installed). Compare a token taken before an in-process attempt with one taken
    after to skip :func:`end_tagged` (a scan of every process) when nothing was
    started; other threads starting processes only cost a needless scan."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt, _forks[0]


_forks = [0]


def _count_fork() -> None:
    _forks[0] += 1


def _tag_forked_child() -> None:
    """In a child forked by Python code of an in-process attempt: carry its tag, so
    whatever it becomes (a daemon, an exec'd program) can be found."""
    from steadyrun.attempt import worker

    attempt_id = getattr(worker._local, "attempt_id", None)
    if attempt_id:
        os.environ[worker.ATTEMPT_ID_ENV] = attempt_id


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_parent=_count_fork, after_in_child=_tag_forked_child)

_popen_hooked: list[bool] = []


def tag_subprocesses() -> None:
    """Give every ``subprocess.Popen`` started by a thread that runs an in-process
    attempt that attempt's tag in its environment (the process's environment is shared
    by every thread, so it cannot carry one attempt's tag), and count it for
    :func:`child_activity`. Installed once; threads that run no attempt are unaffected.
    Processes that Python code forks without exec, and ``os.system``, cannot be tagged
    this way."""
    if _popen_hooked:
        return
    _popen_hooked.append(True)
    import subprocess

    from steadyrun.attempt import worker

    original = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def _execute_child(self: Any, args: Any, executable: Any, preexec_fn: Any,
                       close_fds: Any, pass_fds: Any, cwd: Any, env: Any, *rest: Any) -> Any:
        attempt_id = getattr(worker._local, "attempt_id", None)
        _forks[0] += 1
        if attempt_id:
            env = dict(os.environ if env is None else env)
            env[worker.ATTEMPT_ID_ENV] = attempt_id
        return original(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                        *rest)

    subprocess.Popen._execute_child = _execute_child  # type: ignore[attr-defined]


def _send(psutil: Any, procs: list[Any], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            p.send_signal(sig)  # psutil checks the start time: a reused pid is spared


def _wait_gone(psutil: Any, procs: list[Any], timeout: float, *, reap: bool = True
               ) -> list[Any]:
    """Poll until every process has exited (reaping our own children when ``reap``: never
    in a controller, whose children's statuses belong to their ``Popen``); return the
    ones still alive after ``timeout`` seconds."""
    from steadyrun.attempt.proctree import wait_gone

    return wait_gone(psutil, procs, timeout, _reap_children if reap else None)


def _reap_children() -> bool:
    """Reap every child of ours that exited; True when a child (live or reaped) existed."""
    had = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return had
        had = True
        if pid == 0:
            return True
