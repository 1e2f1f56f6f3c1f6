"""What ``steadyrun run`` turns its command line into: tasks and an executor.

``module:function key=value ...`` becomes a ``Partial`` with the overrides applied (a
grid of tasks with ``--sweep``), a file becomes a ``Script``, and ``-- CMD ARGS`` an
inline bash command. Everything is checked here, before anything is written: a bad
target, override, option or executor raises :class:`UsageProblem` or the library's own
error, and the command exits 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from steadyrun.errors import SteadyrunError


class UsageProblem(SteadyrunError):
    """Bad input on the command line (exit code 2)."""


#: The help of every ID argument (what :meth:`steadyrun.store.db.Store.resolve_id` takes).
ID_HELP = ("Experiment id, a unique prefix of it or of its random suffix (the 4 characters "
           "at its end), or latest (latest~1: the one before it).")


def function_tasks(target: str, overrides: list[str], name: str | None,
                    sweep: bool) -> tuple[list[Any], str]:
    """Tasks running ``module:function`` with ``key=value`` overrides (a grid with --sweep)."""
    import steadyrun as run
    from steadyrun.config import import_object

    if os.getcwd() not in sys.path:  # `steadyrun run train:main` from a project folder
        sys.path.insert(0, os.getcwd())
    fn = import_object(target)
    if not callable(fn):
        raise UsageProblem(f"{target} is a {type(fn).__name__}, not a function or class; "
                           "give module:function")
    task_name = name or getattr(fn, "__name__", None) or "task"
    return payload_tasks(run.Task(task_name, run.Partial(fn)), overrides, sweep,
                         target), task_name


def payload_tasks(task: Any, overrides: list[str], sweep: bool, label: str) -> list[Any]:
    """``task`` with ``key=value`` overrides applied to a copy of its payload, each value
    read by the type hint of the parameter it sets; with ``sweep``, values with commas
    make a grid of tasks. ``label`` names the target in messages.

    Raises :class:`UsageProblem` for overrides of a script or a missing required
    argument, and :class:`~steadyrun.errors.OverrideError` (exit 2) for a bad override.
    """
    import copy
    import dataclasses

    import steadyrun as run
    from steadyrun.config import Buildable, get_path

    payload = copy.deepcopy(task.payload)
    if not isinstance(payload, Buildable):
        if overrides:
            raise UsageProblem(f"task {task.name!r} runs a script: key=value overrides "
                               "apply to configs (module:function targets) only")
        return [task]
    plain, grid_texts = _split_sweep(overrides)
    if not sweep:
        for key, texts in grid_texts.items():
            sys.stderr.write(f"note: {key}={','.join(texts)} is one value; add --sweep to "
                             "run one task per value\n")
        plain, grid_texts = overrides, {}
    run.apply_overrides(payload, plain)
    grid: dict[str, Sequence[Any]] = {}
    if grid_texts:
        trial = copy.deepcopy(payload)
        for key, texts in grid_texts.items():
            # each value read and checked on a copy: a bad key or value names itself here
            values = []
            for text in texts:
                run.apply_overrides(trial, [f"{key}={text}"])
                values.append(copy.deepcopy(get_path(trial, key)))
            grid[key] = values
    missing = _missing_arguments(payload.__fn_or_cls__, payload,
                                 {k.split(".")[0] for k in grid})
    if missing:
        raise UsageProblem(
            f"{label} needs a value for {', '.join(missing)}: add "
            + " ".join(f"{m}=VALUE" for m in missing))
    task = dataclasses.replace(task, payload=payload)
    if grid:
        return run.sweep(task, grid)
    if sweep:
        sys.stderr.write("note: --sweep found no value with a comma; running one task\n")
    return [task]


def script_tasks(path: str, script_args: list[str], name: str | None,
                  sweep: bool) -> tuple[list[Any], str]:
    import steadyrun as run

    if sweep:
        raise UsageProblem("--sweep takes module:function key=value,value...; a script "
                           "gets its arguments as they are")
    if not os.path.isfile(path):
        raise UsageProblem(f"no script file {path!r} (from {os.getcwd()}); give an existing "
                           ".py or .sh file, module:function, or `-- COMMAND ...`")
    full = os.path.abspath(path)  # the worker may start elsewhere; resume too
    payload = run.Script(path=full, args=script_args, entrypoint=_entrypoint(full))
    task_name = name or _safe_name(os.path.splitext(os.path.basename(path))[0])
    return [run.Task(task_name, payload)], task_name


def command_tasks(command: list[str], name: str | None, sweep: bool) -> tuple[list[Any], str]:
    import shlex

    import steadyrun as run

    if not command:
        raise UsageProblem("nothing after `--`: give the command to run, e.g. "
                           "`steadyrun run -- python train.py --lr 0.1`")
    if sweep:
        raise UsageProblem("--sweep takes module:function key=value,value...; not a command")
    payload = run.Script(inline=shlex.join(command))
    task_name = name or _safe_name(os.path.basename(command[0])) or "command"
    return [run.Task(task_name, payload)], task_name


def apply_task_options(tasks: list[Any], **options: Any) -> None:
    import dataclasses

    from steadyrun.task import Resources

    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return
    for i, t in enumerate(tasks):
        res = {k: given[k] for k in ("cpus", "memory", "gpus") if k in given}
        changes: dict[str, Any] = {}
        if res:
            changes["resources"] = dataclasses.replace(t.resources or Resources(), **res)
        if "timeout" in given:
            changes["timeout"] = given["timeout"]
        tasks[i] = dataclasses.replace(t, **changes)  # validates again


def looks_like_script(target: str) -> bool:
    if target.endswith((".py", ".sh", ".bash")) or os.path.isfile(target):
        return True
    if ":" in target:
        return False
    if "." not in target or "/" in target or os.sep in target:
        raise UsageProblem(
            f"{target!r} is neither module:function nor a script file; to run a command "
            f"use `steadyrun run -- {target} ...`")
    return False  # a dotted module.function


def _entrypoint(path: str) -> str:
    if path.endswith(".py"):
        return "python"
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return "bash"
    return "python" if first.startswith(b"#!") and b"python" in first else "bash"


def _split_sweep(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Plain overrides and, for ``key=a,b`` ones, the grid ``{key: ["a", "b"]}``."""
    plain, grid = [], {}
    for text in overrides:
        key, sep, value = text.partition("=")
        parts = _split_top_commas(value) if sep and key[-1:] not in "+-*/" else [value]
        if len(parts) > 1:
            if key.strip() in grid:
                raise UsageProblem(f"--sweep: {key.strip()!r} is given twice")
            grid[key.strip()] = parts
        else:
            plain.append(text)
    return plain, grid


def _split_top_commas(text: str) -> list[str]:
    """Split at commas outside brackets and quotes: ``"[1,2],[3,4]"`` -> two parts."""
    from steadyrun.config.overrides import split_top

    parts = split_top(text)
    return [p.strip() for p in parts if p.strip()] if len(parts) > 1 else parts


def _missing_arguments(fn: Any, payload: Any, given: set[str]) -> list[str]:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    have = set(getattr(payload, "__arguments__", {})) | given
    return [p.name for p in params if p.default is p.empty and p.name not in have
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _safe_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text).strip("_.") or "task"


def check_choice(option: str, value: str | None, choices: Sequence[str], what: str) -> None:
    """Refuse a filter value that can never match (``list --state runing``): a
    :class:`UsageProblem` (exit 2) naming the closest choice and every valid one.
    ``None`` (the option not given) passes."""
    names = [str(c) for c in choices]  # StrEnum members as their values
    if value is None or value in names:
        return
    import difflib

    close = difflib.get_close_matches(value.lower(), names, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageProblem(f"{option} {value!r} is not {what}{hint}; choose one of: "
                       f"{', '.join(names)}")
