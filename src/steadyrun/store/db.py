"""The store: one SQLite database (WAL) plus one folder per experiment.

``$STEADYRUN_HOME`` (default ``~/.steadyrun``) holds ``steadyrun.db`` with experiments,
tasks, attempts and events, and ``experiments/<id>/`` with the definition snapshot and
one folder per attempt (``tasks/<task>/<n>/``: logs, payload, result or error). The
database is the one source of truth for states; files hold what is too large for it.

Every write that must survive a crash is a transaction (WAL with ``synchronous=NORMAL``
survives a killed process) or an atomic rename. The store is private: files 0600 and
folders 0700 whatever the umask, a home owned by someone else or writable by others is
refused (:class:`~steadyrun.errors.StoreUnsafe`), and every path is derived from the
experiment's folder, never read back from the database. Every database failure is a
:class:`~steadyrun.errors.StoreError` (:mod:`steadyrun.store.problems`).

The tables and how the database is opened are in :mod:`steadyrun.store.schema`; the
owner-only files and path checks in :mod:`steadyrun.store.files`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from steadyrun.attempt.folder import atomic_write
from steadyrun.errors import ExperimentLocked, ExperimentNotFound, StoreError
from steadyrun.store.connection import Database, default_home
from steadyrun.store.files import (
    PRIVATE_DIR,
    check_id,
    check_inside,
    make_private_dir,
    os_error,
    task_dir_name,
    write_private,
)
from steadyrun.store.liveness import HEARTBEAT_STALE_AFTER as HEARTBEAT_STALE_AFTER
from steadyrun.store.liveness import controller_alive as controller_alive
from steadyrun.store.liveness import controller_dead as controller_dead
from steadyrun.store.schema import SCHEMA_VERSION, Row, encode

__all__ = ["SCHEMA_VERSION", "Row", "Store", "atomic_write", "default_home",
           "task_dir_name"]


class Store(Database):
    """The experiment store at ``home`` (see module docs).

    Thread-safe: one connection guarded by a lock. ``transaction()`` groups writes into
    one commit; the engine wraps each pass of its loop in one.

    With ``readonly=True`` nothing is created or written: a missing store reads as
    empty (``exists`` is False), and an archived copy or a read-only mount can be
    read. A writable store whose folder cannot be written opens read-only too. Writes
    then raise :class:`StoreReadOnly`.

    Raises :class:`StoreUnsafe` for a home owned by another user or writable by
    others, :class:`StoreCorrupt` when a store opened for writing is damaged, and
    :class:`StoreError` for the rest (a path that is a file, a newer schema). Every
    failure of the database afterwards is a :class:`StoreError` too (a full disk is
    :class:`StoreFull`), never a raw ``sqlite3`` error.
    """

    # --- experiments ----------------------------------------------------------------

    def new_experiment_id(self, title: str) -> str:
        """``<title>-<YYYYmmdd-HHMMSS>-<4 hex>``: sortable, readable, unique."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", title).strip("-.")[:40] or "experiment"
        return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"

    def create_experiment(
        self,
        title: str,
        tasks: list[dict[str, Any]],
        executor: dict[str, Any],
        files: dict[str, bytes] | None = None,
    ) -> str:
        """Record a new experiment and its tasks; return its id.

        ``tasks`` are dicts with ``name``, ``depends_on``, ``resources`` and
        ``fingerprint``; ``files`` (relative path -> content) are written into the
        experiment's folder, owner-only. The folder appears complete or not at all: it
        is filled under a temporary name, the rows are inserted, and it is renamed into
        place. Raises :class:`StoreFull` when the disk is full, :class:`StoreReadOnly`
        on a read-only store.
        """
        if self.readonly:
            self._begin()  # raises StoreReadOnly before anything is made
        exp_id = self.new_experiment_id(title)
        final = self.experiments_dir / exp_id
        tmp = self.experiments_dir / f".{exp_id}.tmp"
        try:
            try:
                make_private_dir(tmp)
                make_private_dir(tmp / "tasks")  # a task's folder appears with its first attempt
                for rel, content in (files or {}).items():
                    path = check_inside(tmp / rel, tmp, "definition file")
                    make_private_dir(path.parent)
                    write_private(path, content)
            except OSError as exc:
                raise os_error(exc, self.home, "write the experiment's folder") from None
            now = time.time()
            with self.transaction():
                self._write(
                    "INSERT INTO experiments (id, title, state, created_at, executor, dir) "
                    "VALUES (?, ?, 'created', ?, ?, ?)",
                    (exp_id, title, now, json.dumps(executor), str(final)))
                rows = [(exp_id, t["name"], pos, _json_list(t.get("depends_on", ())),
                         _json_dict(t.get("resources")), t.get("fingerprint"))
                        for pos, t in enumerate(tasks)]
                self._write_many(
                    "INSERT INTO tasks (exp_id, name, position, state, depends_on, "
                    "resources, fingerprint, dir) VALUES (?, ?, ?, 'pending', ?, ?, ?, '')",
                    rows)
                try:
                    os.replace(tmp, final)
                except OSError as exc:
                    raise os_error(exc, self.home, "write the experiment's folder") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return exp_id

    def experiment(self, exp_id: str) -> Row:
        """The experiment row; :class:`ExperimentNotFound` when there is none."""
        rows = self._read("SELECT * FROM experiments WHERE id=?", (exp_id,))
        if not rows:
            raise ExperimentNotFound(f"no experiment with id {exp_id!r} in {self.home}")
        return self._experiment_row(rows[0])

    def experiment_dir(self, exp_id: str) -> Path:
        """The experiment's folder, derived from its id (never read from the database).
        Raises :class:`StoreUnsafe` for an id that is not a plain folder name or a
        folder that leads outside the store."""
        path = self.experiments_dir / check_id(exp_id)
        if exp_id not in self._checked_dirs:
            check_inside(path, self.experiments_dir, "experiment folder")
            self._checked_dirs.add(exp_id)
        return path

    def list_experiments(self, title: str | None = None, state: str | None = None,
                         limit: int | None = None) -> list[Row]:
        """Experiments, newest first, optionally filtered by title and state."""
        sql, params = "SELECT * FROM experiments WHERE 1=1", list[Any]()
        if title is not None:
            sql += " AND title=?"
            params.append(title)
        if state is not None:
            sql += " AND state=?"
            params.append(state)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._experiment_row(r) for r in self._read(sql, tuple(params))]

    def resolve_id(self, query: str) -> str:
        """The full id of the experiment ``query`` names: the whole id, a unique prefix
        of it or of its random suffix (``6a6e``) or date-and-time tail, ``latest``, or
        ``latest~N`` (the N-th before the latest). Reads only: works read-only.

        Raises :class:`ExperimentNotFound` naming the closest ids when none matches, for
        an empty or blank query, and for ``latest`` on a store without experiments;
        :class:`~steadyrun.errors.AmbiguousExperimentId` listing the candidates (id,
        title, state, start) when several match. See :mod:`steadyrun.store.ids`."""
        from steadyrun.store.ids import resolve_id

        return resolve_id(self, query)

    def task_counts(self, exp_ids: list[str]) -> dict[str, dict[str, int]]:
        """Per experiment, how many tasks are in each state (one query)."""
        counts: dict[str, dict[str, int]] = {i: {} for i in exp_ids}
        for start in range(0, len(exp_ids), 500):
            chunk = exp_ids[start:start + 500]
            marks = ",".join("?" for _ in chunk)
            for r in self._read(f"SELECT exp_id, state, count(*) AS n FROM tasks WHERE exp_id "
                                f"IN ({marks}) GROUP BY exp_id, state", tuple(chunk)):
                counts[r.exp_id][r.state] = r.n
        return counts

    # --- the controller lock --------------------------------------------------------

    def acquire_controller(self, exp_id: str, pid: int, host: str, started: float,
                           *, take_over_from: int | None = None) -> Row:
        """Make ``pid`` the one controller of ``exp_id``; return the experiment row as it
        was read under the lock.

        One ``BEGIN IMMEDIATE`` transaction: the row is read again after the database
        is locked, so two processes racing for it never both win. A holder that is no
        longer alive (its process is gone, or on another host its heartbeat is stale)
        does not keep the lock, nor does ``take_over_from`` (the process on this host
        that started ``pid`` to hand the experiment over). Raises
        :class:`ExperimentLocked` naming the live controller otherwise, having changed
        nothing."""
        with self.transaction():
            self._write("UPDATE experiments SET id=id WHERE id=?", (exp_id,))  # lock now
            row = self.experiment(exp_id)
            holder = row.controller_pid
            mine = (holder, row.controller_host) in ((pid, host), (take_over_from, host))
            if holder is not None and not mine and controller_alive(row):
                raise ExperimentLocked(
                    f"experiment {exp_id} is already driven by controller pid {holder} on "
                    f"{row.controller_host}; wait for it (`steadyrun status {exp_id}`), or "
                    f"`steadyrun cancel {exp_id}`")
            self._write("UPDATE experiments SET controller_pid=?, controller_host=?, "
                        "controller_started=?, heartbeat=? WHERE id=?",
                        (pid, host, started, time.time(), exp_id))
        return row

    def hand_over_controller(self, exp_id: str, from_pid: int, to_pid: int, host: str,
                             started: float) -> bool:
        """Pass the lock from ``from_pid`` (which holds it) to ``to_pid``, a controller
        it started; False when ``from_pid`` no longer holds it (``to_pid`` may have
        taken it over already)."""
        cur = self._write("UPDATE experiments SET controller_pid=?, controller_host=?, "
                          "controller_started=?, heartbeat=? WHERE id=? AND "
                          "controller_pid=? AND controller_host=?",
                          (to_pid, host, started, time.time(), exp_id, from_pid, host))
        return cur.rowcount > 0

    def release_controller(self, exp_id: str, pid: int, *, abandon: bool = False) -> None:
        """Give up the lock if ``pid`` holds it. With ``abandon``, an experiment still
        ``running`` or ``created`` is marked ``failed`` in the same commit (its
        controller stops before the end), so it never reads as running with nobody
        driving it. Goes through even after the disk filled (see :meth:`settling`)."""
        with self.settling(), self.transaction():
            if abandon:
                self._write("UPDATE experiments SET state='failed', ended_at=? WHERE id=? "
                            "AND controller_pid=? AND state IN ('running', 'created')",
                            (time.time(), exp_id, pid))
            self._write("UPDATE experiments SET controller_pid=NULL WHERE id=? AND "
                        "controller_pid=?", (exp_id, pid))

    # --- requests from other processes ----------------------------------------------

    def add_request(self, exp_id: str, kind: str, task: str | None = None) -> None:
        """Ask the experiment's controller to do something (``cancel``)."""
        self._write("INSERT INTO requests (exp_id, task, kind, created_at) VALUES "
                    "(?, ?, ?, ?)", (exp_id, task, kind, time.time()))

    def take_requests(self, exp_id: str) -> list[Row]:
        """The requests not yet handled, marked handled (the controller calls this)."""
        with self.transaction():
            rows = self._read("SELECT * FROM requests WHERE exp_id=? AND handled_at IS NULL "
                              "ORDER BY id", (exp_id,))
            if rows:
                self._write("UPDATE requests SET handled_at=? WHERE exp_id=? AND "
                            "handled_at IS NULL AND id<=?", (time.time(), exp_id, rows[-1].id))
        return rows

    def update_experiment(self, exp_id: str, **fields: Any) -> None:
        """Set columns of an experiment row (``state``, ``started_at``, ...)."""
        self._update("experiments", "id=?", (exp_id,), fields)

    # --- tasks and attempts ---------------------------------------------------------

    def tasks(self, exp_id: str) -> list[Row]:
        """The experiment's tasks in order; each row's ``dir`` is the task's folder as
        derived from the store's layout."""
        rows = self._read("SELECT * FROM tasks WHERE exp_id=? ORDER BY position", (exp_id,))
        if not rows:
            return rows
        tasks_dir = self.experiment_dir(exp_id) / "tasks"
        return [_FolderRow(r, tasks_dir) for r in rows]

    def update_task(self, exp_id: str, name: str, **fields: Any) -> None:
        self._update("tasks", "exp_id=? AND name=?", (exp_id, name), fields)

    def attempts(self, exp_id: str, task: str | None = None) -> list[Row]:
        """The experiment's attempts (of one task) in task and number order. Each row's
        ``dir`` is the attempt's folder derived from the experiment's folder, task and
        number (:meth:`attempt_dir`); the path the database holds is ignored."""
        if task is None:
            rows = self._read(
                "SELECT * FROM attempts WHERE exp_id=? ORDER BY task, number", (exp_id,))
        else:
            rows = self._read("SELECT * FROM attempts WHERE exp_id=? AND task=? "
                              "ORDER BY number", (exp_id, task))
        if not rows:
            return rows
        tasks_dir = self.experiment_dir(exp_id) / "tasks"
        return [_FolderRow(r, tasks_dir) for r in rows]

    def attempt_outcomes(self, exp_id: str) -> list[Row]:
        """Every attempt of an experiment with only the columns results need (its end,
        exit code, error, changes and peaks), in task and number order: one query,
        cheap enough to run at the end of every experiment."""
        result = ", result" if self._has_column("attempts", "result") else ""
        return self._read(
            "SELECT task, number, started_at, ended_at, exit_code, error, changes, "
            f"peak_rss, peak_gpu_memory, cpu_seconds{result} FROM attempts WHERE exp_id=? "
            "ORDER BY task, number", (exp_id,))

    def _has_column(self, table: str, column: str) -> bool:
        """Whether the database has ``table.column`` (a store written by an older
        version and opened read-only may lack one)."""
        key = f"{table}.{column}"
        if key not in self._columns:
            rows = self._read(f"PRAGMA table_info({table})")
            self._columns[key] = any(r.name == column for r in rows)
        return self._columns[key]

    def attempt_dir(self, exp_id: str, task: str, number: int) -> Path:
        """The folder of attempt ``number`` of ``task``, derived from the experiment's
        folder (never read from the database). Raises :class:`StoreUnsafe` when it
        leads outside the experiment's folder (a link put there)."""
        base = self.experiment_dir(exp_id)
        path = base / "tasks" / task_dir_name(task) / str(int(number))
        return check_inside(path, base, "attempt folder")

    def insert_attempt(self, exp_id: str, task: str, number: int, *, make_dir: bool = True,
                       **fields: Any) -> Path:
        """Record a new attempt and (with ``make_dir``) create its private folder; return
        the folder. Without ``make_dir`` the folder is only named: whoever first has
        something to keep there makes it (:func:`steadyrun.attempt.folder.make_dir`).

        An empty folder of that number (left by a controller killed between making it
        and committing the row) is reused. Raises :class:`StoreError` when the folder
        already holds files or the attempt is already recorded: another controller ran
        it, which the controller lock exists to prevent."""
        if self.readonly:
            self._begin()  # raises StoreReadOnly before anything is made
        if make_dir:
            path = self.attempt_dir(exp_id, task, number)
            self._make_attempt_dir(exp_id, task, number, path)
        else:  # nothing on disk yet: the folder's maker checks where it leads
            path = (self.experiment_dir(exp_id) / "tasks" / task_dir_name(task)
                    / str(int(number)))
        cols = {"exp_id": exp_id, "task": task, "number": number, "dir": "", **fields}
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        try:
            with self.transaction():
                self._begin()  # kept updates are of rows that exist: they need not go first
                self._conn.execute(f"INSERT INTO attempts ({names}) VALUES ({marks})",
                                   tuple(encode(k, v) for k, v in cols.items()))
        except sqlite3.IntegrityError as exc:
            raise StoreError(
                f"experiment {exp_id}, task {task!r}: attempt {number} is already recorded "
                f"({exc}); only one controller may drive an experiment: check "
                f"`steadyrun status {exp_id}`") from None
        except sqlite3.Error as exc:
            raise self._problem(exc, "record a new attempt") from None
        return path

    def _make_attempt_dir(self, exp_id: str, task: str, number: int, path: Path) -> None:
        try:
            os.mkdir(path, PRIVATE_DIR)
            os.chmod(path, PRIVATE_DIR)
        except FileNotFoundError:  # the task's first attempt: its folder is made too
            try:
                make_private_dir(path)
            except OSError as exc:
                raise os_error(exc, self.home, "make an attempt's folder") from None
        except FileExistsError:
            if not path.is_dir() or any(path.iterdir()):
                raise StoreError(
                    f"experiment {exp_id}, task {task!r}: the folder of attempt {number} "
                    f"({path}) already holds files from another run; only one controller "
                    f"may drive an experiment: check `steadyrun status {exp_id}`") from None
            os.chmod(path, PRIVATE_DIR)
        except OSError as exc:
            raise os_error(exc, self.home, "make an attempt's folder") from None

    def update_attempt(self, exp_id: str, task: str, number: int, **fields: Any) -> None:
        self._update("attempts", "exp_id=? AND task=? AND number=?", (exp_id, task, number),
                     fields)

    # --- events ---------------------------------------------------------------------

    def add_event(self, exp_id: str, event: str, task: str | None = None,
                  attempt: int | None = None, data: dict[str, Any] | None = None) -> None:
        """Append one event (a state change, a retry decision, a warning)."""
        self._append("INSERT INTO events (exp_id, task, attempt, ts, kind, data) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (exp_id, task, attempt, time.time(), event,
                      json.dumps(data, default=str) if data else "{}"))

    def events(self, exp_id: str, after_id: int = 0) -> list[Row]:
        return self._read("SELECT * FROM events WHERE exp_id=? AND id>? ORDER BY id",
                          (exp_id, after_id))

    # --- resource samples -----------------------------------------------------------

    def add_samples(self, exp_id: str, rows: list[tuple[Any, ...]]) -> None:
        """Append monitoring samples: ``(task, attempt, ts, cpu_percent, rss, processes,
        read_bytes, write_bytes, gpu_memory, gpu_utilization)`` each, optionally followed
        by ``rank, host`` (a gang's samples: one rank's, or with ``rank`` None the whole
        tree on ``host``), in one commit."""
        if not rows:
            return
        full = [(exp_id, *r) if len(r) == 12 else (exp_id, *r[:10], None, None)
                for r in rows]
        with self.transaction():
            try:
                self._begin()
                if self._staged or self._updates:
                    self._flush()
                self._conn.executemany(
                    "INSERT INTO samples (exp_id, task, attempt, ts, cpu_percent, rss, "
                    "processes, read_bytes, write_bytes, gpu_memory, gpu_utilization, rank, "
                    "host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", full)
            except sqlite3.Error as exc:
                raise self._problem(exc, "write samples to the store") from None

    def samples(self, exp_id: str, task: str | None = None) -> list[Row]:
        """Monitoring samples of an experiment (or one task), in time order per attempt.
        Each row has ``rank`` and ``host``: both None for an attempt sampled as one
        tree; for a gang attempt, the rank (None for a node's whole tree) and the host
        where the sample was taken. A store written before ranks were recorded reads
        None for both."""
        if task is None:
            rows = self._read("SELECT * FROM samples WHERE exp_id=? ORDER BY task, attempt, ts",
                              (exp_id,))
        else:
            rows = self._read("SELECT * FROM samples WHERE exp_id=? AND task=? "
                              "ORDER BY attempt, ts", (exp_id, task))
        if rows and "rank" not in rows[0].as_dict():  # an older store opened read-only
            rows = [_with(r, rank=None, host=None) for r in rows]
        return rows

    def latest_sample(self, exp_id: str, task: str, attempt: int) -> Row | None:
        """The newest sample of one attempt (one indexed look-up), or None. For a gang
        attempt, the newest figures of the whole gang: each host's newest whole-tree
        sample (else its ranks' newest, summed), summed over the hosts of the last
        :data:`GANG_WINDOW` seconds; ``rank`` and ``host`` are None."""
        rows = self._read("SELECT * FROM samples WHERE exp_id=? AND task=? AND attempt=? "
                          "ORDER BY ts DESC LIMIT 1", (exp_id, task, attempt))
        if not rows:
            return None
        newest = rows[0].as_dict()
        if newest.get("rank") is None and newest.get("host") is None:
            return rows[0]
        recent = self._read("SELECT * FROM samples WHERE exp_id=? AND task=? AND attempt=? "
                            "AND ts>=? ORDER BY ts DESC", (exp_id, task, attempt,
                                                           newest["ts"] - GANG_WINDOW))
        return Row(_gang_total(recent))
    # --- helpers --------------------------------------------------------------------

    def _experiment_row(self, row: Row) -> Row:
        try:
            folder: Path | None = self.experiment_dir(row.id)
        except StoreError:  # a tampered id: shown, never used as a path
            folder = None
        return _with(row, dir=folder)


#: Seconds of samples :meth:`Store.latest_sample` sums for a gang attempt.
GANG_WINDOW = 5.0


def _gang_total(rows: list[Row]) -> dict[str, Any]:
    """One sample of a whole gang from its recent rows (newest first)."""
    trees: dict[Any, Row] = {}
    ranks: dict[tuple[Any, Any], Row] = {}
    for r in rows:
        d = r.as_dict()
        if d.get("rank") is None:
            trees.setdefault(d.get("host"), r)
        else:
            ranks.setdefault((d.get("host"), d["rank"]), r)
    picked = list(trees.values())
    picked += [r for (host, _), r in ranks.items() if host not in trees]
    total = {**rows[0].as_dict(), "rank": None, "host": None}
    for column in ("cpu_percent", "rss", "processes", "read_bytes", "write_bytes",
                   "gpu_memory"):
        values = [r[column] for r in picked if r[column] is not None]
        total[column] = sum(values) if values else None
    utilization = [r["gpu_utilization"] for r in picked if r["gpu_utilization"] is not None]
    total["gpu_utilization"] = (sum(utilization) / len(utilization)) if utilization else None
    return total


def _json_list(value: Any) -> str:
    return json.dumps(list(value)) if value else "[]"


def _json_dict(value: Any) -> str:
    return json.dumps(value) if value else "{}"


class _FolderRow(Row):
    """A task's or an attempt's row whose ``dir`` is derived from the store's layout
    when it is read (a big experiment's rows are read by the hundred thousand, and
    few of them are asked for their folder)."""

    __slots__ = ("_tasks_dir",)

    def __init__(self, row: Row, tasks_dir: Path) -> None:
        super().__init__(row._values)
        self._tasks_dir = tasks_dir

    def _dir(self) -> Path:
        values = self._values
        if "number" in values:  # an attempt
            return (self._tasks_dir / task_dir_name(values["task"])
                    / str(int(values["number"])))
        return self._tasks_dir / task_dir_name(values["name"])

    def __getattr__(self, name: str) -> Any:
        return self._dir() if name == "dir" else super().__getattr__(name)

    def __getitem__(self, name: str) -> Any:
        return self._dir() if name == "dir" else super().__getitem__(name)

    def as_dict(self) -> dict[str, Any]:
        return {**self._values, "dir": self._dir()}


def _with(row: Row, **values: Any) -> Row:
    """``row`` with some columns replaced."""
    return Row({**row.as_dict(), **values})
