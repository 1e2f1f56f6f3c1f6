"""What a Slurm attempt leaves in its folder, read back: the job it was (``slurm.json``,
so any process can cancel it), the worker's error record and the tail of its log."""

from __future__ import annotations

import json
import os
from pathlib import Path

from steadyrun.attempt import folder
from steadyrun.attempt.outcome import outcome_of
from steadyrun.executors.base import ErrorInfo, Outcome

INFO_FILE = "slurm.json"  # in each attempt folder: its job id, for other processes


def cancel_recorded(attempt_dir: str | os.PathLike[str]) -> bool:
    """Cancel the Slurm job an attempt folder records (its ``slurm.json``), from any
    process: used when the controller that submitted it is gone. Returns False when
    the folder records no job."""
    from steadyrun.executors.slurm.tunnel import tunnel_from_config

    try:
        info = json.loads((Path(attempt_dir) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    tunnel = tunnel_from_config(info.get("tunnel"))
    try:
        tunnel.run(["scancel", str(info["key"])])
    finally:
        tunnel.close()
    return True


def _error_outcome(aid: str, kind: str, exit_code: int | None, err: ErrorInfo) -> Outcome:
    """The shared outcome of a worker's error record, with the kind Slurm's state gave."""
    out = outcome_of(aid, exit_code=exit_code, error=err)
    out.kind = kind
    return out


def _read_error(directory: str) -> tuple[ErrorInfo, int | None] | None:
    """The worker's ``error.json`` and the exit code it chose, or None."""
    data = folder.read_error(directory)
    if not isinstance(data, dict):
        return None
    code = data.get("exit_code")
    return ErrorInfo.from_dict(data), code if isinstance(code, int) else None


def _tail(directory: str, size: int = 8192) -> str:
    try:
        with open(os.path.join(directory, folder.STDERR_LOG), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _gres_gpus(gres: str) -> int:
    """GPUs in a node's ``%G`` (``gpu:4``, ``gpu:a100:2(S:0-1)``, ``(null)``)."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total
