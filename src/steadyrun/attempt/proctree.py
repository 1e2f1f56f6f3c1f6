"""Ending a whole process tree: SIGTERM, a grace period, SIGKILL; no orphans left.

An attempt may start children that start their own (``bash -c 'sleep 1000 &'``, data
loader workers, ``torchrun``). Killing only the root would leave them running and
holding memory and GPUs, so :func:`kill_tree` takes a snapshot of every descendant and,
when the root leads its own process group (``start_new_session=True``), every member of
that group too (this catches children whose parent already exited).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any


def kill_tree(pid: int, grace: float = 5.0, *, include_group: bool = True) -> list[int]:
    """End process ``pid`` and all its descendants; return the pids that were ended.

    Sends SIGTERM to every process of the tree (and to the process group led by ``pid``
    when ``include_group`` and ``pid`` leads one), waits up to ``grace`` seconds for them
    to exit, then sends SIGKILL to the survivors and waits for them too. A zombie counts
    as ended (its parent has to reap it; the caller's ``Popen.wait`` still gets the real
    status because this function never reaps). Processes that vanish meanwhile or that
    may not be signalled (AccessDenied) are skipped, never raised. Returns an empty list
    when ``pid`` no longer exists and has no group left.
    """
    import psutil

    procs = _snapshot(psutil, pid, include_group)
    pgid = _own_group(pid) if include_group else None
    if not procs and pgid is None:
        return []
    _signal_all(psutil, procs, pgid, signal.SIGTERM)
    alive = wait_gone(psutil, procs, grace)
    if alive or pgid is not None:
        # children started during the grace period are not in the snapshot: look again
        extra = [p for p in _snapshot(psutil, pid, include_group) if p not in procs]
        procs.extend(extra)
        alive = alive + extra
        _signal_all(psutil, alive, pgid, signal.SIGKILL)
        alive = wait_gone(psutil, alive, 5.0)
    alive_pids = {p.pid for p in alive}
    return sorted(p.pid for p in procs if p.pid not in alive_pids)


def is_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (it does not exist, or it is a zombie)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def _snapshot(psutil: Any, pid: int, include_group: bool) -> list[Any]:
    procs: list[Any] = []
    try:
        root = psutil.Process(pid)
        procs.append(root)
        procs.extend(root.children(recursive=True))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    pgid = _own_group(pid) if include_group else None
    if pgid is not None:
        known = {p.pid for p in procs}
        for p in psutil.process_iter():
            if p.pid in known:
                continue
            try:
                if os.getpgid(p.pid) == pgid:
                    procs.append(p)
            except (ProcessLookupError, PermissionError):
                continue
    return procs


def _own_group(pid: int) -> int | None:
    """``pid`` when it leads its own process group (that is not ours), else None."""
    try:
        pgid = os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
    if pgid != pid or pgid == os.getpgrp():
        return None
    return pgid


def _signal_all(psutil: Any, procs: list[Any], pgid: int | None, sig: int) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            p.send_signal(sig)


def wait_gone(psutil: Any, procs: list[Any], timeout: float,
              each_poll: Callable[[], object] | None = None) -> list[Any]:
    """Poll until every process has exited or is a zombie; return those still alive after
    ``timeout`` seconds. ``each_poll`` runs before every look (a subreaper reaps there)."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    delay = 0.002
    while True:
        if each_poll is not None:
            each_poll()
        still = []
        for p in alive:
            try:
                # is_running() also guards against a reused pid (it compares create times)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:
                still.append(p)
        alive = still
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)
