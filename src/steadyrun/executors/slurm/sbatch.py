"""The text side of the Slurm executor, with no I/O: sbatch options, the batch script,
and reading what ``sbatch``, ``squeue``, ``sacct`` and ``scontrol`` print.

Quoting, as rules (a test proves each):

1. Every value that reaches the shell body of the script (paths, environment values, the
   python command, the container image) is quoted with :func:`shlex.quote`.
2. ``#SBATCH`` lines are parsed by sbatch, not by the shell: a value is written bare when
   it holds only safe characters, else inside double quotes with ``\\`` and ``"``
   escaped (sbatch's own rules); a value with a line break or NUL is refused, since no
   quoting survives a line break in a directive.
3. The job name is reduced to ``[A-Za-z0-9_.+-]``: it is shown by every Slurm command and
   never needs quoting.
4. Paths never appear in ``#SBATCH`` lines: ``--output``/``--error`` are relative to the
   submission folder, which is given to sbatch as a separate argument (``--chdir``).
5. ``setup_lines`` are the user's own shell code and are copied verbatim.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from steadyrun.attempt.folder import STDERR_LOG, STDOUT_LOG
from steadyrun.errors import ExecutorError
from steadyrun.executors.slurm.preempt import forwarding_lines, restart_guard
from steadyrun.executors.slurm.states import ACTIVE_STATES, STATE_KINDS, classify

#: Long options of ``sbatch`` (Slurm 22.05) that ``additional_parameters`` may set.
SBATCH_PARAMETERS = frozenset([
    "account", "acctg-freq", "batch", "bb", "bbf", "begin", "cluster-constraint", "clusters",
    "comment", "constraint", "container", "contiguous", "core-spec", "cores-per-socket",
    "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline", "delay-boot", "dependency",
    "distribution", "exclude", "exclusive", "export", "export-file", "extra-node-info",
    "get-user-env", "gid", "gpu-bind", "gpu-freq", "gpus", "gpus-per-node", "gpus-per-socket",
    "gpus-per-task", "gres", "gres-flags", "hint", "hold", "ignore-pbs", "job-name",
    "kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mcs-label", "mem", "mem-bind",
    "mem-per-cpu", "mem-per-gpu", "mincpus", "network", "nice", "no-kill", "no-requeue",
    "nodefile", "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu",
    "ntasks-per-node", "ntasks-per-socket", "overcommit", "oversubscribe", "partition", "power",
    "prefer", "priority", "profile", "propagate", "qos", "reboot", "requeue", "reservation",
    "signal", "sockets-per-node", "spread-job", "switches", "thread-spec", "threads-per-core",
    "time", "time-min", "tmp", "uid", "use-min-nodes", "wckey",
])

#: Options the executor writes itself; setting them is refused with this reason.
MANAGED_PARAMETERS = {
    "output": f"logs go to the attempt folder ({STDOUT_LOG})",
    "error": f"logs go to the attempt folder ({STDERR_LOG})",
    "open-mode": "logs are appended to",
    "array": "set array=True/False on the executor; arrays are built from admitted tasks",
    "chdir": "the job runs in its submission folder",
    "parsable": "the executor reads the job id itself",
    "wrap": "the executor writes the batch script",
    "wait": "the executor polls; a blocking sbatch would stall it",
    "signal": "set SlurmExecutor(signal='USR1@90'): the batch script passes it on",
    "requeue": "set SlurmExecutor(requeue=True): a requeued job is followed by a new one",
    "no-requeue": "it is the default: set SlurmExecutor(requeue=True) to allow requeues",
}

ACCOUNTING_DISABLED = "accounting storage is disabled"
_SAFE_DIRECTIVE = re.compile(r"^[A-Za-z0-9_.,:=/@%+*^-]*$")
_BAD_DIRECTIVE = re.compile(r"[\n\r\x00]")


@dataclass(frozen=True)
class ScriptEntry:
    """One attempt of a batch script: its array index and the variables it exports."""

    index: int
    env: Mapping[str, str]


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says of one job (or one array element): ``key`` is ``"ID"`` or
    ``"ARRAYID_INDEX"``; ``exit_code``/``signal`` come from ``ExitCode=N:S``."""

    key: str
    state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    restarts: int | None = None  # how often Slurm requeued it (scontrol's Restarts)


# --- options -----------------------------------------------------------------------------


def normalize_parameters(params: Mapping[str, object]) -> dict[str, object]:
    """``additional_parameters`` with ``_`` turned into ``-``; unknown or managed names
    raise :class:`ExecutorError` listing the known ones."""
    out: dict[str, object] = {}
    unknown = []
    for raw, value in params.items():
        name = str(raw).strip().lstrip("-").replace("_", "-")
        if name in MANAGED_PARAMETERS:
            raise ExecutorError(
                f"SlurmExecutor(additional_parameters={{{raw!r}: ...}}): {name!r} is set by "
                f"the executor ({MANAGED_PARAMETERS[name]})")
        if name not in SBATCH_PARAMETERS:
            unknown.append(str(raw))
        out[name] = value
    if unknown:
        raise ExecutorError(
            f"Unavailable sbatch parameter(s) {unknown} in SlurmExecutor("
            f"additional_parameters=...). Valid parameters are: "
            f"{', '.join(sorted(SBATCH_PARAMETERS))}")
    return out


def directive(name: str, value: object = True) -> str | None:
    """One ``#SBATCH`` line (rule 2), or ``None`` for ``False``/``None`` values."""
    if value is None or value is False:
        return None
    if value is True:
        return f"#SBATCH --{name}"
    text = str(value)
    if _BAD_DIRECTIVE.search(text):
        raise ExecutorError(
            f"sbatch option --{name}={text!r}: a value with a line break or NUL cannot be "
            "written into a batch script; remove it")
    if not _SAFE_DIRECTIVE.match(text) or text == "":
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"#SBATCH --{name}={text}"


def time_option(value: str | int | None) -> str | None:
    """``--time`` value from minutes or ``"[days-]hours:minutes:seconds"`` (None: none);
    anything else raises :class:`ExecutorError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ExecutorError(f"SlurmExecutor(time={value!r}): give minutes or "
                            "'[days-]hours:minutes:seconds'")
    return str(value)


def job_name(text: str) -> str:
    """A job name safe everywhere (rule 3), at most 64 characters."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")[:64]
    return safe or "steadyrun"


def memory_option(num_bytes: int) -> str:
    """``--mem`` value in MiB, rounded up (Slurm's default unit is MiB)."""
    return f"{max(1, math.ceil(num_bytes / (1 << 20)))}M"


# --- the batch script --------------------------------------------------------------------


def render_script(*, directives: Sequence[str], submit_dir: str, entries: Sequence[ScriptEntry],
                  python: str, env: Mapping[str, str] | None = None,
                  setup_lines: Sequence[str] = (), container_image: str | None = None,
                  module: str | None = None, container_mounts: Sequence[str] = (),
                  container_workdir: str | None = None, signal: str | None = None) -> str:
    """The batch script for one job (one entry) or one job array (several).

    Each array index ``i`` runs ``python -m steadyrun.attempt.worker SUBMIT_DIR/i``, where
    ``SUBMIT_DIR/i`` is the attempt folder (a link to it, or its copy on a remote
    cluster); the entry's variables are exported first. The worker's exit status is the
    job's. ``module`` runs another entry point instead (a gang's leader,
    ``steadyrun.launchers.srun``, which starts the ranks with ``srun`` itself: with a
    ``container_image`` it passes the image on to that ``srun``). A rerun of a requeued
    job exits 76 at once; ``signal`` (``"USR1"``): the signal Slurm sends this shell
    before the time limit, passed on to the worker as SIGUSR1
    (:mod:`steadyrun.executors.slurm.preempt`)."""
    q = shlex.quote
    target = module or "steadyrun.attempt.worker"
    lines = ["#!/bin/bash",
             f"# steadyrun: runs `python -m {target} ATTEMPT_DIR` for each array index",
             *directives,
             "",
             *restart_guard(),
             'STEADYRUN_INDEX="${SLURM_ARRAY_TASK_ID:-0}"',
             f'ATTEMPT_DIR={q(submit_dir)}/"$STEADYRUN_INDEX"',
             'case "$STEADYRUN_INDEX" in']
    for entry in entries:
        exports = " ".join(f"{_env_name(k)}={q(str(v))}" for k, v in sorted(entry.env.items()))
        lines.append(f"    {int(entry.index)}) export {exports} ;;" if exports
                     else f"    {int(entry.index)}) ;;")
    lines += ['    *) echo "steadyrun: no attempt for array index $STEADYRUN_INDEX" >&2; exit 2 ;;',
              "esac"]
    for k, v in sorted((env or {}).items()):
        lines.append(f"export {_env_name(k)}={q(str(v))}")
    if setup_lines:
        lines += ["# setup_lines", *setup_lines]
    worker = f'{q(python)} -m {q(target)} "$ATTEMPT_DIR"'
    if container_image and module is not None:
        command = (f'{q(python)} -m {q(target)} --container-image={q(container_image)} '
                   '"$ATTEMPT_DIR"')
    elif container_image:  # mounts and workdir were checked: no quotes, '$' is ours
        mounts = ",".join(["$ATTEMPT_DIR:$ATTEMPT_DIR", *container_mounts])
        workdir = f' --container-workdir="{container_workdir}"' if container_workdir else ""
        lines.append('ATTEMPT_DIR="$(readlink -f "$ATTEMPT_DIR")"')
        command = (f"srun --ntasks=1 --container-image={q(container_image)} "
                   f'--container-mounts="{mounts}"{workdir} {worker}')
    else:
        command = worker
    if signal is None:
        lines.append(f"exec {command}")
    else:  # the warning before the time limit reaches this shell: pass it on
        lines += forwarding_lines(command, signal, gang=module is not None)
    return "\n".join(lines) + "\n"


def _env_name(name: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ExecutorError(f"environment variable name {name!r} is not valid in a shell")
    return name


def array_spec(count: int, limit: int | None = None) -> str:
    """``--array`` value for indices ``0..count-1`` (``%limit`` caps how many run)."""
    spec = f"0-{count - 1}" if count > 1 else "0"
    return f"{spec}%{limit}" if limit else spec


# --- reading Slurm's answers ----------------------------------------------------------------


def parse_job_id(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``ID`` or ``ID;CLUSTER``)."""
    for line in stdout.strip().splitlines()[::-1]:
        head = line.strip().split(";")[0]
        if head.isdigit():
            return head
    raise ExecutorError(f"sbatch printed no job id: {stdout.strip()[:300]!r}")


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Lines of ``squeue -h -r -o '%i %T %r'`` -> key -> info."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            jobs[parts[0]] = JobInfo(parts[0], parts[1].upper(),
                                     parts[2].strip() if len(parts) == 3 else "")
    return jobs


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Lines of ``sacct -n -P -X -o JobID,State,ExitCode,Reason`` -> key -> info
    (steps such as ``12.batch`` are ignored; ``CANCELLED by 0`` is ``CANCELLED``)."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or "." in parts[0]:
            continue
        code, sig = _exit_code(parts[2])
        state = parts[1].split()[0].upper() if parts[1].strip() else "UNKNOWN"
        jobs[parts[0]] = JobInfo(parts[0], state, parts[3] if len(parts) > 3 else "",
                                 code, sig)
    return jobs


def parse_scontrol(text: str) -> dict[str, JobInfo]:
    """``scontrol -o show job`` (one job per line) -> key -> info."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        fields = {m.group(1): m.group(2)
                  for m in re.finditer(r"(?:^|\s)([A-Za-z/:_]+)=(\S*)", line)}
        if "JobId" not in fields or "JobState" not in fields:
            continue
        array_id, task_id = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        key = (f"{array_id}_{task_id}" if array_id and task_id and task_id.isdigit()
               else fields["JobId"])
        code, sig = _exit_code(fields.get("ExitCode", ""))
        restarts = fields.get("Restarts", "")
        jobs[key] = JobInfo(key, fields["JobState"].upper(), fields.get("Reason", ""),
                            code, sig, int(restarts) if restarts.isdigit() else None)
    return jobs


def _exit_code(text: str) -> tuple[int | None, int | None]:
    code, _, sig = text.partition(":")
    return (int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else None)


def split_keys(keys: Iterable[str]) -> list[str]:
    """Distinct job ids of keys ``ID`` / ``ID_INDEX`` (what squeue and scancel take)."""
    return sorted({k.split("_")[0] for k in keys}, key=lambda s: (len(s), s))


__all__ = ["ACCOUNTING_DISABLED", "ACTIVE_STATES", "JobInfo", "MANAGED_PARAMETERS",
           "SBATCH_PARAMETERS", "STATE_KINDS", "ScriptEntry", "array_spec", "classify",
           "directive", "job_name", "memory_option", "normalize_parameters", "parse_job_id",
           "parse_sacct", "parse_scontrol", "parse_squeue", "render_script", "split_keys",
           "time_option"]
