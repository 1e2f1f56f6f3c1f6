"""Empty outputs that explain themselves.

When a read command has nothing to print, stdout stays empty (scripts read nothing)
and stderr says why: no experiments in the store, none matching the filters, a task
that never ran (skipped, pending, cancelled before it started: its state and the
reason the store keeps), or an attempt that printed nothing (``(no output)``).
Requests that can never be met are refused with exit code 2 (:class:`UsageProblem`):
an unknown task name (with the closest names) or an attempt number the task does not
have (with the numbers it has), and a ``--rank`` that no attempt shown has (with the
ranks there are).
"""

from __future__ import annotations

from typing import Any

from steadyrun.cli import render
from steadyrun.cli.parse import UsageProblem

_OPEN_TASK_STATES = ("pending", "running", "retrying")


def no_experiments(title: str | None, state: str | None) -> None:
    """Say on stderr why ``steadyrun list`` shows nothing: an empty (or missing) store,
    or filters that match none of the experiments it holds."""
    from steadyrun.store.db import Store

    store = Store(readonly=True)
    try:
        any_at_all = bool(store.list_experiments(limit=1))
    finally:
        store.close()
    if not store.exists:
        render.err(f"no experiments: the store at {store.home} does not exist yet (nothing "
                   "has run there; is STEADYRUN_HOME set as it was?)")
    elif not any_at_all:
        render.err(f"no experiments in the store at {store.home} yet; start one with "
                   "`steadyrun run`")
    else:
        filters = ", ".join(f"{k}={v}" for k, v in (("title", title), ("state", state))
                            if v is not None)
        render.err(f"no experiments matching {filters} in {store.home}; `steadyrun list` "
                   "without filters shows them all")


def logs_request(store: Any, exp_id: str, task: str | None, attempt: int | None,
                 follow: bool, stream: str = "both", rank: int | None = None) -> bool:
    """Check what ``steadyrun logs`` was asked for before anything is printed.

    Returns False when there is nothing to show and stderr said why (a task that never
    started: exit 0). Raises :class:`UsageProblem` for a task the experiment does not
    have, or an attempt number that does not exist (and, with ``--follow``, cannot
    come any more), and a ``rank`` that none of the attempts shown has (an attempt that
    is one process, a rank past its gang's size). Notes on stderr name the tasks that
    have no attempt to show."""
    tasks = {t.name: t for t in store.tasks(exp_id)}
    if task is not None and task not in tasks:
        raise UsageProblem(f"experiment {exp_id} has no task {task!r}"
                           f"{_did_you_mean(task, list(tasks))}; its tasks: "
                           f"{_names(list(tasks))}")
    numbers: dict[str, list[int]] = {name: [] for name in tasks}
    for a in store.attempts(exp_id, task):
        numbers.setdefault(a.task, []).append(int(a.number))
    shown = [task] if task is not None else list(tasks)
    if attempt is not None:
        have = [n for n in shown if attempt in numbers[n]]
        waiting = follow and any(tasks[n].state in _OPEN_TASK_STATES for n in shown)
        if not have and not waiting:
            raise UsageProblem(_no_such_attempt(exp_id, task, attempt, tasks, numbers))
        if have:
            _check_rank(store, exp_id, shown, attempt, follow, rank)
            return True
    _check_rank(store, exp_id, shown, attempt, follow, rank)
    quiet = [n for n in shown if not numbers[n]]
    if task is None and not follow:  # one task's silence would go unnoticed among others
        for name in shown:
            number = attempt if attempt is not None else max(numbers[name], default=None)
            if number in numbers[name] and _silent(store, exp_id, name, number, stream,
                                                   rank):
                render.err(f"task {name!r}, attempt {number}: (no output)")
    for name in quiet:
        row = tasks[name]
        if follow and row.state in _OPEN_TASK_STATES:
            render.err(f"task {name!r} is {row.state}: waiting for its first attempt")
        else:
            render.err(f"task {name!r} has no output: {_never_ran(row)}")
    return len(quiet) < len(shown) or follow


def no_output(stream: str) -> None:
    """Say that the attempts shown printed nothing."""
    render.err("(no output)" if stream == "both" else f"(no output on {stream})")


# --- helpers ----------------------------------------------------------------------------


def _check_rank(store: Any, exp_id: str, shown: list[str], attempt: int | None,
                follow: bool, rank: int | None) -> None:
    """Raise :class:`UsageProblem` when ``rank`` is given and none of the attempts shown
    has it (unless, with ``--follow``, one that just started may still start ranks)."""
    if rank is None:
        return
    if rank < 0:
        raise UsageProblem(f"--rank {rank}: give a rank number >= 0")
    import time

    from steadyrun.attempt.logread import gang_ranks
    from steadyrun.observe.logs import GANG_START_GRACE, rank_problem

    rows = []
    for name in shown:
        attempts = store.attempts(exp_id, name)
        if attempt is not None:
            attempts = [a for a in attempts if a.number == attempt]
        rows += attempts[-1:]
    gangs = {}
    for r in rows:
        found = gang_ranks(r.dir)
        if found is not None:
            gangs[(r.task, r.number)] = found
    if any(rank in ranks for ranks in gangs.values()):
        return
    now = time.time()
    if follow and any(r.state == "running" and (r.task, r.number) not in gangs
                      and now - (r.started_at or now) < GANG_START_GRACE for r in rows):
        return  # its ranks may not have started yet
    if follow and not rows:
        return  # waiting for a first attempt
    raise UsageProblem(rank_problem(exp_id, rows, gangs, rank))


def _silent(store: Any, exp_id: str, task: str, number: int, stream: str,
            rank: int | None = None) -> bool:
    """Whether the logs of an attempt (the streams shown, of every rank of a gang, or of
    ``rank``) are empty or missing."""
    from steadyrun.attempt.names import STDERR_LOG, STDOUT_LOG

    names = {"stdout": (STDOUT_LOG,), "stderr": (STDERR_LOG,)}.get(stream,
                                                                   (STDOUT_LOG, STDERR_LOG))
    folder = store.attempt_dir(exp_id, task, number)
    folders = [folder] if rank is None else []
    ranks = folder / "ranks"
    if rank is not None:
        folders.append(ranks / str(rank))
    elif ranks.is_dir():
        folders += [p for p in ranks.iterdir() if p.name.isdigit()]
    for where in folders:
        for name in names:
            try:
                if (where / name).stat().st_size > 0:
                    return False
            except OSError:
                continue
    return True


def _never_ran(row: Any) -> str:
    """Why a task has no attempt, from its state and the reason the store keeps."""
    why = {"skipped": "it was skipped", "pending": "it has not started yet",
           "cancelled": "it was cancelled before it started",
           "failed": "it failed before any attempt started"}.get(
        row.state, f"it is {row.state} and no attempt was recorded")
    message = (row.message or "").strip()
    return why + (f" ({message})" if message else "")


def _no_such_attempt(exp_id: str, task: str | None, attempt: int, tasks: dict[str, Any],
                     numbers: dict[str, list[int]]) -> str:
    if task is not None:
        have = numbers[task]
        if not have:
            return (f"task {task!r} of {exp_id} has no attempt {attempt}: it has no "
                    f"attempts at all; {_never_ran(tasks[task])}")
        return (f"task {task!r} of {exp_id} has no attempt {attempt}; its attempts: "
                f"{', '.join(map(str, have))} (leave out --attempt for the latest)")
    most = max((max(v) for v in numbers.values() if v), default=0)
    if not most:
        return f"no task of {exp_id} has an attempt {attempt}: none has started"
    return (f"no task of {exp_id} has an attempt {attempt}; the most any task has is "
            f"{most} (`steadyrun status {exp_id}` shows each task's count)")


def _did_you_mean(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:20])
    return shown + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
