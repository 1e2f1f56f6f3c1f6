"""Run definitions as YAML files: what ``steadyrun run --to-yaml`` writes and ``--config``
reads back.

The shape is the YAML part of ``--dryrun`` (and of what an experiment records)::

    title: mnist                                  # optional
    executor: {type: LocalExecutor, strategy: subprocess}    # optional
    tasks:
    - name: train
      payload: !partial:train:main                # or {_target_: train.main, lr: 0.001}
        lr: 0.001
      resources: {cpus: 1, memory: null, gpus: 0} # optional, as are timeout, retry,
      timeout: 2h                                 # degrade and depends_on

A file may also hold one payload alone: a ``!partial:`` / ``!config:`` tagged config or a
``{_target_: ...}`` mapping, which runs as one task named after its target.

Reading a file imports the modules of its targets, which runs their code: read files
you trust. Python tags (``!!python/object``) are refused. Script env values are written
as references to variables of the same name, never as values.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadyrun.cli.parse import UsageProblem

_TASK_KEYS = ("name", "payload", "resources", "timeout", "retry", "degrade", "depends_on")


@dataclass
class RunFile:
    """What a run file defines: ``tasks``, and the ``title`` and ``executor`` when it
    names them (None otherwise)."""

    tasks: list[Any]
    title: str | None = None
    executor: Any = None


def read_run_file(path: str) -> RunFile:
    """The run definition in the YAML file at ``path`` (``-`` reads standard input).

    Raises :class:`UsageProblem` for a missing file or a shape that is not a run
    definition, and the config layer's errors (naming the file and the dotted path) for
    malformed YAML, a target that does not import, or a field of the wrong type.
    """
    from steadyrun.config import from_yaml
    from steadyrun.config.hints import NO_HINT
    from steadyrun.config.typed import TARGET_KEY, convert_value
    from steadyrun.errors import ConfigError, TaskDefinitionError

    source = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UsageProblem(f"--config {path}: not UTF-8 text ({exc})") from None
    data = from_yaml(text, source=source)
    try:
        if _is_payload(data, TARGET_KEY):
            payload = convert_value(data, NO_HINT, "payload")
            return RunFile(tasks=[_task({"payload": payload}, 0, source)])
        if not isinstance(data, dict) or "tasks" not in data:
            raise UsageProblem(
                f"{source} is not a run definition: expected a mapping with 'tasks' (what "
                "`steadyrun run ... --to-yaml` writes), or one config (a !partial: tag or a "
                f"{TARGET_KEY} mapping)")
        unknown = sorted(set(data) - {"title", "executor", "tasks"}, key=str)
        if unknown:
            raise UsageProblem(f"{source}: unknown key {unknown[0]!r}; a run definition has "
                               "title, executor and tasks")
        entries = data["tasks"]
        if not isinstance(entries, list) or not entries:
            raise UsageProblem(f"{source}: 'tasks' must be a non-empty list")
        tasks = [_task(entry, i, source) for i, entry in enumerate(entries)]
        title = data.get("title")
        if title is not None and not isinstance(title, str):
            raise UsageProblem(f"{source}: 'title' must be text, got {title!r}")
        executor = data.get("executor")
        return RunFile(tasks=tasks, title=title,
                       executor=None if executor is None else _executor(executor, source))
    except (ConfigError, TaskDefinitionError) as exc:
        raise type(exc)(f"{source}: {exc}") from exc.__cause__


def file_tasks(loaded: RunFile, overrides: list[str], name: str | None,
               sweep: bool) -> list[Any]:
    """The tasks of a run file with ``key=value`` overrides applied to every config payload
    (typed by its target's hints; a grid with ``sweep``), renamed to ``name`` when given.

    Raises :class:`UsageProblem` for ``name`` with several tasks, overrides of a script,
    or an option among the overrides; :class:`~steadyrun.errors.OverrideError` for a bad
    override."""
    import dataclasses

    from steadyrun.cli.parse import payload_tasks

    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        raise UsageProblem(f"unknown option {bad[0]!r} for `steadyrun run`; overrides are "
                           "key=value")
    tasks = list(loaded.tasks)
    if name is not None:
        if len(tasks) != 1:
            raise UsageProblem(f"--name gives one task a name, but the file has {len(tasks)} "
                               "tasks")
        tasks = [dataclasses.replace(tasks[0], name=name)]
    if not overrides and not sweep:
        return tasks
    result: list[Any] = []
    for t in tasks:
        result.extend(payload_tasks(t, overrides, sweep, f"task {t.name!r}"))
    return result


def run_file_text(title: str, tasks: list[Any], executor: Any) -> str:
    """The YAML text of a run definition; :func:`read_run_file` reads it back to the same
    tasks, title and executor. Raises the config layer's ``SerializationError`` naming
    the path of a value YAML cannot hold (a lambda, an arbitrary instance)."""
    from steadyrun.config import to_yaml
    from steadyrun.config.secrets import withhold

    entries = []
    for t in tasks:
        entry: dict[str, Any] = {"name": t.name, "payload": withhold(t.payload)}
        r = t.resources
        entry["resources"] = {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}
        if r.enforce:
            entry["resources"]["enforce"] = True
        if t.timeout is not None:
            entry["timeout"] = t.timeout
        if t.retry is not None:
            entry["retry"] = vars(t.retry) | {"on": list(t.retry.on)}
        if t.degrade is not None:
            entry["degrade"] = dict(vars(t.degrade))
        if t.depends_on:
            entry["depends_on"] = list(t.depends_on)
        entries.append(entry)
    return to_yaml({"title": title, "executor": executor.to_config(), "tasks": entries})


def write_run_file(text: str, dest: str) -> None:
    """Write ``text`` to the file ``dest`` (``-``: standard output), atomically.

    Raises :class:`UsageProblem` when the file cannot be written."""
    import os
    import tempfile

    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    folder = os.path.dirname(os.path.abspath(dest))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".steadyrun-", suffix=".yaml", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise UsageProblem(f"--to-yaml {dest}: cannot write it ({exc.strerror or exc})") \
            from None


def default_to_yaml(args: list[str]) -> list[str]:
    """``args`` with ``-`` added after a ``--to-yaml`` that has no file: one that is last,
    or followed by an option, a ``key=value`` override or a ``module:function`` target."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg != "--to-yaml":
            continue
        following = out[i + 1] if i + 1 < len(out) else None
        if following is None or not _looks_like_file(following):
            out.insert(i + 1, "-")
        break
    return out


def _looks_like_file(arg: str) -> bool:
    if arg == "-":
        return True
    if arg.startswith("-") or "=" in arg:
        return False
    # a module:function target is not a file name
    return ":" not in arg or "/" in arg or arg.endswith((".yaml", ".yml"))


# --- helpers ----------------------------------------------------------------------------


def _is_payload(data: Any, target_key: str) -> bool:
    from steadyrun.config import Buildable, Script

    return (isinstance(data, Buildable | Script)
            or (isinstance(data, dict) and target_key in data))


def _task(entry: Any, index: int, source: str) -> Any:
    import steadyrun as run
    from steadyrun.config import Buildable, Script
    from steadyrun.config.hints import NO_HINT
    from steadyrun.config.typed import convert_value
    from steadyrun.task import Degrade, Resources, Retry

    where = f"tasks.{index}"
    if not isinstance(entry, dict) or "payload" not in entry:
        raise UsageProblem(f"{source}: {where} must be a mapping with a 'payload'")
    unknown = sorted(set(entry) - set(_TASK_KEYS), key=str)
    if unknown:
        raise UsageProblem(f"{source}: {where} has an unknown key {unknown[0]!r}; a task has "
                           f"{', '.join(_TASK_KEYS)}")
    payload = convert_value(entry["payload"], NO_HINT, f"{where}.payload")
    if not isinstance(payload, Buildable | Script):
        raise UsageProblem(f"{source}: {where}.payload must be a config (a !partial: tag or "
                           f"a _target_ mapping) or a !script, got {payload!r}")
    name = entry.get("name")
    if name is None:
        name = getattr(getattr(payload, "__fn_or_cls__", None), "__name__", None) or "task"
    options: dict[str, Any] = {}
    try:
        if entry.get("resources") is not None:
            options["resources"] = Resources(**_mapping(entry["resources"], "resources"))
        if entry.get("retry") is not None:
            options["retry"] = Retry(**_mapping(entry["retry"], "retry"))
        if entry.get("degrade") is not None:
            options["degrade"] = Degrade(**_mapping(entry["degrade"], "degrade"))
    except TypeError as exc:  # an unknown or missing field
        raise UsageProblem(f"{source}: {where}: {exc}") from None
    return run.Task(name, payload, timeout=entry.get("timeout"),
                    depends_on=entry.get("depends_on") or (), **options)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a mapping, got {value!r}")
    return value


def _executor(config: Any, source: str) -> Any:
    from steadyrun.executors import executor_from_config

    if not isinstance(config, dict) or "type" not in config:
        raise UsageProblem(f"{source}: 'executor' must be a mapping with a 'type' (as "
                           "--to-yaml writes it), e.g. {type: LocalExecutor}")
    try:
        return executor_from_config(config)
    except TypeError as exc:
        raise UsageProblem(f"{source}: executor: {exc}") from None
