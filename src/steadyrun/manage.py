"""Managing experiments from any process, through the store alone.

An experiment outlives the process that started it. Everything here reads or writes
the store (``$STEADYRUN_HOME``), so it works from a second terminal, a script or the
CLI while a controller runs, after it finished, or after it died:

- :func:`list_experiments` and :func:`experiment_status` read;
- :func:`iter_logs` streams an attempt's output, following it while it runs;
- :func:`cancel` asks the live controller to stop tasks, or settles them itself when
  no controller is alive;
- :func:`reconcile` settles what a dead controller left ``running``;
- :func:`reopen` marks what a ``resume`` reruns, and :func:`prior_runs` tells the
  engine what an earlier run already did;
- :func:`prepare_resume` does both for ``resume`` while holding the controller lock.

Only one process drives an experiment at a time: the controller lock (the
``controller_pid`` of its row, taken in one ``BEGIN IMMEDIATE`` transaction that reads
the row again under the database lock). ``resume`` takes it *first*, then settles and
reopens, then runs; a process that loses the race gets :class:`ExperimentLocked`
naming the winner and has changed nothing. ``reconcile``, ``reopen`` and ``cancel``
(with no live controller) hold it too while they write.

What ``resume`` reruns, as rules:

1. A task that succeeded is not run again, unless ``rerun`` names it or says ``all``;
   its result is read from its last attempt. A succeeded task chosen for a rerun gets a
   new attempt (the folders of earlier attempts are kept) and, when that succeeds, its
   result is the new attempt's.
2. An attempt left ``running`` by a dead controller is first reclaimed: every registered
   executor stops what may still run for it (``Executor.reclaim``: a leftover worker,
   found by the identity file it wrote before its payload started, is killed with its
   tree). Then, if its result file exists, it counts as succeeded (the worker wrote it
   atomically after the payload returned) and is never rerun; otherwise it is ``lost``.
3. ``rerun`` chooses what runs again, as a list or a comma-separated string of: groups
   among the tasks that did not succeed, ``failed`` (including ``lost``), ``cancelled``
   and ``never-started`` (pending or skipped tasks with no attempt), the default being
   all three; task names, which choose those tasks whatever their state (succeeded
   ones too); and ``all``, every task. A name the experiment does not have is an error
   that lists the closest names, raised before anything is changed.
4. A task not chosen keeps its state, and its dependants are skipped. Dependants of a
   task that is rerun are not rerun with it unless chosen too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.attempt.liveness import process_start_time
from steadyrun.errors import ExperimentLocked, TaskDefinitionError
from steadyrun.store.db import Row, Store
from steadyrun.store.liveness import controller_alive, controller_dead, resume_hint
from steadyrun.store.results import task_duration

FINAL_EXPERIMENT_STATES = ("succeeded", "failed", "cancelled")
RERUN_CHOICES = ("failed", "cancelled", "never-started")
#: The ``rerun`` word that chooses every task, succeeded ones included.
RERUN_ALL = "all"


@dataclass
class ExperimentInfo:
    """One line of :func:`list_experiments`."""

    id: str
    title: str
    state: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    tasks: int
    counts: dict[str, int]
    controller_alive: bool | None
    #: unfinished with no live controller: ``steadyrun resume ID`` picks it up
    controller_dead: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskStatus:
    """A task as the store knows it, with its last attempt's details; ``duration`` is
    the task's, as :func:`steadyrun.store.results.task_duration` measures it."""

    name: str
    state: str
    attempts: int
    kind: str | None
    exit_code: int | None
    duration: float | None
    started_at: float | None
    ended_at: float | None
    host: str | None
    executor: str | None
    message: str | None
    changes: list[dict[str, Any]] = field(default_factory=list)
    pid: int | None = None
    #: attempts asked by their backend to stop early (not held against retries)
    preempted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExperimentStatus:
    """What :meth:`Experiment.status` returns: the experiment, its controller and tasks.

    ``controller_dead`` is True when the experiment is unfinished (``running``, or
    ``created`` and abandoned) but no live controller drives it (killed, crashed,
    machine rebooted, or none was ever recorded); ``next_step`` then names the command
    that picks it up (``steadyrun resume ID``). ``controller["alive"]`` is False then
    too, even when no controller pid was recorded.
    """

    id: str
    title: str
    state: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    controller: dict[str, Any]
    tasks: list[TaskStatus]
    dir: str
    controller_dead: bool = False
    next_step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        state = self.state + (f" (controller dead: `{self.next_step}` picks it up)"
                              if self.controller_dead else "")
        lines = [f"experiment {self.id} ({self.title}): {state}"]
        for t in self.tasks:
            extra = []
            if t.kind:
                extra.append(t.kind)
            if t.exit_code not in (None, 0):
                extra.append(f"exit {t.exit_code}")
            if t.duration is not None:
                extra.append(f"{t.duration:.1f}s")
            lines.append(f"  {t.name:<30} {t.state:<10} attempts={t.attempts} "
                         + " ".join(extra))
        return "\n".join(lines)


def list_experiments(title: str | None = None, state: str | None = None,
                     limit: int | None = None, home: str | Path | None = None,
                     *, store: Store | None = None) -> list[ExperimentInfo]:
    """Experiments in the store, newest first, with their task counts by state.

    The store is opened read-only: an archived copy or a read-only mount can be
    listed, and a store that does not exist lists nothing (and is not created)."""
    store = store or Store(home, readonly=True)
    rows = store.list_experiments(title=title, state=state, limit=limit)
    counts = _task_counts(store, [r.id for r in rows])
    infos = []
    for r in rows:
        dead = controller_dead(r)
        alive = controller_alive(r)
        infos.append(ExperimentInfo(
            id=r.id, title=r.title, state=r.state, created_at=r.created_at,
            started_at=r.started_at, ended_at=r.ended_at, tasks=sum(counts[r.id].values()),
            counts=counts[r.id], controller_alive=False if dead else alive,
            controller_dead=dead))
    return infos


def _task_counts(store: Store, exp_ids: list[str]) -> dict[str, dict[str, int]]:
    """Per experiment, how many tasks are in each state. Unlike ``status``, which counts
    over the ``tasks_state`` index alone, this reads the tasks' rows (``count(kind)``
    needs them): listing is the read that finds a damaged tasks table and says so."""
    counts: dict[str, dict[str, int]] = {i: {} for i in exp_ids}
    for start in range(0, len(exp_ids), 500):
        chunk = exp_ids[start:start + 500]
        marks = ",".join("?" for _ in chunk)
        for r in store._read(f"SELECT exp_id, state, count(*) AS n, count(kind) AS k FROM "
                             f"tasks WHERE exp_id IN ({marks}) GROUP BY exp_id, state",
                             tuple(chunk)):
            counts[r.exp_id][r.state] = r.n
    return counts


def experiment_status(store: Store, exp_id: str) -> ExperimentStatus:
    """The status of one experiment with every task (two queries: tasks, attempts).
    For a big experiment, :mod:`steadyrun.store.summary` reads counts and pages
    instead."""
    head = experiment_head(store, exp_id)
    last: dict[str, Row] = {}
    by_task: dict[str, list[Row]] = {}
    changes: dict[str, list[dict[str, Any]]] = {}
    preempted: dict[str, int] = {}
    for row_a in store.attempts(exp_id):
        last[row_a.task] = row_a
        by_task.setdefault(row_a.task, []).append(row_a)
        if row_a.changes:
            changes.setdefault(row_a.task, []).append(row_a.changes)
        if row_a.kind == "preempted":
            preempted[row_a.task] = preempted.get(row_a.task, 0) + 1
    for t in store.tasks(exp_id):
        a: Row | None = last.get(t.name)
        first = a.started_at if a is not None else None
        ended = a.ended_at if a is not None else None
        head.tasks.append(TaskStatus(
            name=t.name, state=t.state, attempts=t.attempts, kind=t.kind,
            exit_code=a.exit_code if a is not None else None,
            duration=task_duration(by_task.get(t.name, [])),
            started_at=first, ended_at=ended, host=a.host if a is not None else None,
            executor=a.executor if a is not None else None, message=t.message,
            changes=changes.get(t.name, []), pid=a.pid if a is not None else None,
            preempted=preempted.get(t.name, 0)))
    return head


def experiment_head(store: Store, exp_id: str) -> ExperimentStatus:
    """The status of one experiment without its tasks (``tasks`` is empty): one
    query, whatever the experiment's size."""
    row = store.experiment(exp_id)
    dead = controller_dead(row)
    return ExperimentStatus(
        id=row.id, title=row.title, state=row.state, created_at=row.created_at,
        started_at=row.started_at, ended_at=row.ended_at,
        controller={"pid": row.controller_pid, "host": row.controller_host,
                    "heartbeat": row.heartbeat,
                    "alive": False if dead else controller_alive(row)},
        tasks=[], dir=str(store.experiment_dir(exp_id)), controller_dead=dead,
        next_step=resume_hint(exp_id) if dead else None)


def iter_logs(store: Store, exp_id: str, task: str | None = None, attempt: int | None = None,
              follow: bool = False, stream: str = "both", poll: float = 0.2,
              tail: int | None = None, rank: int | None = None) -> Iterator[str]:
    """Lines of output of an experiment's attempts (the last attempt of each task, or of
    ``task``, or attempt number ``attempt``), stdout then stderr, read in chunks (constant
    memory); ``tail=N``: the last N lines of each log only. A gang attempt's lines carry
    a ``[rank N] `` prefix; ``rank=N`` gives one rank's alone.

    Lines carry a ``[task] `` prefix when several tasks are shown. With ``follow`` it
    keeps reading while the attempt runs (and moves on to a retry's new attempt) until
    the task or experiment is final. See :mod:`steadyrun.observe.logs`."""
    from steadyrun.observe.logs import iter_logs as lines

    return lines(store, exp_id, task, attempt, follow, stream, poll, tail, rank)


def cancel(store: Store, exp_id: str, task: str | None = None, wait: float = 30.0) -> str:
    """Cancel an experiment (or one task); returns what happened, in words.

    With a live controller a request goes through the store and this waits up to
    ``wait`` seconds for it to take effect; with none, this process takes the controller
    lock and settles the tasks itself (any leftover process tree is killed). Cancelling
    what already ended changes nothing. Raises :class:`TaskDefinitionError` for a task
    the experiment does not have."""
    row = store.experiment(exp_id)
    states = {t.name: t.state for t in store.tasks(exp_id)}
    if task is not None and task not in states:
        raise TaskDefinitionError(
            f"experiment {exp_id} has no task {task!r} (tasks: {', '.join(states)})")
    open_states = ("pending", "running", "retrying")
    targets = [task] if task is not None else [n for n, s in states.items() if s in open_states]
    if task is not None and states[task] not in open_states:
        return f"task {task!r} of {exp_id} already {states[task]}: nothing to cancel"
    if task is None and (row.state in FINAL_EXPERIMENT_STATES or not targets):
        return f"experiment {exp_id} already {row.state}: nothing to cancel"
    if not holds_control(row):  # in this process, the engine itself must stop it
        try:
            take_control(store, exp_id)
        except ExperimentLocked:
            pass  # a live controller drives it: ask it
        else:
            try:
                return _cancel_here(store, exp_id, task, targets, open_states)
            finally:
                release_control(store, exp_id)
    holder = store.experiment(exp_id).controller_pid
    store.add_request(exp_id, "cancel", task)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        now = {t.name: t.state for t in store.tasks(exp_id)}
        if all(now[n] not in open_states for n in targets):
            what = f"task {task!r}" if task else f"{len(targets)} task(s)"
            return f"cancelled {what} of {exp_id}"
        time.sleep(0.1)
    return (f"cancel requested; controller pid {holder} has not finished "
            f"stopping {exp_id} after {wait:.0f}s")


def _cancel_here(store: Store, exp_id: str, task: str | None, targets: list[str],
                 open_states: tuple[str, ...]) -> str:
    """Settle a cancel while this process holds the controller lock: what a dead
    controller left running among ``targets`` is ``cancelled`` (not ``lost``), as it
    would have been had the controller lived to see the request."""
    _settle(store, exp_id, cancelling=targets)
    with store.transaction():
        for t in store.tasks(exp_id):
            if t.name in targets and t.state in open_states:
                _check(t.name, t.state, "cancelled")
                store.update_task(exp_id, t.name, state="cancelled",
                                  message="cancelled on request (no controller was running)")
                store.add_event(exp_id, "cancelled", task=t.name)
        if task is None:
            store.update_experiment(exp_id, state="cancelled", ended_at=time.time())
    count = sum(1 for t in store.tasks(exp_id) if t.name in targets and t.state == "cancelled")
    return f"cancelled {count} task(s) of {exp_id} (no controller was running)"


def reconcile(store: Store, exp_id: str) -> list[str]:
    """Settle what a dead controller left behind (rule 2 of the module docs); returns
    what was done, in words.

    Takes the controller lock for the time it writes (or uses it, when this process
    holds it already); raises :class:`ExperimentLocked` naming the live controller of
    an experiment that another process drives, having changed nothing."""
    with _control(store, exp_id):
        return _settle(store, exp_id)


def reopen(store: Store, exp_id: str, rerun: tuple[str, ...] | list[str] = RERUN_CHOICES,
           ) -> list[str]:
    """Settle what a dead controller left (:func:`reconcile`), then mark the tasks a
    resume runs again as ``pending`` (rule 3); returns their names.

    Raises :class:`TaskDefinitionError` for an unknown ``rerun`` choice or task name
    and :class:`ExperimentLocked` when another live controller drives the experiment,
    both before anything is changed."""
    rerun = _rerun_choices(rerun, [t.name for t in store.tasks(exp_id)])
    with _control(store, exp_id):
        _settle(store, exp_id)
        return _reopen(store, exp_id, rerun)


def prepare_resume(store: Store, exp_id: str,
                   rerun: tuple[str, ...] | list[str] | str = RERUN_CHOICES) -> list[str]:
    """Make this process the experiment's controller, settle what a dead one left, and
    reopen what ``rerun`` chooses; the experiment is ``running`` from then on. Returns
    the reopened tasks' names. The lock stays
    held: the caller runs the engine (or hands the lock to a background controller
    with ``Store.hand_over_controller``) and releases it at the end.

    The lock is taken first, so of several processes resuming at once exactly one gets
    here; the others get :class:`ExperimentLocked` naming it, having changed nothing.
    An unknown ``rerun`` choice or task name is a :class:`TaskDefinitionError`, raised
    before anything is changed. If settling fails, the lock is released and the error
    raised."""
    choices = _rerun_choices(rerun, [t.name for t in store.tasks(exp_id)])
    take_control(store, exp_id)
    try:
        _settle(store, exp_id)
        with store.transaction():
            chosen = _reopen(store, exp_id, choices)
            # driven again from now on: never reads as its earlier end meanwhile
            store.update_experiment(exp_id, state="running", ended_at=None)
        return chosen
    except BaseException:
        release_control(store, exp_id)
        raise


def take_control(store: Store, exp_id: str) -> Row:
    """Take the controller lock of ``exp_id`` for this process (see the module docs);
    returns the row as read under the lock. Raises :class:`ExperimentLocked` naming the
    live controller of an experiment that another process drives."""
    pid = os.getpid()
    return store.acquire_controller(exp_id, pid, socket.gethostname(),
                                    process_start_time(pid) or time.time())


def release_control(store: Store, exp_id: str) -> None:
    """Give up this process's controller lock, if it holds it. An experiment left
    ``running`` or ``created`` is marked ``failed`` in the same commit: it stops being
    driven, so it must not read as running."""
    store.release_controller(exp_id, os.getpid(), abandon=True)


def holds_control(row: Row) -> bool:
    """True when this process is the controller recorded on ``row``."""
    return row.controller_pid == os.getpid() and row.controller_host == socket.gethostname()


@contextlib.contextmanager
def _control(store: Store, exp_id: str) -> Iterator[None]:
    """Hold the controller lock for the body: taken (and released afterwards) unless
    this process holds it already."""
    if holds_control(store.experiment(exp_id)):
        yield
        return
    take_control(store, exp_id)
    try:
        yield
    finally:
        release_control(store, exp_id)


def _settle(store: Store, exp_id: str, cancelling: Collection[str] = ()) -> list[str]:
    """Rule 2, by a process that holds the controller lock. Unfinished tasks named in
    ``cancelling`` (a cancel met the dead controller) become ``cancelled`` rather than
    ``failed``/``lost``; a finished attempt keeps its result either way."""
    from steadyrun.attempt.folder import RESULT_FILE, has_result  # not on `list`'s path

    notes: list[str] = []
    running = [a for a in store.attempts(exp_id) if a.state == "running"]
    for a in running:  # before any decision: nothing of it may run on afterwards
        notes.extend(f"{a.task}: attempt {a.number}: {note}"
                     for note in _reclaim(store.attempt_dir(exp_id, a.task, a.number)))
    states = {t.name: t.state for t in store.tasks(exp_id)}
    with store.transaction():
        settled: set[str] = set()
        for a in running:
            folder = store.attempt_dir(exp_id, a.task, a.number)
            state = states.get(a.task)
            if has_result(folder):
                _check(a.task, state, "succeeded")
                ended = (folder / RESULT_FILE).stat().st_mtime
                store.update_attempt(exp_id, a.task, a.number, state="succeeded",
                                     ended_at=ended)
                store.update_task(exp_id, a.task, state="succeeded", kind=None, message="")
                notes.append(f"{a.task}: attempt {a.number} had finished; kept its result")
            elif a.task in cancelling:
                message = "cancelled on request; its controller had died while it ran"
                _check(a.task, state, "cancelled")
                store.update_attempt(exp_id, a.task, a.number, state="cancelled",
                                     kind="cancelled", ended_at=time.time(), message=message)
                store.update_task(exp_id, a.task, state="cancelled", kind="cancelled",
                                  message=message)
                store.add_event(exp_id, "cancelled", task=a.task)
                notes.append(f"{a.task}: attempt {a.number} cancelled (controller dead)")
            else:  # preempted: its worker (or its backend's reclaim) recorded it so
                kind = "preempted" if _preempted(folder) else "lost"
                message = ("preempted while its controller was gone; the next attempt "
                           "resumes" if kind == "preempted" else
                           "its controller died while it ran")
                _check(a.task, state, "failed")
                store.update_attempt(exp_id, a.task, a.number, state="failed", kind=kind,
                                     ended_at=time.time(), message=message)
                store.update_task(exp_id, a.task, state="failed", kind=kind,
                                  message=message)
                notes.append(f"{a.task}: attempt {a.number} " + (
                    "lost with its controller" if kind == "lost" else "preempted"))
            settled.add(a.task)
        for t in store.tasks(exp_id):
            if t.state in ("running", "retrying") and t.name not in settled:
                if t.name in cancelling:  # _cancel_here marks it cancelled next
                    continue
                _check(t.name, t.state, "failed")
                store.update_task(exp_id, t.name, state="failed", kind="lost",
                                  message="its controller died before it ended")
                notes.append(f"{t.name}: left {t.state} by a dead controller")
        if notes:
            store.add_event(exp_id, "controller_lost", data={"notes": notes})
    return notes


def _rerun_choices(rerun: tuple[str, ...] | list[str] | str,
                   tasks: list[str]) -> tuple[str, ...]:
    """``rerun`` as a tuple of groups and task names (rule 3), or a
    :class:`TaskDefinitionError` naming what is unknown and what is close to it."""
    if isinstance(rerun, str):
        rerun = tuple(x.strip() for x in rerun.split(",") if x.strip())
    words = (*RERUN_CHOICES, RERUN_ALL)
    known = set(tasks)
    unknown = [r for r in rerun if r not in words and r not in known]
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, [*tasks, *words], n=3, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)"
                                         if close else ""))
        shown = ", ".join(tasks[:20]) + (f", ... ({len(tasks) - 20} more)"
                                          if len(tasks) > 20 else "")
        raise TaskDefinitionError(
            f"rerun: unknown choice or task {', '.join(hints)}; give task names ({shown}) "
            f"or one of {', '.join(words)}")
    return tuple(rerun)


def _reopen(store: Store, exp_id: str, rerun: tuple[str, ...]) -> list[str]:
    """Rule 3, by a process that holds the controller lock."""
    chosen = []
    every = RERUN_ALL in rerun
    with store.transaction():
        for t in store.tasks(exp_id):
            group = ("never-started" if t.attempts == 0 and t.state in ("pending", "skipped")
                     else t.state)
            if every or t.name in rerun or (t.state != "succeeded" and group in rerun):
                chosen.append(t.name)
                if t.state != "pending":
                    _check(t.name, t.state, "pending")
                    store.update_task(exp_id, t.name, state="pending", kind=None, message="")
                    store.add_event(exp_id, "reopened", task=t.name,
                                    data={"was": t.state})
    return chosen


def prior_runs(store: Store, exp_id: str) -> dict[str, dict[str, Any]]:
    """What earlier runs did, per task, for the engine: state, attempts, kind, message
    (a succeeded task's value is read from the store when it is asked for)."""
    return {t.name: {"state": t.state, "attempts": t.attempts, "kind": t.kind,
                     "message": t.message} for t in store.tasks(exp_id)}


# --- helpers ----------------------------------------------------------------------------


def _check(task: str, old: str | None, new: str) -> None:
    """The same state machine the engine follows (raises InvalidTransition)."""
    from steadyrun.states import TASK_TRANSITIONS, transition

    if old is not None and old != new:
        transition(TASK_TRANSITIONS, f"task {task!r}", old, new)


def _preempted(attempt_dir: Path) -> bool:
    """Whether the attempt's error record says ``preempted``."""
    from steadyrun.attempt.folder import read_error

    record = read_error(attempt_dir)
    return isinstance(record, dict) and record.get("kind") == "preempted"


def _reclaim(attempt_dir: Path) -> list[str]:
    """Ask every registered backend to stop what it may still run for an attempt whose
    controller died (see ``Executor.reclaim``); returns what they did."""
    from steadyrun.executors import executor_classes

    notes = []
    for cls in executor_classes():
        note = cls.reclaim(attempt_dir)
        if note:
            notes.append(note)
    return notes
