"""Is a process the one we think it is? A pid plus the process's start time names one
process for good: a reused pid has another start time.

Light on purpose (no psutil on the fast path): the worker calls it before every payload.
"""

from __future__ import annotations

import os

#: Two start times closer than this (seconds) are the same process (clock ticks and the
#: boot time's rounding make the figure jitter by a few milliseconds).
SAME_PROCESS_TOLERANCE = 1.0


def same_process(pid: int, started: float | None) -> bool:
    """True when ``pid`` runs now and started at ``started`` (Unix time); a ``started`` of
    None accepts any live process with that pid."""
    now_started = process_start_time(pid)
    if now_started is None:
        return False
    return started is None or abs(now_started - started) < SAME_PROCESS_TOLERANCE


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (Unix time, as ``psutil.Process.create_time``), or
    None when it does not exist or is a zombie. Reads /proc directly on Linux (listing
    experiments must stay fast); psutil elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if stat:
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):
            return None
        return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


_BOOT_TIME: list[float] = []


def _boot_time() -> float:
    if not _BOOT_TIME:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime"):
                    _BOOT_TIME.append(float(line.split()[1]))
                    break
    return _BOOT_TIME[0]
