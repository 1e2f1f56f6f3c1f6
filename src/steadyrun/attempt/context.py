"""What a running attempt knows about its task: its folder, and how many threads to use.

Inside a payload, :func:`task_dir` is a folder that belongs to the task, not to one
attempt: every attempt of the task (retries, and the attempts a ``resume`` starts) sees
the same folder, so a payload can keep outputs and checkpoints there and find them
again. It is ``<experiment>/tasks/<task>/work/``, next to the attempts' own folders,
made owner-only (0700) when the task's first attempt starts. The same path is in
``$STEADYRUN_TASK_DIR`` for the payload's processes (a Script's too). Where the store
is out of sight the folder is where the attempt runs: on a Slurm cluster reached over
SSH ``<job_dir>/<experiment>/work/<task>`` there, on a Ray node without a shared
filesystem ``<tmp>/steadyrun-work-<uid>/<experiment>/<task>`` on that node (attempts
that land on another node do not see it). A Slurm ``container_image`` mounts only the
attempt's folder, so there the task folder is not visible inside the container.

Thread counts: an attempt that asked for ``Resources(cpus=n)`` gets ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` set to ``ceil(n)`` (at least 1), so
numerical libraries do not start one thread per core of the machine, unless the
variable is already in the environment or in the Script's ``env`` (the user's value
wins). When torch is already imported in the worker, its thread count follows too; a
payload that imports torch later reads the variables.

Where each applies: the worker processes (``subprocess`` and ``process`` strategies,
Slurm, Ray) set the variables in their environment for the attempt and restore them
after it. The in-process strategies (``thread``, ``sequential``) share the controller's
environment: there :func:`task_dir` answers per thread and a Script's process gets
``$STEADYRUN_TASK_DIR``, but thread counts are left alone.

This module is light (standard library only): the worker imports it for every attempt.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading

TYPE_CHECKING = False  # typing costs ~10 ms to import; the worker imports this module
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

#: The task's folder, in the environment of an attempt's processes.
TASK_DIR_ENV = "STEADYRUN_TASK_DIR"
#: The CPUs the task asked for (``Resources.cpus``), handed to the worker by the engine.
CPUS_ENV = "STEADYRUN_CPUS"
#: Variables that numerical libraries read for their thread count.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: The task's folder inside its folder of attempts.
WORK_DIR = "work"

__all__ = ["CPUS_ENV", "TASK_DIR_ENV", "THREAD_VARS", "enter", "leave", "script_env",
           "task_dir", "task_dir_for", "thread_count"]

_local = threading.local()


def task_dir() -> Path:
    """The folder of the task whose attempt is running here, the same for every attempt
    of the task (retries and resumes): a place for outputs and checkpoints.

    Answers in the attempt's own thread (the thread strategy runs several at once) and,
    in a worker process or a process the attempt started, from ``$STEADYRUN_TASK_DIR``.
    Raises :class:`~steadyrun.errors.NotInAttempt` when called outside a running
    attempt (for example at the top level of a script that launches the experiment).
    """
    from pathlib import Path

    path = getattr(_local, "task_dir", None) or os.environ.get(TASK_DIR_ENV)
    if path and getattr(_local, "unmade", False):
        _make_private(path, True)  # named when the attempt started, made when first asked
        _local.unmade = False
    if not path:
        from steadyrun.errors import NotInAttempt

        raise NotInAttempt(
            "run.task_dir() is only known inside a running attempt (a task's payload); "
            f"outside one, pick a folder yourself (${TASK_DIR_ENV} is not set here)")
    return Path(path)


def task_dir_for(attempt_dir: str) -> str:
    """The task folder of the attempt whose folder is ``attempt_dir``.

    An attempt folder of the store is ``<experiment>/tasks/<task>/<n>``: its task folder
    is ``<experiment>/tasks/<task>/work`` (links followed, so a Slurm submission's link to
    the attempt folder leads to the same place). A folder of another shape (an attempt
    run in a temporary folder on a node that cannot see the store) uses
    ``$STEADYRUN_TASK_DIR`` when its launcher set one, else ``work`` inside the attempt
    folder itself (which then lasts for one attempt only).
    """
    return _locate(attempt_dir)[0]


def _locate(attempt_dir: str, follow: bool = True) -> tuple[str, bool]:
    """:func:`task_dir_for`, and whether its missing parents may be made (only for a
    folder a launcher named: the others lie in folders that must exist already).
    ``follow=False``: the folder is the store's own (not yet made): no links to follow."""
    real = os.path.realpath(attempt_dir) if follow else os.path.abspath(attempt_dir)
    parent, number = os.path.split(real)
    if number.isdigit() and os.path.basename(os.path.dirname(parent)) == "tasks":
        return os.path.join(parent, WORK_DIR), False
    named = os.environ.get(TASK_DIR_ENV)
    return (named, True) if named else (os.path.join(real, WORK_DIR), False)


def thread_count(cpus: str | float | None) -> int | None:
    """Threads for a request of ``cpus``: rounded up, at least 1; None when unknown."""
    if cpus is None or cpus == "":
        return None
    try:
        value = float(cpus)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return max(1, math.ceil(value))


def enter(attempt_dir: str, *, process_wide: bool, lazy: bool = False) -> Any:
    """Set the context of the attempt in ``attempt_dir`` (the worker calls it before the
    payload); return what :func:`leave` needs to put things back.

    The task folder is made when missing (0700); when it cannot be (a read-only or
    unmounted parent), the attempt runs on and :func:`task_dir` names it all the same,
    so the payload's own write says what is wrong. With ``process_wide`` (a process that
    runs one attempt at a time) the variables are set in ``os.environ`` and torch's
    thread count follows the request. With ``lazy`` (an attempt in this process whose
    folder is made lazily) the task folder is made when :func:`task_dir` is first asked
    for it, or a Script is about to start.
    """
    path, parents = _locate(attempt_dir, follow=not lazy)
    if not lazy:
        _make_private(path, parents)
    saved: dict[str, Any] = {"task_dir": getattr(_local, "task_dir", None),
                             "unmade": getattr(_local, "unmade", False)}
    _local.task_dir = path
    _local.unmade = lazy
    if not process_wide:
        return saved
    env: dict[str, str | None] = {TASK_DIR_ENV: os.environ.get(TASK_DIR_ENV)}
    os.environ[TASK_DIR_ENV] = path
    threads = thread_count(os.environ.get(CPUS_ENV))
    if threads is not None:
        for name in THREAD_VARS:
            if name not in os.environ:  # the user's own value wins
                env[name] = None
                os.environ[name] = str(threads)
        torch = sys.modules.get("torch")
        if torch is not None and "OMP_NUM_THREADS" in env:
            saved["torch"] = _set_torch_threads(torch, threads)
    saved["env"] = env
    return saved


def leave(saved: Any) -> None:
    """Undo :func:`enter` (a pool or Ray worker runs the next attempt in this process)."""
    _local.task_dir = saved.get("task_dir")
    _local.unmade = saved.get("unmade", False)
    for name, value in (saved.get("env") or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    threads = saved.get("torch")
    torch = sys.modules.get("torch")
    if threads and torch is not None:
        _set_torch_threads(torch, threads)


def script_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` (a Script's environment, being built) with the task folder added when it
    is known in this thread and not there yet (the in-process strategies)."""
    path = getattr(_local, "task_dir", None)
    if path:
        env.setdefault(TASK_DIR_ENV, str(task_dir()))
    return env


def _make_private(path: str, parents: bool) -> None:
    """Make ``path`` (and, with ``parents``, its missing parents) owner-only; a folder
    that cannot be made is left for the payload's own write to report."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:  # a folder a launcher named, on a node of a cluster
        parent = os.path.dirname(path)
        if not parents or parent == path:
            return
        _make_private(parent, parents)
        try:
            os.mkdir(path, 0o700)
        except OSError:
            return
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)  # whatever the umask


def _set_torch_threads(torch: Any, threads: int) -> int | None:
    """Set torch's intra-op thread count; return the previous one (None if unknown)."""
    try:
        before = int(torch.get_num_threads())
        torch.set_num_threads(threads)
    except Exception:  # a torch stub, or a build without the call: leave it alone
        return None
    return before
