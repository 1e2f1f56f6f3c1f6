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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from steadyrun.errors import (
    ExperimentFailed,
    ExperimentNotFound,
    SteadyrunError,
    TaskDefinitionError,
    TaskFailed,
)
from steadyrun.executors.base import Executor
from steadyrun.store.db import Store
from steadyrun.store.results import ExperimentResult, TaskResult
from steadyrun.task import Task, ensure_task, validate_graph

__all__ = ["Experiment", "ExperimentResult", "TaskResult", "run"]


class Experiment:
    """A named set of tasks run together on an executor.

    ``Experiment([task, ...], title=..., executor=...)`` or ``Experiment("title",
    executor=...)`` then ``add()``. The executor defaults to
    ``LocalExecutor()`` (a fresh process per attempt). ``home`` overrides the store
    folder (``$STEADYRUN_HOME``). ``tail_logs`` (default: on) prints what each task
    writes while it runs, each line prefixed by the task name (``train | ...``; stderr
    lines ``train ! ...``), and a ``train | --- attempt 2 ---`` header for a retry.
    ``progress`` (default: on) shows the tasks' states: one ``[steadyrun] ...`` line
    per change among the output; with ``tail_logs=False`` a live table on stderr when
    it is a terminal instead. ``progress="live"`` keeps the table on a terminal with the
    output scrolling above it, ``"plain"`` always prints lines, ``False`` shows no
    states. Raises :class:`TaskDefinitionError` for duplicate names,
    unknown dependencies or cycles, before anything is written.
    """

    def __init__(
        self,
        tasks: Iterable[Task] | str | None = None,
        title: str | None = None,
        *,
        executor: Executor | None = None,
        home: str | Path | None = None,
        progress: bool | str = True,
        monitor_interval: float | None = 1.0,
        tail_logs: bool = True,
    ) -> None:
        if isinstance(tasks, str):
            if title is not None:
                raise TaskDefinitionError(
                    "Experiment: the title was given twice (first argument and title=)")
            title, tasks = tasks, None
        self._tasks: list[Task] = []
        self._names: set[str] = set()
        self._executor = executor
        self._definition_pending = False
        self._launch_dir: Path | None = None
        for t in tasks or ():
            self.add(t)
        self.title = title
        self.home = home
        if progress is not True:
            from steadyrun.observe.tail import check_progress

            check_progress(progress)
        self.progress = progress
        self.monitor_interval = monitor_interval
        self.tail_logs = tail_logs
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
        """Add a task (or a payload plus ``name`` and Task options); returns the task,
        which later tasks can name in ``depends_on=[...]`` (or ``dependencies=[...]``).

        Raises :class:`TaskDefinitionError` for a name already taken."""
        task = ensure_task(payload, name, **task_options)
        tasks = self.tasks
        if len(self._names) != len(tasks):  # the list was changed directly
            self._names = {t.name for t in tasks}
        if task.name in self._names:
            raise TaskDefinitionError(
                f"two tasks are named {task.name!r}: task names must be unique in an "
                "experiment; pass name=... to add()")
        tasks.append(task)
        self._names.add(task.name)
        return task

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, *, raise_on_failure: bool = True, detach: bool = False,
            sequential: bool = False, dryrun: bool = False,
            tail_logs: bool | None = None) -> ExperimentResult | None:
        """Run every task to the end and return the results.

        ``sequential=True`` runs the tasks one after another in the order they were
        added (each depends on the one before, so a failure skips the rest).
        ``dryrun=True`` prints what would run (the resolved definition, the executor's
        capacity and any task that would not fit) and returns ``None``; nothing is
        started or written. ``tail_logs`` overrides the experiment's ``tail_logs`` for
        this run (a detached run prints nothing).

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
        if sequential:
            self._tasks = _chained(self.tasks)
        order = validate_graph(self.tasks)
        executor = self.executor or _default_executor()
        if dryrun:
            from steadyrun.cli.render import print_dryrun

            print_dryrun(self.title or self.tasks[0].name, self.tasks, executor)
            return None
        _check_capacity(self.tasks, executor)
        handed = _env_values(self.tasks, executor)  # MissingSecret before anything starts
        from steadyrun.manage import release_control, take_control
        from steadyrun.store.definition import dump_definition

        store = Store(self.home)
        title = self.title or self.tasks[0].name
        files, records = dump_definition(title, self.tasks, order, executor)
        from steadyrun.packaging.record import prepare  # packages built; a dirty tree refused
        launch = prepare(store.home, [executor, *(t.executor for t in self.tasks)])
        self.id = store.create_experiment(title, records, executor.to_config(), files)
        launch.write(store.experiment_dir(self.id), self.id, title)
        self.executor = executor
        self._launch_dir = Path(os.getcwd())
        take_control(store, self.id)  # before anyone else can resume it by its id
        if detach:
            try:
                _spawn_controller(store, self.id, handed)
            except BaseException:
                release_control(store, self.id)
                raise
            finally:
                store.close()
                executor.close()  # the background controller opens its own
            return None
        return self._drive(store, resumed=False, raise_on_failure=raise_on_failure,
                           tail_logs=tail_logs)

    # --- from another process ---------------------------------------------------------

    @classmethod
    def from_id(cls, exp_id: str, home: str | Path | None = None) -> Experiment:
        """The experiment with this id, with its tasks, executor and results. ``exp_id``
        may be a unique prefix of the id or of its random suffix (``"6a6e"``),
        ``"latest"`` (the experiment created last) or ``"latest~N"`` (the N-th before
        it). Raises :class:`ExperimentNotFound` naming the closest ids when none
        matches, :class:`~steadyrun.errors.AmbiguousExperimentId` listing the
        candidates when several do."""
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
        where it ran; and whether the controller is alive, or dead while the experiment
        is unfinished (``controller_dead``, with ``next_step`` naming the command that
        picks it up) (:class:`~steadyrun.manage.ExperimentStatus`)."""
        from steadyrun.manage import experiment_status

        with self._store() as store:
            return experiment_status(store, self._require_id())

    def logs(self, task: str | None = None, attempt: int | None = None, follow: bool = False,
             stream: str = "both", tail: int | None = None,
             rank: int | None = None) -> Iterator[str]:
        """Lines of stdout/stderr of the last attempt of each task (or of ``task``, or
        attempt number ``attempt``), read in chunks (constant memory); ``tail=N`` only
        the last N lines of each log; ``follow`` keeps streaming while it runs. A gang's
        lines carry ``[rank N] ``; ``rank=N`` gives one rank's lines alone."""
        from steadyrun.manage import iter_logs

        with self._store() as store:
            yield from iter_logs(store, self._require_id(), task, attempt, follow, stream,
                                 tail=tail, rank=rank)

    def cancel(self, task: str | None = None, wait: float = 30.0) -> str:
        """Cancel the experiment (or one task) from any process; returns what happened.
        Cancelling something already finished does nothing and says so."""
        from steadyrun.manage import cancel

        with self._store() as store:
            return cancel(store, self._require_id(), task, wait)

    def resume(self, rerun: Iterable[str] | str = ("failed", "cancelled", "never-started"),
               *, detach: bool = False, raise_on_failure: bool = True,
               tail_logs: bool | None = None) -> ExperimentResult | None:
        """Run again what did not succeed (see :mod:`steadyrun.manage` for the rules),
        exactly as it was defined: each task on its own executor, with the launching
        process's import path added to ``sys.path`` and, while it runs, in the folder
        it was launched from (this process's working folder is restored afterwards).
        ``tail_logs`` as in :meth:`run`.

        ``rerun`` chooses what runs again: ``failed``, ``cancelled``, ``never-started``
        (the default: all three), task names (whatever their state: a succeeded task
        named here gets a new attempt and its result becomes the new one, e.g. to get
        back a lost ``result.pkl``), or ``"all"`` (every task).

        Raises :class:`ExperimentLocked` naming the live controller when another
        process drives it (nothing is changed then), :class:`TaskDefinitionError` for a
        ``rerun`` name the experiment does not have (listing the closest ones),
        :class:`ExperimentFailed` as :meth:`run` does, and
        :class:`~steadyrun.errors.ConfigError` when a task's module cannot be imported
        here."""
        from steadyrun.manage import prepare_resume, release_control
        from steadyrun.store.definition import in_launch_dir
        from steadyrun.store.results import experiment_result
        from steadyrun.store.summary import nothing_to_resume

        exp_id = self._require_id()
        choices = tuple(rerun) if not isinstance(rerun, str) else rerun
        store = Store(self.home)
        if not store.readonly and nothing_to_resume(store, exp_id, choices):
            # told from counts: the definition is not even read
            try:
                if detach:
                    return None
                self.result = experiment_result(store, exp_id)
            finally:
                store.close()
            return self._outcome(raise_on_failure)
        try:
            self._load_definition()  # imports the tasks' modules: fails before any change
            _env_values(self.tasks, self.executor)  # env read back by name: all set here?
        except BaseException:
            store.close()
            raise
        try:
            prepare_resume(store, exp_id, choices)
        except BaseException:
            store.close()
            raise
        if detach:
            try:
                _spawn_controller(store, exp_id)
            except BaseException:
                release_control(store, exp_id)
                raise
            finally:
                store.close()
            return None
        with in_launch_dir(self._launch_dir):
            return self._drive(store, resumed=True, raise_on_failure=raise_on_failure,
                               tail_logs=tail_logs)

    def results(self) -> ExperimentResult:
        """The results recorded in the store, the same as :meth:`run` returned (values
        are read from the attempt folders on first access)."""
        from steadyrun.store.results import experiment_result

        with self._store() as store:
            return experiment_result(store, self._require_id())

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

    def _drive(self, store: Store, resumed: bool, raise_on_failure: bool,
               tail_logs: bool | None = None) -> ExperimentResult:
        """Run the engine while this process holds the controller lock, then build the
        result from the store (``resumed``: a resume, whose engine starts from what
        the store recorded; ``tail_logs``: None for the experiment's own)."""
        from steadyrun.engine.loop import Engine
        from steadyrun.manage import prior_runs, release_control
        from steadyrun.store.results import experiment_result

        assert self.id is not None and self.executor is not None
        try:
            view = None
            tail = self.tail_logs if tail_logs is None else tail_logs
            if self.progress or tail:  # output and state lines, or the live table
                from steadyrun.observe.tail import ForegroundView

                view = ForegroundView(
                    self.progress, tail, names=[t.name for t in self.tasks],
                    title=f"{self.id} ({self.title or self.tasks[0].name})")
            engine = Engine(store, self.id, self.tasks, self.executor,
                            prior=prior_runs(store, self.id) if resumed else None,
                            on_change=view.on_change if view is not None else None,
                            monitor_interval=self.monitor_interval)
            if view is not None:
                view.attach(engine).start()
            try:
                runs = engine.run()
            finally:
                if view is not None:
                    view.stop()
            values = {name: tr.value for name, tr in runs.items() if tr.has_value}
            self.result = experiment_result(store, self.id, values)
        finally:
            release_control(store, self.id)  # only if still held: the engine let go
            store.close()
        return self._outcome(raise_on_failure)

    def _outcome(self, raise_on_failure: bool) -> ExperimentResult:
        """``self.result``, or :class:`ExperimentFailed` when it did not succeed and
        ``raise_on_failure``."""
        assert self.result is not None and self.id is not None
        if raise_on_failure and self.result.state != "succeeded":
            failures = self.result.failures
            if not failures:  # cancelled or skipped only
                failures = [TaskFailed(r.name, r.state, r.message or r.state,
                                       attempts=r.attempts)
                            for r in self.result.values() if r.state != "succeeded"]
            raise ExperimentFailed(self.id, failures, self.result)
        return self.result

    def _load_definition(self) -> None:
        if not self._definition_pending:
            return
        from steadyrun.store.definition import load_definition

        with self._store() as store:
            definition = load_definition(store, self._require_id())
        self._definition_pending = False
        self._tasks, self._executor = definition.tasks, definition.executor
        self._launch_dir = definition.launch_dir

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
        home: str | Path | None = None, progress: bool | str = False,
        dryrun: bool = False, tail_logs: bool = True, **task_options: Any) -> Any:
    """Run one payload as a one-task experiment and return its value.

    ``dryrun=True`` prints what would run and returns ``None`` without starting or
    writing anything. ``tail_logs`` (default: on) prints what the payload writes while
    it runs, as ``name | line``; ``progress`` as in :class:`Experiment` (default: no
    state lines). Raises :class:`TaskFailed` (with the remote traceback, exit code,
    kind and log tail) when it failed for good.
    """
    exp = Experiment(executor=executor, home=home, progress=progress, tail_logs=tail_logs)
    task = exp.add(payload, name=name, **task_options)
    result = exp.run(raise_on_failure=False, dryrun=dryrun)
    if result is None:  # a dry run
        return None
    task_result = result[task.name]
    if task_result.error is not None:
        raise task_result.error
    return task_result.value


def _chained(tasks: list[Task]) -> list[Task]:
    """The tasks, each also depending on the one added before it."""
    from dataclasses import replace

    chained = tasks[:1]
    for before, task in zip(tasks, tasks[1:], strict=False):
        if before.name not in task.depends_on:
            task = replace(task, depends_on=(*task.depends_on, before.name))
        chained.append(task)
    return chained


def _default_executor() -> Executor:
    from steadyrun.executors.local.executor import LocalExecutor

    return LocalExecutor()


def _check_capacity(tasks: list[Task], default: Executor) -> None:
    for t in tasks:
        ex = t.executor or default
        ex.check(t.resources, t.name)
        if t.checkpoint_on_timeout and not ex.can_preempt:
            raise TaskDefinitionError(
                f"task {t.name!r}: checkpoint_on_timeout=True needs an executor that can "
                f"ask a running attempt to save and stop; {getattr(ex, 'name', ex)} "
                "cannot: use LocalExecutor(strategy='subprocess'), or drop the option")


def _env_values(tasks: list[Task], default: Executor | None) -> dict[str, str]:
    """The env values given directly, for a background controller's environment (the
    store keeps none); raises ``MissingSecret`` when a secret is not set now."""
    from steadyrun.config.secrets import launch_values

    executors = {id(e): e for e in [default, *(t.executor for t in tasks)] if e is not None}
    return launch_values(tasks, executors.values())


def _handing(values: dict[str, str] | None) -> dict[str, str] | None:
    """The environment of a background controller that is handed ``values`` (the env
    values given directly, which the store does not keep)."""
    if not values:
        return None
    import json

    from steadyrun.config.secrets import HANDED_VALUES_ENV

    return {**os.environ, HANDED_VALUES_ENV: json.dumps(values)}


def _spawn_controller(store: Store, exp_id: str, env: dict[str, str] | None = None) -> int:
    """Start the background controller of ``exp_id`` in its own session and hand it the
    controller lock, which this process must hold; return its pid.

    The child may take the lock over from this process itself (``--take-over``), so
    whichever of the two gets there first, the experiment is never without a
    controller in between."""
    import socket

    from steadyrun.attempt.liveness import process_start_time
    from steadyrun.store.files import open_private

    log = open_private(store.experiment_dir(exp_id) / "controller.log",
                       os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "steadyrun.controller", exp_id, "--home", str(store.home),
             "--take-over", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
            env=_handing(env))
    finally:
        os.close(log)
    started = process_start_time(proc.pid) or 0.0
    store.hand_over_controller(exp_id, os.getpid(), proc.pid, socket.gethostname(), started)
    store.add_event(exp_id, "detached", data={"controller_pid": proc.pid})
    return proc.pid
