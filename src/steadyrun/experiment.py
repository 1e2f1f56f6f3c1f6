"""Experiments: a set of tasks, an executor, and a run recorded in the store.

Two shapes work::

    exp = run.Experiment([run.Task("train", run.Partial(train, lr=0.1))])
    result = exp.run()

    with run.Experiment("mnist", executor=run.LocalExecutor()) as exp:
        exp.add(run.Partial(train, lr=0.1), name="train")
        result = exp.run()

``result["train"].value`` is what ``train`` returned. A failed task makes ``run()`` raise
:class:`~steadyrun.errors.ExperimentFailed` listing every failure with its kind, exit
code, log tail and remote traceback (``raise_on_failure=False`` returns instead).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadyrun.errors import (
    ExperimentFailed,
    ExperimentNotFound,
    SerializationError,
    SteadyrunError,
    TaskDefinitionError,
    TaskFailed,
)
from steadyrun.executors.base import Executor
from steadyrun.store.db import Store, task_dir_name
from steadyrun.task import Task, ensure_task, validate_graph


@dataclass
class TaskResult:
    """How one task ended: ``state`` (succeeded, failed, skipped, cancelled), ``value``
    (what the payload returned), ``attempts``, ``duration`` in seconds, ``error`` (a
    :class:`TaskFailed` or None), ``kind`` and ``exit_code`` of the last failure, and
    ``changes`` (what degradation changed, per attempt), and the last attempt's
    ``peak_rss`` / ``peak_gpu_memory`` (bytes, whole process tree) and ``cpu_seconds``
    as the monitor sampled them (None when it was too short to sample)."""

    name: str
    state: str
    attempts: int
    duration: float | None
    error: TaskFailed | None
    kind: str | None
    exit_code: int | None
    changes: list[dict[str, Any]]
    message: str
    peak_rss: int | None = None
    peak_gpu_memory: int | None = None
    cpu_seconds: float | None = None
    _value: Any = None
    _has_value: bool = False
    _result_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def value(self) -> Any:
        """The payload's return value; raises the task's error when it did not succeed."""
        if self.state != "succeeded":
            if self.error is not None:
                raise self.error
            raise SteadyrunError(f"task {self.name!r} has no value: it was {self.state}"
                                 + (f" ({self.message})" if self.message else ""))
        if not self._has_value and self._result_path is not None:
            import cloudpickle

            try:
                with open(self._result_path, "rb") as f:
                    self._value = cloudpickle.load(f)
            except FileNotFoundError:
                self._value = None
            self._has_value = True
        return self._value

    def __repr__(self) -> str:
        extra = f", kind={self.kind!r}" if self.kind else ""
        return (f"TaskResult({self.name!r}, state={self.state!r}, attempts={self.attempts}"
                f"{extra})")


class ExperimentResult(Mapping[str, TaskResult]):
    """The outcome of ``Experiment.run()``: a mapping of task name to :class:`TaskResult`,
    plus ``id``, ``state`` and ``failures``."""

    def __init__(self, exp_id: str, state: str, results: dict[str, TaskResult]) -> None:
        self.id = exp_id
        self.state = state
        self._results = results

    def __getitem__(self, name: str) -> TaskResult:
        try:
            return self._results[name]
        except KeyError:
            raise KeyError(f"no task {name!r} in experiment {self.id} "
                           f"(tasks: {', '.join(self._results)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def failures(self) -> list[TaskFailed]:
        return [r.error for r in self._results.values() if r.error is not None]

    def __repr__(self) -> str:
        states = ", ".join(f"{n}={r.state}" for n, r in self._results.items())
        return f"ExperimentResult({self.id!r}, {self.state}: {states})"


class Experiment:
    """A named set of tasks run together on an executor.

    ``Experiment([task, ...], title=..., executor=...)`` or ``Experiment("title",
    executor=...)`` then ``add()``. The executor defaults to
    ``LocalExecutor()`` (a fresh process per attempt). ``home`` overrides the store
    folder (``$STEADYRUN_HOME``). ``progress`` (default: on) shows the tasks while
    they run: a live table on stderr when it is a terminal, one line per task state change
    otherwise (the live view). Raises :class:`TaskDefinitionError` for duplicate names,
    unknown dependencies or cycles, before anything is written.
    """

    def __init__(
        self,
        tasks: Iterable[Task] | str | None = None,
        title: str | None = None,
        *,
        executor: Executor | None = None,
        home: str | Path | None = None,
        progress: bool = True,
        monitor_interval: float | None = 1.0,
    ) -> None:
        if isinstance(tasks, str):
            if title is not None:
                raise TaskDefinitionError(
                    "Experiment: the title was given twice (first argument and title=)")
            title, tasks = tasks, None
        self._tasks: list[Task] = []
        self._executor = executor
        self._definition_pending = False
        for t in tasks or ():
            self.add(t)
        self.title = title
        self.home = home
        self.progress = progress
        self.monitor_interval = monitor_interval
        self.id: str | None = None
        self.result: ExperimentResult | None = None

    @property
    def tasks(self) -> list[Task]:
        """The experiment's tasks (for one rebuilt by :meth:`from_id`, read from its
        definition snapshot on first use)."""
        self._load_definition()
        return self._tasks

    @property
    def executor(self) -> Executor | None:
        """Where the tasks run (None: the default ``LocalExecutor()``)."""
        self._load_definition()
        return self._executor

    @executor.setter
    def executor(self, value: Executor | None) -> None:
        self._executor = value

    def add(self, payload: Any, name: str | None = None, **task_options: Any) -> Task:
        """Add a task (or a payload plus ``name`` and Task options); returns the task."""
        task = ensure_task(payload, name, **task_options)
        if any(t.name == task.name for t in self.tasks):
            raise TaskDefinitionError(
                f"two tasks are named {task.name!r}: task names must be unique in an "
                "experiment; pass name=... to add()")
        self.tasks.append(task)
        return task

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, *, raise_on_failure: bool = True,
            detach: bool = False) -> ExperimentResult | None:
        """Run every task to the end and return the results.

        Raises :class:`ExperimentFailed` when a task failed (unless
        ``raise_on_failure=False``), :class:`InsufficientResources` before anything
        starts when a task asks for more than the executor has, and re-raises
        ``KeyboardInterrupt`` after Ctrl-C has cancelled and recorded the running tasks.
        With ``detach=True`` it returns ``None`` at once and a background controller
        (its own session, surviving the terminal) drives the experiment; follow it with
        :meth:`status`, :meth:`logs`, ``steadyrun status ID``.
        """
        if self.id is not None:
            raise SteadyrunError(
                f"experiment {self.id} has already run; use resume() to run what did not "
                "succeed, or build a new Experiment")
        if not self.tasks:
            raise TaskDefinitionError("the experiment has no tasks: add some with add()")
        order = validate_graph(self.tasks)
        executor = self.executor or _default_executor()
        _check_capacity(self.tasks, executor)
        store = Store(self.home)
        title = self.title or self.tasks[0].name
        files, records = _snapshot(title, self.tasks, order, executor)
        self.id = store.create_experiment(title, records, executor.to_config(), files)
        self.executor = executor
        if detach:
            _spawn_controller(store, self.id)
            store.close()
            executor.close()  # the background controller opens its own
            return None
        return self._drive(store, prior=None, raise_on_failure=raise_on_failure)

    # --- from another process ---------------------------------------------------------

    @classmethod
    def from_id(cls, exp_id: str, home: str | Path | None = None) -> Experiment:
        """The experiment with this id (or unique id prefix), with its tasks, executor
        and results. Raises :class:`ExperimentNotFound` naming the closest ids."""
        store = Store(home)
        try:
            full = store.resolve_id(exp_id)
            title = store.experiment(full).title
        finally:
            store.close()
        exp = cls(title=title, home=home, progress=False)
        exp.id = full
        exp._definition_pending = True  # tasks and executor load when first needed
        return exp

    @classmethod
    def from_title(cls, title: str, home: str | Path | None = None) -> Experiment:
        """The latest experiment with this title; :class:`ExperimentNotFound` names the
        closest titles when there is none."""
        store = Store(home)
        try:
            rows = store.list_experiments(title=title, limit=1)
            if not rows:
                import difflib

                titles = sorted({r.title for r in store.list_experiments(limit=2000)})
                close = difflib.get_close_matches(title, titles, n=3, cutoff=0.5)
                raise ExperimentNotFound(
                    f"no experiment titled {title!r}"
                    + (f"; closest: {', '.join(close)}" if close else ""))
            return cls.from_id(rows[0].id, home=home)
        finally:
            store.close()

    def status(self) -> Any:
        """Per task: state, attempts, failure kind, exit code, duration, start and end,
        where it ran; and whether the controller is alive
        (:class:`~steadyrun.manage.ExperimentStatus`)."""
        from steadyrun.manage import experiment_status

        with self._store() as store:
            return experiment_status(store, self._require_id())

    def logs(self, task: str | None = None, attempt: int | None = None, follow: bool = False,
             stream: str = "both") -> Iterator[str]:
        """Lines of stdout/stderr of the last attempt of each task (or of ``task``, or
        attempt number ``attempt``); ``follow`` keeps streaming while it runs."""
        from steadyrun.manage import iter_logs

        with self._store() as store:
            yield from iter_logs(store, self._require_id(), task, attempt, follow, stream)

    def cancel(self, task: str | None = None, wait: float = 30.0) -> str:
        """Cancel the experiment (or one task) from any process; returns what happened.
        Cancelling something already finished does nothing and says so."""
        from steadyrun.manage import cancel

        with self._store() as store:
            return cancel(store, self._require_id(), task, wait)

    def resume(self, rerun: Iterable[str] | str = ("failed", "cancelled", "never-started"),
               *, detach: bool = False,
               raise_on_failure: bool = True) -> ExperimentResult | None:
        """Run again only what did not succeed (see :mod:`steadyrun.manage` for the
        rules). Raises :class:`ExperimentLocked` when a live controller drives it."""
        from steadyrun.manage import prior_runs, reopen

        exp_id = self._require_id()
        store = Store(self.home)
        reopen(store, exp_id, tuple(rerun) if not isinstance(rerun, str) else rerun)
        if detach:
            _spawn_controller(store, exp_id)
            store.close()
            return None
        return self._drive(store, prior=prior_runs(store, exp_id),
                           raise_on_failure=raise_on_failure)

    def results(self) -> ExperimentResult:
        """The results recorded in the store (values are read from the attempt folders
        on first access)."""
        from steadyrun.manage import prior_runs

        with self._store() as store:
            exp_id = self._require_id()
            row = store.experiment(exp_id)
            prior = prior_runs(store, exp_id)
            status = {t.name: t for t in self.status().tasks}
        results = {
            name: TaskResult(
                name=name, state=info["state"], attempts=info["attempts"],
                duration=status[name].duration, error=None, kind=info["kind"],
                exit_code=status[name].exit_code, changes=status[name].changes,
                message=info["message"] or "", _result_path=info.get("result_path"))
            for name, info in prior.items()}
        return ExperimentResult(exp_id, row.state, results)

    def report(self, out: str | Path | None = None) -> dict[str, Path]:
        """Write a PNG of CPU, RSS and GPU memory per task over time with a timeline of
        the attempts, and a self-contained HTML page with it and a table of the tasks;
        returns ``{"png": path, "html": path}``. ``out`` defaults to the experiment's
        ``report/`` folder in the store. Raises :class:`~steadyrun.errors.PlotUnavailable`
        without matplotlib (``pip install 'steadyrun[plot]'``)."""
        from steadyrun.observe.report import write_report

        with self._store() as store:
            return write_report(store, self._require_id(), out)

    # --- internals --------------------------------------------------------------------

    def _drive(self, store: Store, prior: dict[str, dict[str, Any]] | None,
               raise_on_failure: bool) -> ExperimentResult:
        from steadyrun.engine.loop import Engine

        assert self.id is not None and self.executor is not None
        view = None
        if self.progress:  # a live table on a terminal, one line per change elsewhere
            from steadyrun.observe.live import LiveView

            view = LiveView(title=f"{self.id} ({self.title or self.tasks[0].name})")
        engine = Engine(store, self.id, self.tasks, self.executor, prior=prior,
                        on_change=view.on_change if view is not None else None,
                        monitor_interval=self.monitor_interval)
        try:
            if view is not None:
                view.attach(engine).start()
            try:
                runs = engine.run()
            finally:
                if view is not None:
                    view.stop()
        finally:
            state = store.experiment(self.id).state
            store.close()
        results = {
            name: TaskResult(
                name=name, state=tr.state, attempts=tr.attempts,
                duration=(tr.ended_at - tr.started_at)
                if tr.ended_at is not None and tr.started_at is not None else None,
                error=tr.error, kind=tr.kind, exit_code=tr.exit_code, changes=tr.changes,
                message=tr.message, peak_rss=tr.peak_rss,
                peak_gpu_memory=tr.peak_gpu_memory, cpu_seconds=tr.cpu_seconds,
                _value=tr.value, _has_value=tr.has_value, _result_path=tr.result_path)
            for name, tr in runs.items()}
        self.result = ExperimentResult(self.id, state, results)
        if raise_on_failure and state != "succeeded":
            failures = self.result.failures
            if not failures:  # cancelled or skipped only
                failures = [TaskFailed(r.name, r.state, r.message or r.state,
                                       attempts=r.attempts)
                            for r in results.values() if r.state != "succeeded"]
            raise ExperimentFailed(self.id, failures, self.result)
        return self.result

    def _load_definition(self) -> None:
        if not self._definition_pending:
            return
        from steadyrun.manage import load_definition

        self._definition_pending = False
        with self._store() as store:
            _, self._tasks, self._executor = load_definition(store, self._require_id())

    def _require_id(self) -> str:
        if self.id is None:
            raise SteadyrunError("this experiment has not been run yet: call run() first")
        return self.id

    @contextlib.contextmanager
    def _store(self) -> Iterator[Store]:
        store = Store(self.home)
        try:
            yield store
        finally:
            store.close()


def run(payload: Any, executor: Executor | None = None, *, name: str | None = None,
        home: str | Path | None = None, progress: bool = False, **task_options: Any) -> Any:
    """Run one payload as a one-task experiment and return its value.

    Raises :class:`TaskFailed` (with the remote traceback, exit code, kind and log tail)
    when it failed for good.
    """
    exp = Experiment(executor=executor, home=home, progress=progress)
    task = exp.add(payload, name=name, **task_options)
    result = exp.run(raise_on_failure=False)
    task_result = result[task.name]
    if task_result.error is not None:
        raise task_result.error
    return task_result.value


def _default_executor() -> Executor:
    from steadyrun.executors.local.executor import LocalExecutor

    return LocalExecutor()


def _check_capacity(tasks: list[Task], default: Executor) -> None:
    for t in tasks:
        (t.executor or default).check(t.resources, t.name)


def _snapshot(title: str, tasks: list[Task], order: list[str],
              executor: Executor) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """The experiment's definition files and the task records for the store.

    ``definition.yaml`` holds every task with its payload as YAML; a payload that has no
    import path (a lambda, a closure, a function of ``__main__``) is kept beside it as
    ``tasks/<task>/payload.pkl`` (cloudpickle) and named in the YAML instead.
    """
    import cloudpickle

    from steadyrun import config

    files: dict[str, bytes] = {}
    records: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for t in tasks:
        resources = {"cpus": t.resources.cpus, "memory": t.resources.memory,
                     "gpus": t.resources.gpus, "enforce": t.resources.enforce}
        entry: dict[str, Any] = {"name": t.name, "payload": t.payload,
                                 "resources": resources}
        if t.retry is not None:
            entry["retry"] = vars(t.retry) | {"on": list(t.retry.on)}
        if t.degrade is not None:
            entry["degrade"] = dict(vars(t.degrade))
        if t.timeout is not None:
            entry["timeout"] = t.timeout
        if t.depends_on:
            entry["depends_on"] = list(t.depends_on)
        entries.append(entry)
        try:
            fingerprint: str | None = config.fingerprint(t.payload)
        except SerializationError:
            fingerprint = None
        records.append({"name": t.name, "depends_on": list(t.depends_on),
                        "resources": resources, "fingerprint": fingerprint})
    definition = {"title": title, "executor": executor.to_config(), "order": order,
                  "tasks": entries}
    try:
        text = config.to_yaml(definition)  # one pass when every payload has an import path
    except SerializationError:
        for entry in entries:
            try:
                config.to_yaml(entry["payload"])
            except SerializationError:
                rel = f"tasks/{task_dir_name(entry['name'])}/payload.pkl"
                files[rel] = cloudpickle.dumps(entry["payload"])
                entry["payload"] = {"cloudpickle": rel}
        text = config.to_yaml(definition)
    files["definition.yaml"] = text.encode()
    return files, records


def _spawn_controller(store: Store, exp_id: str) -> int:
    """Start the background controller of ``exp_id`` in its own session and record it as
    the experiment's controller; return its pid."""
    import psutil

    from steadyrun.attempt.worker import PARENT_PATH_ENV

    env = dict(os.environ)
    env[PARENT_PATH_ENV] = os.pathsep.join(p for p in sys.path if p)
    log = open(store.experiment_dir(exp_id) / "controller.log", "ab")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "steadyrun.controller", exp_id, "--home", str(store.home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, close_fds=True)
    finally:
        log.close()
    import socket

    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        started = None
    store.acquire_controller(exp_id, proc.pid, socket.gethostname(), started or 0.0)
    store.add_event(exp_id, "detached", data={"controller_pid": proc.pid})
    return proc.pid


def _print_change(tr: Any, state: str) -> None:
    """One plain progress line on stderr (what the live view prints off a terminal)."""
    from steadyrun.observe.live import format_change

    print(format_change(tr, state), file=sys.stderr, flush=True)
