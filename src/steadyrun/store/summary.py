"""Reading a big experiment without loading it: counts, the tasks worth a look, pages.

What ``steadyrun status``, ``resume`` and ``list`` need from an experiment of 100,000
tasks costs a few indexed queries here, never a row object per task:

- :func:`state_counts` and :func:`attempt_totals` aggregate in the database, over
  indexes alone (``tasks_state``, the attempts' key);
- :func:`notable_tasks` gives the tasks that need attention (running, retrying,
  failed, cancelled, skipped), a bounded number of them, with their last attempt;
- :func:`iter_tasks` streams every task (or those in some states) in the order they
  were defined, a page at a time, so that memory stays flat however many there are;
- :func:`nothing_to_resume` tells, from counts alone, that a resume would run nothing.

Each task comes back as a :class:`~steadyrun.manage.TaskStatus`, as
:func:`steadyrun.manage.experiment_status` builds it for a small experiment.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

from steadyrun.store.db import Row, Store
from steadyrun.store.results import task_duration

#: The task states worth a look, in the order they are shown.
NOTABLE_STATES = ("running", "retrying", "failed", "cancelled", "skipped")
#: Experiment states after which nothing runs any more.
FINAL_STATES = ("succeeded", "failed", "cancelled")
#: The ``rerun`` groups of a resume (see :mod:`steadyrun.manage`).
RERUN_GROUPS = ("failed", "cancelled", "never-started")
#: Tasks read per query while streaming.
PAGE = 500
#: The task columns a status shows.
_TASK = "SELECT name, position, state, attempts, kind, message FROM tasks"


def state_counts(store: Store, exp_id: str) -> dict[str, int]:
    """How many tasks of ``exp_id`` are in each state (one aggregate query)."""
    return store.task_counts([exp_id])[exp_id]


def attempt_totals(store: Store, exp_id: str) -> dict[str, int]:
    """``{"attempts": N}``: how many attempts ``exp_id`` has made (one query, over
    the attempts' key alone)."""
    rows = store._read("SELECT count(*) AS n FROM attempts WHERE exp_id=?", (exp_id,))
    return {"attempts": int(rows[0].n)}


def notable_tasks(store: Store, exp_id: str, counts: dict[str, int],
                  limit: int) -> list[Any]:
    """Up to ``limit`` tasks in :data:`NOTABLE_STATES` (running first, then retrying,
    failed, cancelled, skipped; each in definition order), with their last attempt's
    details. ``counts`` is :func:`state_counts`' answer: states with none are not
    queried."""
    rows: list[Row] = []
    for state in NOTABLE_STATES:
        left = limit - len(rows)
        if left <= 0:
            break
        if counts.get(state):
            rows += store._read(f"{_TASK} WHERE exp_id=? AND state=? "
                                "ORDER BY position LIMIT ?", (exp_id, state, left))
    return _with_attempts(store, exp_id, rows)


def iter_tasks(store: Store, exp_id: str, states: Collection[str] = (),
               page: int = PAGE) -> Iterator[Any]:
    """Every task of ``exp_id`` (or those in ``states``) in definition order, with its
    last attempt's details, read ``page`` tasks at a time: memory does not grow with
    the experiment. Tasks that change state while this runs show the state they had
    when their page was read."""
    after = -1
    wanted = tuple(states)
    marks = ",".join("?" for _ in wanted)
    while True:
        if wanted:
            rows = store._read(f"{_TASK} WHERE exp_id=? AND position>? AND "
                               f"state IN ({marks}) ORDER BY position LIMIT ?",
                               (exp_id, after, *wanted, page))
        else:
            rows = store._read(f"{_TASK} WHERE exp_id=? AND position>? "
                               "ORDER BY position LIMIT ?", (exp_id, after, page))
        if not rows:
            return
        yield from _with_attempts(store, exp_id, rows)
        if len(rows) < page:
            return
        after = rows[-1].position


def name_width(store: Store, exp_id: str) -> int:
    """The length of the longest task name of ``exp_id`` (0 without tasks)."""
    rows = store._read("SELECT coalesce(max(length(name)), 0) AS n FROM tasks "
                       "WHERE exp_id=?", (exp_id,))
    return int(rows[0].n)


def nothing_to_resume(store: Store, exp_id: str, rerun: Sequence[str] | str) -> bool:
    """True when a resume of ``exp_id`` choosing ``rerun`` would run nothing and change
    nothing, told from counts without reading the definition: the experiment is
    final, nothing is left running, ``rerun`` names only groups (no task names, not
    ``all``) and no task falls in them, and the recorded end is the one a run of
    nothing would record. False whenever in doubt: the full resume decides then."""
    if isinstance(rerun, str):
        rerun = [r.strip() for r in rerun.split(",") if r.strip()]
    if not rerun or any(r not in RERUN_GROUPS for r in rerun):
        return False
    row = store.experiment(exp_id)
    if row.state not in FINAL_STATES:
        return False
    counts = state_counts(store, exp_id)
    total = sum(counts.values())
    if total == 0 or any(counts.get(s) for s in ("running", "retrying", "pending")):
        return False
    never = 0
    if counts.get("skipped") and "never-started" in rerun:
        never = store._read("SELECT count(*) AS n FROM tasks WHERE exp_id=? AND "
                            "state='skipped' AND attempts=0", (exp_id,))[0].n
    chosen = {"failed": counts.get("failed", 0), "cancelled": counts.get("cancelled", 0),
              "never-started": never}
    if any(chosen[r] for r in rerun):
        return False
    # an attempt left running needs settling (rule 2); a succeeded task has none
    others = [s for s in counts if s != "succeeded"]
    marks = ",".join("?" for _ in others)
    running = store._read(
        "SELECT count(*) AS n FROM tasks t JOIN attempts a ON a.exp_id=t.exp_id AND "
        f"a.task=t.name WHERE t.exp_id=? AND t.state IN ({marks}) AND a.state='running'",
        (exp_id, *others))
    if running[0].n:
        return False
    return row.state == ("succeeded" if counts.get("succeeded", 0) == total else "failed")


# --- helpers ----------------------------------------------------------------------------


def _with_attempts(store: Store, exp_id: str, rows: list[Row]) -> list[Any]:
    """The tasks of ``rows`` as TaskStatus, with their attempts read in one query."""
    from steadyrun.manage import TaskStatus

    if not rows:
        return []
    names = [r.name for r in rows]
    by_task: dict[str, list[Row]] = {}
    marks = ",".join("?" for _ in names)
    for row in store._read(
            "SELECT task, number, state, kind, exit_code, started_at, ended_at, pid, host, "
            f"executor, changes FROM attempts WHERE exp_id=? AND task IN ({marks}) "
            "ORDER BY task, number", (exp_id, *names)):
        by_task.setdefault(row.task, []).append(row)
    out = []
    for t in rows:
        attempts = by_task.get(t.name, [])
        a = attempts[-1] if attempts else None
        out.append(TaskStatus(
            name=t.name, state=t.state, attempts=t.attempts, kind=t.kind,
            exit_code=a.exit_code if a is not None else None,
            duration=task_duration(attempts),
            started_at=a.started_at if a is not None else None,
            ended_at=a.ended_at if a is not None else None,
            host=a.host if a is not None else None,
            executor=a.executor if a is not None else None, message=t.message,
            changes=[x.changes for x in attempts if x.changes],
            pid=a.pid if a is not None else None,
            preempted=sum(1 for x in attempts if x.kind == "preempted")))
    return out
