"""An experiment's definition: what ran, where it ran, and where it was launched from.

The one module that writes an experiment's definition into its folder and reads it
back, so that ``resume``, the background controller (``python -m steadyrun.controller``)
and ``Experiment.from_id`` rebuild exactly what the launching process ran:

``launch.json``
    the folder the experiment was launched from and the import path (``sys.path``) of
    the launching process, absolute. Plain JSON: it is read *before*
    ``definition.yaml``, whose payloads import their modules while they are read.
``definition.yaml``
    the title, the default executor, the executors that tasks were given of their
    own (``task_executors``; a task names its executor by position there), the order,
    and every task with its payload, resources, retry, degradation, timeout and
    dependencies.
``tasks/<task>/payload.pkl``
    a payload that has no import path (a lambda, a closure, a function of
    ``__main__``), kept as cloudpickle and named in the YAML. Only files inside the
    experiment's own folder are ever unpickled.

Experiments written before ``launch.json`` existed load as before, without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.errors import SerializationError, SteadyrunError, StoreError
from steadyrun.store.db import Store, task_dir_name

DEFINITION_FILE = "definition.yaml"
LAUNCH_FILE = "launch.json"


@dataclass
class Definition:
    """An experiment as it was defined: ``title``, ``tasks`` (each with its own
    executor where it had one), the default ``executor``, ``launch_dir`` (None for
    experiments recorded before it was) and ``import_path`` (the launching process's
    ``sys.path``)."""

    title: str
    tasks: list[Any]
    executor: Any
    launch_dir: Path | None = None
    import_path: list[str] = field(default_factory=list)


def dump_definition(title: str, tasks: list[Any], order: list[str], executor: Any,
                    ) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """The definition files of a new experiment (relative path -> content) and the task
    records for the store, taken from the calling process (its folder and
    ``sys.path`` are the launch context).

    Payloads of plain values and configs (the usual sweep) are written one line per
    task by :mod:`steadyrun.config._flow`, some tens of microseconds each; the rest
    (scripts, pickled payloads, other objects) through :func:`steadyrun.config.to_yaml`.

    Raises :class:`~steadyrun.errors.SerializationError` when an executor's
    ``to_config()`` cannot be written as YAML."""
    files = _fast_files(title, tasks, order, executor)
    plain = files is not None  # every payload is plain values and configs
    if files is None:
        files = _files(title, tasks, order, executor)
    files[LAUNCH_FILE] = json.dumps({"launch_dir": _cwd(),
                                     "import_path": current_import_path()},
                                    indent=1).encode()
    records: list[dict[str, Any]] = []
    for t, fingerprint in zip(tasks, _fingerprints(tasks, plain), strict=True):
        records.append({"name": t.name, "depends_on": list(t.depends_on),
                        "resources": _resources(t), "fingerprint": fingerprint})
    return files, records


def _resources(t: Any) -> dict[str, Any]:
    return {"cpus": t.resources.cpus, "memory": t.resources.memory,
            "gpus": t.resources.gpus, "enforce": t.resources.enforce}


def _definition(title: str, tasks: list[Any], order: list[str], executor: Any,
                payload_of: Any) -> dict[str, Any]:
    """The definition as plain data, each task's payload as ``payload_of`` gives it."""
    entries: list[dict[str, Any]] = []
    own: dict[int, int] = {}  # id(executor) -> its position in task_executors
    task_executors: list[dict[str, Any]] = []
    for t in tasks:
        entry: dict[str, Any] = {"name": t.name, "payload": payload_of(t.payload),
                                 "resources": _resources(t)}
        if t.retry is not None:
            entry["retry"] = vars(t.retry) | {"on": list(t.retry.on)}
        if t.degrade is not None:
            entry["degrade"] = dict(vars(t.degrade))
        if t.timeout is not None:
            entry["timeout"] = t.timeout
        if t.checkpoint_on_timeout:
            entry["checkpoint_on_timeout"] = True
        if t.depends_on:
            entry["depends_on"] = list(t.depends_on)
        if t.executor is not None and t.executor is not executor:
            # by position, not by value: two equal executors keep separate capacities
            if id(t.executor) not in own:
                own[id(t.executor)] = len(task_executors)
                task_executors.append(t.executor.to_config())
            entry["executor"] = own[id(t.executor)]
        entries.append(entry)
    definition: dict[str, Any] = {"title": title, "executor": executor.to_config()}
    if task_executors:
        definition["task_executors"] = task_executors
    definition |= {"order": order, "tasks": entries}
    return definition


def _fast_files(title: str, tasks: list[Any], order: list[str], executor: Any,
                ) -> dict[str, bytes] | None:
    """The definition written by :mod:`steadyrun.config._flow`, or None when a value
    needs :func:`~steadyrun.config.to_yaml`. Payloads go in as they are: one that holds
    a Script (whose env :func:`withhold` edits) is refused by the writer."""
    from steadyrun.config import _flow

    text = _flow.write(_definition(title, tasks, order, executor, lambda p: p))
    return None if text is None else {DEFINITION_FILE: text.encode()}


def _files(title: str, tasks: list[Any], order: list[str], executor: Any,
           ) -> dict[str, bytes]:
    import cloudpickle

    from steadyrun import config
    from steadyrun.config.secrets import withhold

    files: dict[str, bytes] = {}
    # env values are never written: names and secrets' names only
    definition = _definition(title, tasks, order, executor, withhold)
    try:
        text = config.to_yaml(definition)  # one pass when every payload has an import path
    except SerializationError:
        for entry in definition["tasks"]:
            try:
                config.to_yaml(entry["payload"])
            except SerializationError:
                rel = f"tasks/{task_dir_name(entry['name'])}/payload.pkl"
                files[rel] = cloudpickle.dumps(entry["payload"])
                entry["payload"] = {"cloudpickle": rel}
        text = config.to_yaml(definition)
    files[DEFINITION_FILE] = text.encode()
    return files


def _fingerprints(tasks: list[Any], plain: bool) -> list[str | None]:
    """Each task's payload fingerprint (None for one that has no stable form);
    ``plain`` as :func:`steadyrun.config._yaml.fingerprints` takes it."""
    from steadyrun import config
    from steadyrun.config._yaml import fingerprints

    try:
        return list(fingerprints([t.payload for t in tasks], plain=plain))
    except SerializationError:
        pass
    out: list[str | None] = []
    for t in tasks:
        try:
            out.append(config.fingerprint(t.payload))
        except SerializationError:
            out.append(None)
    return out


def load_definition(store: Store, exp_id: str) -> Definition:
    """The definition of experiment ``exp_id``, rebuilt.

    First adds the launching process's import path to ``sys.path`` (appended, so
    nothing importable here changes), so that its modules import here and in the
    workers started from here, wherever this runs from. Raises :class:`StoreError` when
    the definition is missing or unreadable, or a payload file lies outside the
    experiment's folder; :class:`~steadyrun.errors.ConfigError` when a task's module
    cannot be imported here."""
    import cloudpickle

    from steadyrun.config import _flow, from_yaml
    from steadyrun.executors import executor_from_config
    from steadyrun.task import Degrade, Resources, Retry, Task

    folder = store.experiment_dir(exp_id)
    launch_dir, import_path = _read_launch(folder, exp_id)
    extend_import_path(import_path)
    try:
        text = (folder / DEFINITION_FILE).read_text()
    except OSError as exc:
        raise StoreError(f"cannot read the definition of experiment {exp_id} in {folder}: "
                         f"{exc}") from exc
    try:
        definition = _flow.read(text)  # the one-line-per-task shape: fast
        if definition is None:
            definition = from_yaml(text, source=str(folder / DEFINITION_FILE))
    except SerializationError as exc:
        raise StoreError(f"the definition of experiment {exp_id} in {folder} is "
                         f"unreadable: {exc}") from exc
    except SteadyrunError as exc:  # a task's module does not import here
        raise type(exc)(f"experiment {exp_id}: {exc}"
                        + (f" (it was launched from {launch_dir})" if launch_dir else "")
                        ) from exc
    own = [executor_from_config(c) for c in definition.get("task_executors", ())]
    tasks = []
    for entry in definition["tasks"]:
        payload = entry["payload"]
        if isinstance(payload, dict) and set(payload) == {"cloudpickle"}:
            path = (folder / payload["cloudpickle"]).resolve()
            if folder.resolve() not in path.parents:
                raise StoreError(f"experiment {exp_id}: payload path {path} is outside "
                                 "the experiment's folder; it is not read")
            try:
                with open(path, "rb") as f:
                    payload = cloudpickle.load(f)
            except (OSError, ImportError, AttributeError) as exc:
                raise StoreError(f"experiment {exp_id}, task {entry['name']!r}: cannot load "
                                 f"its payload from {path}: {exc}") from exc
        retry = entry.get("retry")
        degrade = entry.get("degrade")
        index = entry.get("executor")
        tasks.append(Task(
            entry["name"], payload, resources=Resources(**entry["resources"]),
            retry=Retry(**retry) if retry else None,
            degrade=Degrade(**degrade) if degrade else None,
            timeout=entry.get("timeout"), depends_on=entry.get("depends_on", ()),
            executor=own[index] if index is not None else None,
            checkpoint_on_timeout=bool(entry.get("checkpoint_on_timeout"))))
    return Definition(title=definition["title"], tasks=tasks,
                      executor=executor_from_config(definition["executor"]),
                      launch_dir=launch_dir, import_path=import_path)


def current_import_path() -> list[str]:
    """This process's ``sys.path``, absolute (``''`` is the current folder), without
    duplicates."""
    seen: dict[str, None] = {}
    here = _cwd()
    for entry in sys.path:
        if os.path.isabs(entry):
            seen.setdefault(os.path.normpath(entry), None)
        elif here is not None:  # '' and relative entries mean the current folder
            seen.setdefault(os.path.normpath(os.path.join(here, entry)), None)
    return list(seen)


def extend_import_path(entries: list[str]) -> list[str]:
    """Append to ``sys.path`` the entries it lacks that exist here; return them."""
    here = _cwd() or os.sep
    have = {os.path.normpath(os.path.join(here, p)) for p in sys.path}
    added = [e for e in entries if e not in have and os.path.exists(e)]
    sys.path.extend(added)
    return added


@contextlib.contextmanager
def in_launch_dir(launch_dir: Path | None) -> Iterator[None]:
    """Run the body in the folder the experiment was launched from (relative paths in
    its tasks mean what they meant then) and come back afterwards. A folder that no
    longer exists is warned about and the body runs where it is."""
    previous = _cwd()
    if launch_dir is None or previous == str(launch_dir):
        yield
        return
    try:
        os.chdir(launch_dir)
    except OSError as exc:
        warnings.warn(f"the experiment was launched from {launch_dir}, which cannot be "
                      f"entered now ({exc}); its tasks run from here instead",
                      RuntimeWarning, stacklevel=3)
        yield
        return
    try:
        yield
    finally:
        if previous is not None:
            with contextlib.suppress(OSError):  # it was removed meanwhile: stay
                os.chdir(previous)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the current folder was removed
        return None


def _read_launch(folder: Path, exp_id: str) -> tuple[Path | None, list[str]]:
    try:
        data = json.loads((folder / LAUNCH_FILE).read_text())
    except FileNotFoundError:
        return None, []  # recorded before launch.json existed
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {LAUNCH_FILE} of experiment {exp_id} in {folder}: "
                         f"{exc}") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{folder / LAUNCH_FILE} of experiment {exp_id} is not a mapping")
    launch_dir = data.get("launch_dir")
    entries = data.get("import_path") or []
    return (Path(launch_dir) if isinstance(launch_dir, str) else None,
            [e for e in entries if isinstance(e, str)])
