"""A cgroup per attempt, where the machine lets us make one: every process started in it,
however it detaches (a fork without exec, ``setsid``), stays in it and can be listed.

Used for what an environment tag cannot mark: processes that a pool worker's payload
forks without exec (they keep the pool worker's environment as it was at its start). The
pool worker moves itself into its attempt's cgroup just before such a fork; when the
pool worker is killed before it could clean up, the controller ends every process left
in that cgroup. Needs cgroup v1's ``pids`` hierarchy, writable (root): elsewhere every
function here does nothing and returns None or an empty list.
"""

from __future__ import annotations

import contextlib
import os

_ROOT = "/sys/fs/cgroup/pids"
_PARENT = "steadyrun"


def path_of(attempt_id: str) -> str:
    """The cgroup folder of an attempt (it may not exist): under the cgroup this process
    was started in, so the limits set on it still apply; a pool worker and its
    controller are in the same one."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in attempt_id)
    return f"{_home()}/{_PARENT}/{safe}"


_HOME: list[str] = []


def _home() -> str:
    """This process's cgroup in the ``pids`` hierarchy, as a folder (read once)."""
    if not _HOME:
        where = "/"
        try:
            with open("/proc/self/cgroup") as f:
                for line in f:
                    _, controllers, rel = line.rstrip("\n").split(":", 2)
                    if "pids" in controllers.split(","):
                        where = rel
                        break
        except (OSError, ValueError):
            pass
        _HOME.append(_ROOT + where.rstrip("/"))
    return _HOME[0]


def enter(attempt_id: str) -> str | None:
    """Create the attempt's cgroup and move this process into it (its later children
    are born there); return its folder, or None where that is not possible."""
    path = path_of(attempt_id)
    for _ in range(20):  # another process may remove the empty parent between our steps
        try:
            os.makedirs(path, exist_ok=True)
            _write(f"{path}/cgroup.procs", os.getpid())
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return path
    return None


def leave(path: str) -> None:
    """Move this process back to the cgroup it started in and remove ``path`` (which
    fails quietly while processes are still in it), and its parent when that is empty."""
    try:
        _write(f"{_home()}/cgroup.procs", os.getpid())
        os.rmdir(path)
    except OSError:
        return
    _remove_parent(path)


def pids(attempt_id: str) -> list[int]:
    """The processes in the attempt's cgroup (empty when it has none, or none exists)."""
    try:
        with open(f"{path_of(attempt_id)}/cgroup.procs") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def end(attempt_id: str, grace: float = 1.0) -> list[int]:
    """End every process in the attempt's cgroup (SIGTERM, ``grace`` seconds, SIGKILL,
    again until it is empty) and remove the cgroup; return the pids ended."""
    path = path_of(attempt_id)
    if not os.path.isdir(path):
        return []
    import signal
    import time

    ended: list[int] = []
    sig, deadline = signal.SIGTERM, time.monotonic() + grace
    for _ in range(200):
        found = [p for p in pids(attempt_id) if p != os.getpid()]
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, sig)  # a pid in the cgroup is that process: no reuse race
            except OSError:
                continue
            if pid not in ended:
                ended.append(pid)
        time.sleep(0.02)
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL
    with contextlib.suppress(OSError):
        os.rmdir(path)
        _remove_parent(path)
    return ended


def _remove_parent(path: str) -> None:
    """Remove the ``steadyrun`` folder above ``path`` when it is empty: the kernel
    refuses (EBUSY, ENOTEMPTY) while another attempt's cgroup is in it, and
    :func:`enter` retries when it goes between its steps."""
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


def _write(path: str, pid: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)
