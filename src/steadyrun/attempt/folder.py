"""The attempt folder: its file names, atomic writes, the identity file, and reading back
what an attempt left (error record, log tail, result presence).

Every other module names a file of an attempt folder through the constants here. This
module is light (standard library only): the worker imports it before every payload.

What a folder may hold:

=================== ===================================================================
``payload.yaml``    the payload as YAML (or ``payload.pkl``, cloudpickle)
``identity.json``   written by the worker *before* the payload starts: pid, process
                    start time, attempt id, host, controller pid, pool worker or not
``stdout.log``      what the attempt printed (absent when it printed nothing)
``stderr.log``
``result.pkl``      the return value, on success (its presence means "finished")
``error.json``      ``{type, message, traceback, oom, exit_code}`` on failure
``samples.json``    resource samples taken where the attempt ran (remote executors)
=================== ===================================================================
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steadyrun.attempt.fsio import make_dir
from steadyrun.attempt.names import (
    ATTEMPT_ID_ENV,
    CONTROLLER_PID_ENV,
    ERROR_FILE,
    IDENTITY_FILE,
    PAYLOAD_PKL,
    PAYLOAD_YAML,
    RESULT_FILE,
    SAMPLES_FILE,
    STDERR_LOG,
    STDOUT_LOG,
)

LOG_TAIL_LINES = 20

__all__ = [
    "ATTEMPT_ID_ENV",
    "CONTROLLER_PID_ENV",
    "ERROR_FILE",
    "IDENTITY_FILE",
    "PAYLOAD_PKL",
    "PAYLOAD_YAML",
    "RESULT_FILE",
    "SAMPLES_FILE",
    "STDERR_LOG",
    "STDOUT_LOG",
    "Identity",
    "atomic_write",
    "make_dir",
    "has_result",
    "log_tail",
    "read_error",
    "read_identity",
    "write_identity",
]


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``, owner-only
    (``mode``, 0600 unless a script needs 0700): a reader sees the old file or the whole
    new one, never half of it."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # a umask such as 0o277 cannot take bits away
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Identity:
    """Who runs (or ran) an attempt: enough to find that exact process again after its
    controller died, even when the pid has since been reused."""

    attempt_id: str
    pid: int
    started: float  # the process's start time (Unix time), as /proc tells it
    host: str
    controller_pid: int | None = None
    pool: bool = False  # a reusable pool worker: it may later run other attempts
    written_at: float = 0.0

    def alive(self) -> bool:
        """True when this process still runs on this host (same pid, same start time)."""
        from steadyrun.attempt.liveness import same_process

        return self.host == socket.gethostname() and same_process(self.pid, self.started)


def write_identity(attempt_dir: str | os.PathLike[str], attempt_id: str, *,
                   pool: bool = False, controller_pid: int | None = None) -> Identity:
    """Record this process as the one running ``attempt_id`` (atomically)."""
    from steadyrun.attempt.liveness import process_start_time

    pid = os.getpid()
    ident = Identity(attempt_id=attempt_id, pid=pid, started=process_start_time(pid) or 0.0,
                     host=socket.gethostname(), controller_pid=controller_pid, pool=pool,
                     written_at=time.time())
    atomic_write(os.path.join(os.fspath(attempt_dir), IDENTITY_FILE),
                 json.dumps(asdict(ident)).encode())
    return ident


def read_identity(attempt_dir: str | os.PathLike[str]) -> Identity | None:
    """The identity a worker recorded in ``attempt_dir``, or None (not written yet,
    unreadable, or not an identity)."""
    try:
        data = json.loads(Path(attempt_dir, IDENTITY_FILE).read_bytes())
        return Identity(attempt_id=str(data["attempt_id"]), pid=int(data["pid"]),
                        started=float(data["started"]), host=str(data["host"]),
                        controller_pid=data.get("controller_pid"),
                        pool=bool(data.get("pool", False)),
                        written_at=float(data.get("written_at", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_result(attempt_dir: str | os.PathLike[str]) -> bool:
    """True when the attempt finished and left its value (``result.pkl``)."""
    return os.path.exists(os.path.join(os.fspath(attempt_dir), RESULT_FILE))


def read_error(attempt_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The error record the worker wrote, or None."""
    try:
        return json.loads(Path(attempt_dir, ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None


def log_tail(attempt_dir: str | os.PathLike[str], lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of an attempt's stdout and of its stderr, each under its
    name when both have something."""
    tails = []
    for name, file in (("stdout", STDOUT_LOG), ("stderr", STDERR_LOG)):
        from steadyrun.attempt.logread import tail_bytes  # knows a capped log's parts

        text = tail_bytes(Path(attempt_dir, file), 64 * 1024).decode("utf-8", "replace")
        if text.strip():
            tails.append((name, "\n".join(text.rstrip().splitlines()[-lines:])))
    if len(tails) == 1:
        return tails[0][1]
    return "\n".join(f"[{name}]\n{text}" for name, text in tails)
