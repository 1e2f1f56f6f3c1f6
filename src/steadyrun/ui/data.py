"""Paged reads of the store for the pages: only the rows and columns a page shows, so
that a 10,000-task experiment costs what one page of it costs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

OPEN = ("pending", "running", "retrying")


@dataclass
class TaskRow:
    """One row of an experiment's task table."""

    name: str
    state: str
    attempts: int
    kind: str | None
    message: str | None
    depends_on: list[str]
    duration: float | None
    host: str | None


def task_count(store: Any, exp_id: str) -> int:
    return int(store._read("SELECT count(*) AS n FROM tasks WHERE exp_id=?", (exp_id,))[0].n)


def open_count(store: Any, exp_id: str) -> int:
    marks = ",".join("?" for _ in OPEN)
    return int(store._read(f"SELECT count(*) AS n FROM tasks WHERE exp_id=? AND state IN "
                           f"({marks})", (exp_id, *OPEN))[0].n)


def task_page(store: Any, exp_id: str, page: int, size: int) -> list[TaskRow]:
    """Tasks ``(page-1)*size`` to ``page*size`` in their order, with the duration and
    host of their attempts (two indexed queries)."""
    from steadyrun.store.results import task_duration

    rows = store._read("SELECT name, state, attempts, kind, message, depends_on FROM tasks "
                       "WHERE exp_id=? ORDER BY position LIMIT ? OFFSET ?",
                       (exp_id, size, (page - 1) * size))
    by_task = attempts_of(store, exp_id, [r.name for r in rows])
    now = time.time()
    out = []
    for r in rows:
        mine = by_task.get(r.name, [])
        deps = r.depends_on if isinstance(r.depends_on, list) else []
        out.append(TaskRow(r.name, r.state, int(r.attempts or 0), r.kind, r.message,
                           [str(d) for d in deps], task_duration(mine, now),
                           mine[-1].host if mine else None))
    return out


def attempts_of(store: Any, exp_id: str, names: list[str]) -> dict[str, list[Any]]:
    """The attempts of the tasks ``names`` (the columns a timeline needs), per task in
    number order."""
    by_task: dict[str, list[Any]] = {}
    for start in range(0, len(names), 500):
        chunk = names[start:start + 500]
        marks = ",".join("?" for _ in chunk)
        for a in store._read(f"SELECT task, number, state, kind, exit_code, started_at, "
                             f"ended_at, host FROM attempts WHERE exp_id=? AND task IN "
                             f"({marks}) ORDER BY task, number", (exp_id, *chunk)):
            by_task.setdefault(a.task, []).append(a)
    return by_task


def task_row(store: Any, exp_id: str, name: str) -> Any:
    """One task's row (one indexed look-up), or None."""
    rows = store._read("SELECT name, state, attempts, kind, message FROM tasks WHERE "
                       "exp_id=? AND name=?", (exp_id, name))
    return rows[0] if rows else None
