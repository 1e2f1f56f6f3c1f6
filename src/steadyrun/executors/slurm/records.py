"""What a Slurm attempt leaves in its folder, read back: the job it was (``slurm.json``,
so any process can cancel it), the worker's error record and the tail of its log, and
the attempt's outcome made of them and of the job's final state."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def final_states(tunnel: Any, keys: list[str],
                 accounting: bool | None) -> tuple[dict[str, Any], bool | None]:
    """What Slurm says of jobs that left ``squeue`` (keys -> JobInfo), in ONE ``sacct``
    call, or where the cluster has no accounting (``accounting`` False, or found so
    now) in ONE ``scontrol show job`` call; and whether it has accounting."""
    from steadyrun.executors.slurm import sbatch as sb

    ids = ",".join(sb.split_keys(keys))
    found: dict[str, Any] = {}
    if accounting is not False:
        res = tunnel.run(["sacct", "-n", "-P", "-X", "-j", ids,
                          "-o", "JobID,State,ExitCode,Reason"])
        if sb.ACCOUNTING_DISABLED in (res.stdout + res.stderr).lower():
            accounting = False
        elif res.returncode == 0:
            accounting = True
            found = {k: v for k, v in sb.parse_sacct(res.stdout).items()
                     if v.state not in sb.ACTIVE_STATES}
    missing = [k for k in keys if k not in found]
    if missing:
        job_ids = sb.split_keys(missing)
        res = tunnel.run(["scontrol", "-o", "show", "job"]
                         + (job_ids if len(job_ids) == 1 else []))
        if res.returncode == 0:
            found.update(sb.parse_scontrol(res.stdout))
    return found, accounting


def job_outcome(att: Any, info: Any) -> Outcome:
    """The outcome of an attempt (the executor's record of it) whose job ended with
    ``info`` (a :class:`~steadyrun.executors.slurm.sbatch.JobInfo`; None when Slurm no
    longer knows the job): the rules of :mod:`steadyrun.executors.slurm.states`."""
    from steadyrun.executors.slurm.states import classify

    aid, directory = att.spec.attempt_id, os.fspath(att.spec.attempt_dir)
    has_result = folder.has_result(directory)
    record = folder.read_error(directory)
    worker_kind = record.get("kind") if isinstance(record, dict) else None
    found = _read_error(directory)
    err, err_code = found if found is not None else (None, None)
    if info is None:  # Slurm forgot the job (purged, no accounting): trust the files
        if has_result:
            return Outcome(aid, None, exit_code=0)
        if err is not None and att.stop_kind is None:
            return outcome_of(aid, exit_code=err_code, error=record) if (
                worker_kind == "preempted") else _error_outcome(
                aid, "oom" if err.oom else "error", err_code, err)
        return Outcome(aid, att.stop_kind or "lost",
                       message=f"Slurm no longer knows job {att.key} and it left no result")
    kind, exit_code, message = classify(info, att.stop_kind, _tail(directory),
                                        worker_kind=worker_kind, warned=att.warned)
    if kind is None:
        if has_result:
            return Outcome(aid, None, exit_code=0)
        if err is not None:
            return _error_outcome(aid, "error", exit_code, err)
        return Outcome(aid, "lost", exit_code=exit_code,
                       message=f"{message} but left no {folder.RESULT_FILE}")
    if att.requeued and kind == "preempted":
        message = (f"{att.requeued}; the job was cancelled and the next attempt runs as "
                   "a new job")
    if kind in ("error", "oom") and err is not None:
        return _error_outcome(aid, "oom" if err.oom else kind,
                              exit_code if exit_code is not None else err_code, err)
    return Outcome(aid, kind, exit_code=exit_code, message=message,
                   error=ErrorInfo("SlurmJob" + info.state.title().replace("_", ""),
                                   message) if kind in ("error", "oom") else None)


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
