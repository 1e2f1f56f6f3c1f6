"""The store's database: its tables, how it is opened, and how rows read back.

Opened for writing, the database is created owner-only (0600: SQLite gives its WAL and
shared-memory files the database's mode) in WAL mode, and older databases gain the
columns added since. Opened read-only it is never created nor changed: SQLite's
``mode=ro``, and ``immutable=1`` when its folder cannot be written (an archived copy,
a read-only mount), so that no WAL or shared-memory file is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from steadyrun.errors import StoreError
from steadyrun.store.files import PRIVATE_FILE, open_private, tighten

SCHEMA_VERSION = 1

SCHEMA = """
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
CREATE INDEX IF NOT EXISTS tasks_position ON tasks(exp_id, position);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(exp_id, state, position);
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
    result BLOB,
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
    gpu_utilization REAL,
    rank INTEGER,
    host TEXT
);
CREATE INDEX IF NOT EXISTS samples_attempt ON samples(exp_id, task, attempt, ts);
"""

# Columns added after a table was first released: (table, column, type). Opening an
# older database adds them.
ADDED_COLUMNS = (
    ("attempts", "peak_rss", "INTEGER"),
    ("attempts", "peak_gpu_memory", "INTEGER"),
    ("attempts", "cpu_seconds", "REAL"),
    ("experiments", "controller_started", "REAL"),
    ("samples", "rank", "INTEGER"),  # a gang's rank (NULL: the attempt's whole tree)
    ("samples", "host", "TEXT"),  # where a gang's sample was taken
    ("attempts", "result", "BLOB"),  # a small return value, pickled (no result.pkl then)
)

JSON_COLUMNS = {"executor", "depends_on", "resources", "changes", "error", "data"}


class Row:
    """A read-only view of one database row, with JSON columns decoded; columns read as
    attributes (``row.state``) or items (``row["state"]``). An attempt's ``dir`` is
    the folder derived from the store's layout, never the path the row holds."""

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


def connect_writable(db_path: Path) -> sqlite3.Connection:
    """Open (creating it owner-only when missing) the database for reading and
    writing, in WAL mode, with the tables of this version. Raises ``sqlite3.Error``
    and :class:`StoreError` (a newer schema)."""
    if not db_path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(open_private(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    for suffix in ("", "-wal", "-shm"):  # stores made before files were owner-only
        tighten(db_path.with_name(db_path.name + suffix), PRIVATE_FILE)
    conn = sqlite3.connect(db_path, timeout=30.0, check_same_thread=False,
                           isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")  # readers see all or none
        for table, column, kind in ADDED_COLUMNS:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        found = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if found is None:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                         (str(SCHEMA_VERSION),))
        _check_version(found, db_path)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(db_path: Path) -> sqlite3.Connection:
    """Open the database read-only; it is never created or changed. ``immutable=1``
    when its folder cannot be written and no WAL is there to read (a clean copy). A
    database still being created reads as empty.
    Raises ``sqlite3.Error`` and :class:`StoreError` (a newer schema)."""
    folder_writable = os.access(db_path.parent, os.W_OK)
    wal = db_path.with_name(db_path.name + "-wal")
    shm = db_path.with_name(db_path.name + "-shm")
    has_wal = wal.exists() and wal.stat().st_size > 0 and shm.exists()
    tries = [False] if folder_writable else ([False, True] if has_wal else [True])
    error: sqlite3.Error | None = None
    for immutable in tries:
        uri = (f"file:{urllib.parse.quote(str(db_path))}?mode=ro"
               + ("&immutable=1" if immutable else ""))
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False,
                               isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            found = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError as exc:
            conn.close()
            if "no such table" in str(exc):  # a writer is creating it right now
                return connect_empty()
            error = exc
            continue
        except sqlite3.Error as exc:
            conn.close()
            error = exc
            continue
        try:
            _check_version(found, db_path)
        except BaseException:
            conn.close()
            raise
        return conn
    assert error is not None
    raise error


def connect_empty() -> sqlite3.Connection:
    """An empty in-memory database with the store's tables: what a read-only view of a
    store that does not exist shows (nothing), written nowhere."""
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA)
    return conn


def encode(key: str, value: Any) -> Any:
    if key in JSON_COLUMNS and value is not None and not isinstance(value, str):
        return json.dumps(value, default=str)
    return value


def decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_COLUMNS & row.keys():
        text = row[key]
        if text == "{}":  # most rows' changes, data and resources: no parse needed
            row[key] = {}
        elif isinstance(text, str):
            with contextlib.suppress(ValueError):
                row[key] = json.loads(text)
    return row


def _check_version(found: Any, db_path: Path) -> None:
    if found is not None and int(found[0]) > SCHEMA_VERSION:
        raise StoreError(
            f"{db_path} was written by a newer steadyrun (schema {found[0]}, "
            f"this one reads {SCHEMA_VERSION}); upgrade steadyrun")
