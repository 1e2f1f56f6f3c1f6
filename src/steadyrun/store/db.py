"""The store: one SQLite database (WAL) plus one folder per experiment.

``$STEADYRUN_HOME`` (default ``~/.steadyrun``) holds ``steadyrun.db`` with experiments,
tasks, attempts and events, and ``experiments/<id>/`` with the definition snapshot and
one folder per attempt (``tasks/<task>/<n>/``: logs, payload, result or error). The
database is the one source of truth for states; files hold what is too large for it.

Every write that must survive a crash is a transaction (WAL with ``synchronous=NORMAL``
survives a killed process) or an atomic rename. Folders are created with mode 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steadyrun.errors import ExperimentLocked, ExperimentNotFound, StoreError
from steadyrun.store.liveness import HEARTBEAT_STALE_AFTER as HEARTBEAT_STALE_AFTER
from steadyrun.store.liveness import controller_alive as controller_alive
from steadyrun.store.liveness import controller_dead as controller_dead

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    executor TEXT NOT NULL DEFAULT '{}',
    dir TEXT NOT NULL,
    controller_pid INTEGER,
    controller_host TEXT,
    controller_started REAL,
    heartbeat REAL
);
CREATE INDEX IF NOT EXISTS experiments_title ON experiments(title, created_at);
CREATE INDEX IF NOT EXISTS experiments_created ON experiments(created_at, id);
CREATE INDEX IF NOT EXISTS experiments_state ON experiments(state, created_at);
CREATE TABLE IF NOT EXISTS tasks (
    exp_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    kind TEXT,
    depends_on TEXT NOT NULL DEFAULT '[]',
    resources TEXT NOT NULL DEFAULT '{}',
    fingerprint TEXT,
    dir TEXT NOT NULL,
    message TEXT,
    PRIMARY KEY (exp_id, name)
);
CREATE TABLE IF NOT EXISTS attempts (
    exp_id TEXT NOT NULL,
    task TEXT NOT NULL,
    number INTEGER NOT NULL,
    state TEXT NOT NULL,
    kind TEXT,
    exit_code INTEGER,
    started_at REAL,
    ended_at REAL,
    pid INTEGER,
    host TEXT,
    executor TEXT,
    resources TEXT NOT NULL DEFAULT '{}',
    changes TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    message TEXT,
    dir TEXT NOT NULL,
    peak_rss INTEGER,
    peak_gpu_memory INTEGER,
    cpu_seconds REAL,
    PRIMARY KEY (exp_id, task, number),
    FOREIGN KEY (exp_id, task) REFERENCES tasks(exp_id, name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exp_id TEXT NOT NULL,
    task TEXT,
    attempt INTEGER,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_exp ON events(exp_id, id);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exp_id TEXT NOT NULL,
    task TEXT,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    handled_at REAL
);
CREATE INDEX IF NOT EXISTS requests_open ON requests(exp_id, handled_at);
CREATE TABLE IF NOT EXISTS samples (
    exp_id TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ts REAL NOT NULL,
    cpu_percent REAL,
    rss INTEGER,
    processes INTEGER,
    read_bytes INTEGER,
    write_bytes INTEGER,
    gpu_memory INTEGER,
    gpu_utilization REAL
);
CREATE INDEX IF NOT EXISTS samples_attempt ON samples(exp_id, task, attempt, ts);
"""

# Columns added after a table was first released: (table, column, type). Opening an
# older database adds them.
_ADDED_COLUMNS = (
    ("attempts", "peak_rss", "INTEGER"),
    ("attempts", "peak_gpu_memory", "INTEGER"),
    ("attempts", "cpu_seconds", "REAL"),
    ("experiments", "controller_started", "REAL"),
)

def default_home() -> Path:
    """``$STEADYRUN_HOME`` or ``~/.steadyrun``."""
    env = os.environ.get("STEADYRUN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".steadyrun"


class Row:
    """A read-only view of one database row, with JSON columns decoded; columns read as
    attributes (``row.state``) or items (``row["state"]``)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Row({self._values!r})"


_JSON_COLUMNS = {"executor", "depends_on", "resources", "changes", "error", "data"}


class Store:
    """The experiment store at ``home`` (see module docs).

    Thread-safe: one connection guarded by a lock. ``transaction()`` groups writes into
    one commit; the engine wraps each pass of its loop in one. Raises :class:`StoreError`
    when the database cannot be opened (a path that is a file, a newer schema).
    """

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.experiments_dir = self.home / "experiments"
        try:
            _make_private_dir(self.home)
            _make_private_dir(self.experiments_dir)
        except OSError as exc:
            raise StoreError(
                f"cannot use {self.home} as the steadyrun store: {exc}; set STEADYRUN_HOME "
                "to a writable folder") from exc
        self.db_path = self.home / "steadyrun.db"
        self._lock = threading.RLock()
        self._depth = 0
        self._begun = False
        try:
            self._conn = sqlite3.connect(
                self.db_path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            found = self._conn.execute(
                "SELECT value FROM meta WHERE key='schema'").fetchone()
            if found is None:
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                   (str(SCHEMA_VERSION),))
            elif int(found[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.db_path} was written by a newer steadyrun (schema {found[0]}, "
                    f"this one reads {SCHEMA_VERSION}); upgrade steadyrun")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store database {self.db_path}: {exc}") from exc

    # --- transactions ---------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one commit (nestable; the outermost commits).

        The database is locked only from the first write on, so a transaction in which
        nothing is written costs nothing."""
        with self._lock:
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0 and self._begun:
                    self._begun = False
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0 and self._begun:
                self._begun = False
                self._conn.execute("COMMIT")

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self.transaction():
            if not self._begun:
                self._conn.execute("BEGIN IMMEDIATE")
                self._begun = True
            return self._conn.execute(sql, params)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [Row(_decode(dict(r))) for r in rows]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

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
        experiment's folder. The folder appears complete or not at all: it is filled
        under a temporary name, the rows are inserted, and it is renamed into place.
        """
        exp_id = self.new_experiment_id(title)
        final = self.experiments_dir / exp_id
        tmp = self.experiments_dir / f".{exp_id}.tmp"
        try:
            _make_private_dir(tmp)
            for t in tasks:  # made now so that starting an attempt is one mkdir
                _make_private_dir(tmp / "tasks" / task_dir_name(t["name"]))
            for rel, content in (files or {}).items():
                path = tmp / rel
                _make_private_dir(path.parent)
                path.write_bytes(content)
            now = time.time()
            with self.transaction():
                self._write(
                    "INSERT INTO experiments (id, title, state, created_at, executor, dir) "
                    "VALUES (?, ?, 'created', ?, ?, ?)",
                    (exp_id, title, now, json.dumps(executor), str(final)))
                for pos, t in enumerate(tasks):
                    self._write(
                        "INSERT INTO tasks (exp_id, name, position, state, depends_on, "
                        "resources, fingerprint, dir) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
                        (exp_id, t["name"], pos, json.dumps(list(t.get("depends_on", ()))),
                         json.dumps(t.get("resources", {})), t.get("fingerprint"),
                         task_dir_name(t["name"])))
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return exp_id

    def experiment(self, exp_id: str) -> Row:
        """The experiment row; :class:`ExperimentNotFound` when there is none."""
        rows = self._read("SELECT * FROM experiments WHERE id=?", (exp_id,))
        if not rows:
            raise ExperimentNotFound(f"no experiment with id {exp_id!r} in {self.home}")
        return rows[0]

    def experiment_dir(self, exp_id: str) -> Path:
        return self.experiments_dir / exp_id

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
        return self._read(sql, tuple(params))

    def resolve_id(self, prefix: str) -> str:
        """The one experiment id that starts with ``prefix``.

        Raises :class:`ExperimentNotFound` naming the closest ids when none matches, or
        the candidates when the prefix is ambiguous."""
        rows = self._read("SELECT id FROM experiments WHERE id >= ? AND id < ? ORDER BY id "
                          "LIMIT 11", (prefix, prefix + "\U0010ffff"))
        ids = [r.id for r in rows]
        if prefix in ids:
            return prefix
        if len(ids) == 1:
            return ids[0]
        if ids:
            shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
            raise ExperimentNotFound(
                f"{prefix!r} matches several experiments ({shown}); give more of the id")
        import difflib

        recent = [r.id for r in self._read(
            "SELECT id FROM experiments ORDER BY created_at DESC LIMIT 2000")]
        close = difflib.get_close_matches(prefix, recent, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else (
            "; `steadyrun list` shows the experiments" if recent else
            f"; the store at {self.home} has no experiments")
        raise ExperimentNotFound(f"no experiment with id {prefix!r}{hint}")

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
        driving it."""
        with self.transaction():
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
        return self._read("SELECT * FROM tasks WHERE exp_id=? ORDER BY position", (exp_id,))

    def update_task(self, exp_id: str, name: str, **fields: Any) -> None:
        self._update("tasks", "exp_id=? AND name=?", (exp_id, name), fields)

    def attempts(self, exp_id: str, task: str | None = None) -> list[Row]:
        if task is None:
            return self._read(
                "SELECT * FROM attempts WHERE exp_id=? ORDER BY task, number", (exp_id,))
        return self._read("SELECT * FROM attempts WHERE exp_id=? AND task=? ORDER BY number",
                          (exp_id, task))

    def attempt_outcomes(self, exp_id: str) -> list[Row]:
        """Every attempt of an experiment with only the columns results need (its end,
        exit code, error, changes and peaks), in task and number order: one query,
        cheap enough to run at the end of every experiment."""
        return self._read(
            "SELECT task, number, started_at, ended_at, exit_code, error, changes, "
            "peak_rss, peak_gpu_memory, cpu_seconds FROM attempts WHERE exp_id=? "
            "ORDER BY task, number", (exp_id,))

    def attempt_dir(self, exp_id: str, task: str, number: int) -> Path:
        return self.experiment_dir(exp_id) / "tasks" / task_dir_name(task) / str(number)

    def insert_attempt(self, exp_id: str, task: str, number: int, **fields: Any) -> Path:
        """Record a new attempt and create its private folder; return the folder.

        An empty folder of that number (left by a controller killed between making it
        and committing the row) is reused. Raises :class:`StoreError` when the folder
        already holds files or the attempt is already recorded: another controller ran
        it, which the controller lock exists to prevent."""
        path = self.attempt_dir(exp_id, task, number)
        try:
            os.mkdir(path, 0o700)
        except FileNotFoundError:  # a task folder made by an older version, or removed
            _make_private_dir(path)
        except FileExistsError:
            if not path.is_dir() or any(path.iterdir()):
                raise StoreError(
                    f"experiment {exp_id}, task {task!r}: the folder of attempt {number} "
                    f"({path}) already holds files from another run; only one controller "
                    f"may drive an experiment: check `steadyrun status {exp_id}`") from None
            os.chmod(path, 0o700)
        cols = {"exp_id": exp_id, "task": task, "number": number, "dir": str(path), **fields}
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        try:
            self._write(f"INSERT INTO attempts ({names}) VALUES ({marks})",
                        tuple(_encode(k, v) for k, v in cols.items()))
        except sqlite3.IntegrityError as exc:
            raise StoreError(
                f"experiment {exp_id}, task {task!r}: attempt {number} is already recorded "
                f"({exc}); only one controller may drive an experiment: check "
                f"`steadyrun status {exp_id}`") from exc
        return path

    def update_attempt(self, exp_id: str, task: str, number: int, **fields: Any) -> None:
        self._update("attempts", "exp_id=? AND task=? AND number=?", (exp_id, task, number),
                     fields)

    # --- events ---------------------------------------------------------------------

    def add_event(self, exp_id: str, event: str, task: str | None = None,
                  attempt: int | None = None, data: dict[str, Any] | None = None) -> None:
        """Append one event (a state change, a retry decision, a warning)."""
        self._write("INSERT INTO events (exp_id, task, attempt, ts, kind, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (exp_id, task, attempt, time.time(), event,
                     json.dumps(data or {}, default=str)))

    def events(self, exp_id: str, after_id: int = 0) -> list[Row]:
        return self._read("SELECT * FROM events WHERE exp_id=? AND id>? ORDER BY id",
                          (exp_id, after_id))

    # --- resource samples -----------------------------------------------------------

    def add_samples(self, exp_id: str, rows: list[tuple[Any, ...]]) -> None:
        """Append monitoring samples: ``(task, attempt, ts, cpu_percent, rss, processes,
        read_bytes, write_bytes, gpu_memory, gpu_utilization)`` each, in one commit."""
        if not rows:
            return
        with self.transaction():
            if not self._begun:
                self._conn.execute("BEGIN IMMEDIATE")
                self._begun = True
            self._conn.executemany(
                "INSERT INTO samples (exp_id, task, attempt, ts, cpu_percent, rss, processes, "
                "read_bytes, write_bytes, gpu_memory, gpu_utilization) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [(exp_id, *r) for r in rows])

    def samples(self, exp_id: str, task: str | None = None) -> list[Row]:
        """Monitoring samples of an experiment (or one task), in time order per attempt."""
        if task is None:
            return self._read("SELECT * FROM samples WHERE exp_id=? ORDER BY task, attempt, ts",
                              (exp_id,))
        return self._read("SELECT * FROM samples WHERE exp_id=? AND task=? "
                          "ORDER BY attempt, ts", (exp_id, task))

    def latest_sample(self, exp_id: str, task: str, attempt: int) -> Row | None:
        """The newest sample of one attempt (one indexed look-up), or None."""
        rows = self._read("SELECT * FROM samples WHERE exp_id=? AND task=? AND attempt=? "
                          "ORDER BY ts DESC LIMIT 1", (exp_id, task, attempt))
        return rows[0] if rows else None

    # --- helpers --------------------------------------------------------------------

    def _update(self, table: str, where: str, key: tuple[Any, ...],
                fields: dict[str, Any]) -> None:
        if not fields:
            return
        sets = ", ".join(f"{k}=?" for k in fields)
        params = tuple(_encode(k, v) for k, v in fields.items()) + key
        self._write(f"UPDATE {table} SET {sets} WHERE {where}", params)


def task_dir_name(name: str) -> str:
    """A file-system-safe folder name for a task; unchanged when already safe."""
    safe = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", name)[:80]
    if safe != name or safe in {".", ".."}:
        safe = f"{safe}-{_short_hash(name)}"
    return safe


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _encode(key: str, value: Any) -> Any:
    if key in _JSON_COLUMNS and value is not None and not isinstance(value, str):
        return json.dumps(value, default=str)
    return value


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_COLUMNS & row.keys():
        if isinstance(row[key], str):
            with contextlib.suppress(ValueError):
                row[key] = json.loads(row[key])
    return row
