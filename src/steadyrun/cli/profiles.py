"""``steadyrun run -e SPEC [--address HOST:PORT]``: the executor a command line names,
and what ``--dryrun`` shows of it.

SPEC is a kind (``local``, ``ray``, ``slurm``), a profile of the executors file, either
with inline options (``slurm:partition=gpu,account=abc``, ``gpu:time=2h``); see
:mod:`steadyrun.executors.profiles` for the grammar and the file. Every mistake (an
unknown kind, profile or option, a value of the wrong type, a malformed file) is a
usage error: exit 2, with the valid choices in the message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from steadyrun.cli import render
from steadyrun.cli.parse import UsageProblem

#: Shown where the experiment id goes in a dry run's batch script (none exists yet).
DRYRUN_EXPERIMENT = "<experiment>"


def make_executor(spec: str, strategy: str | None = None,
                  address: str | None = None) -> tuple[Any, Any]:
    """The executor that ``-e SPEC`` (with ``--strategy`` / ``--address``) names and
    the :class:`~steadyrun.executors.profiles.ExecutorChoice` it resolved to. Raises
    :class:`UsageProblem` (exit 2) for a package that is missing, and the library's
    :class:`~steadyrun.errors.ExecutorError` (exit 2) for everything else."""
    from steadyrun.executors.profiles import executor_from_spec

    try:
        return executor_from_spec(spec, strategy=strategy, address=address)
    except ImportError as exc:
        kind = spec.partition(":")[0]
        raise UsageProblem(f"executor {kind!r} needs a package that is not installed "
                           f"({exc}); try `pip install 'steadyrun[{kind}]'`") from exc


def print_executor_dryrun(tasks: Sequence[Any], executor: Any, choice: Any) -> None:
    """What a dry run adds about the executor: where its options came from, for a Ray
    cluster its address, and for Slurm the batch script(s) it would submit. Then the
    executor is closed (a Ray connection made to ask for its capacity ends)."""
    try:
        lines = []
        if choice is not None:
            lines += [f"# executor: {line}" if i == 0 else f"# {line}"
                      for i, line in enumerate(choice.describe())]
        kind = type(executor).__name__
        if kind == "RayExecutor":
            lines.append(f"# ray cluster: {_ray_where(executor)}")
        if lines:
            render.out("\n".join(lines))
        dryrun = getattr(executor, "dryrun", None)
        if kind == "SlurmExecutor" and callable(dryrun):
            render.out("# the batch script it would submit (nothing was submitted; the "
                       "submission folder is chosen at submit time):")
            render.out(dryrun(dryrun_specs(tasks)).rstrip("\n"))
    finally:
        close = getattr(executor, "close", None)
        if callable(close):
            close()


def dryrun_specs(tasks: Sequence[Any]) -> list[Any]:
    """Attempt specs for the first attempt of each task, as the engine would make them,
    in an experiment folder named :data:`DRYRUN_EXPERIMENT` (nothing is created)."""
    from steadyrun.executors.base import AttemptSpec
    from steadyrun.store.connection import default_home
    from steadyrun.store.files import task_dir_name

    base = default_home() / "experiments" / DRYRUN_EXPERIMENT / "tasks"
    specs = []
    for t in tasks:
        env = {"STEADYRUN_EXPERIMENT": DRYRUN_EXPERIMENT, "STEADYRUN_TASK": t.name,
               "STEADYRUN_ATTEMPT": "1", "STEADYRUN_CPUS": f"{t.resources.cpus:g}"}
        specs.append(AttemptSpec(
            attempt_id=f"{DRYRUN_EXPERIMENT}/{t.name}/1", task=t.name, number=1,
            payload=t.payload, attempt_dir=base / task_dir_name(t.name) / "1",
            resources=t.resources, env=env))
    return specs


def _ray_where(executor: Any) -> str:
    address = getattr(executor, "address", None)
    if address:
        return f"{address} (connected to ask for its capacity; nothing was submitted)"
    env = next((v for v in ("RAY_ADDRESS", "STEADYRUN_RAY_ADDRESS") if os.environ.get(v)),
               None)
    if env:
        return f"{os.environ[env]} (from {env})"
    return ("none given: a private Ray instance would start on this machine (give "
            "--address, or set RAY_ADDRESS, to use a running cluster)")
