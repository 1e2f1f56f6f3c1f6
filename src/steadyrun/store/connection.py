"""The store's connection: opening, transactions, and failures in words.

:class:`Database` is what :class:`~steadyrun.store.db.Store` is built on. It checks
that the home is private before anything is read (:mod:`steadyrun.store.files`),
opens the database writable or read-only (:mod:`steadyrun.store.schema`), refuses to
write to a damaged database, and turns every ``sqlite3`` error into a named
:class:`~steadyrun.errors.StoreError` (:mod:`steadyrun.store.problems`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steadyrun.errors import StoreCorrupt, StoreError, StoreFull, StoreReadOnly
from steadyrun.store import problems
from steadyrun.store.files import (
    PRIVATE_DIR,
    check_file,
    check_home,
    make_private_dir,
    os_error,
    tighten,
)
from steadyrun.store.schema import (
    Row,
    connect_empty,
    connect_readonly,
    connect_writable,
    decode,
    encode,
)

_checked: dict[tuple[int, int], str | None] = {}  # (device, inode) -> damage, per process


def default_home() -> Path:
    """``$STEADYRUN_HOME`` or ``~/.steadyrun``."""
    env = os.environ.get("STEADYRUN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".steadyrun"


class Database:
    """The connection of a store at ``home`` (see :class:`~steadyrun.store.db.Store`)."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *,
                 readonly: bool = False) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.experiments_dir = self.home / "experiments"
        self.db_path = self.home / "steadyrun.db"
        self.readonly = readonly
        self.exists = True
        self._readonly_why = "it was opened read-only"
        self._damage: str | None = None
        self._full: str | None = None  # the disk filled: only settling writes go on
        self._settling = False
        self._lock = threading.RLock()
        self._depth = 0
        self._begun = False
        self._closed = False
        self._checked_dirs: set[str] = set()
        self._columns: dict[str, bool] = {}
        self._staged: dict[str, list[tuple[Any, ...]]] = {}
        self._updates: dict[tuple[str, str, tuple[Any, ...]], dict[str, Any]] = {}
        check_home(self.home)
        if readonly:
            self._conn = self._open_readonly()
            return
        try:
            make_private_dir(self.home)
            make_private_dir(self.experiments_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
                raise os_error(exc, self.home, "create the store") from None
            raise StoreError(
                f"cannot use {self.home} as the steadyrun store: {exc}; set STEADYRUN_HOME "
                "to a writable folder") from None
        check_file(self.db_path)
        if not _writable(self.home) or (self.db_path.exists()
                                        and not _writable(self.db_path)):
            self.readonly = True
            self._readonly_why = "its folder cannot be written (a read-only copy or mount)"
            self._conn = self._open_readonly()
            return
        tighten(self.home, PRIVATE_DIR)
        tighten(self.experiments_dir, PRIVATE_DIR)
        self._conn = connect_empty()  # until the database opens: errors can be checked
        try:
            self._conn = connect_writable(self.db_path)
        except sqlite3.Error as exc:
            raise self._problem(exc, "open the store database") from None
        self._check_damage()
        problems.keep_reserve(self.home)

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.db_path.exists():
            self.exists = False
            return connect_empty()
        check_file(self.db_path)
        self._conn = connect_empty()  # until the database opens: errors can be checked
        try:
            return connect_readonly(self.db_path)
        except sqlite3.Error as exc:
            raise self._problem(exc, "open the store database") from None

    # --- transactions ---------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one commit (nestable; the outermost commits).

        The database is locked only from the first write on, so a transaction in which
        nothing is written costs nothing. A failed commit is rolled back and raised as
        a :class:`StoreError`."""
        with self._lock:
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._staged.clear()
                    self._updates.clear()
                    if self._begun:
                        self._begun = False
                        self._rollback()
                raise
            self._depth -= 1
            if self._depth == 0 and self._begun:
                try:
                    self._flush()
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._rollback()
                    raise self._problem(exc, "save to the store") from None
                finally:
                    self._begun = False
                    self._staged.clear()
                    self._updates.clear()

    def _begin(self) -> None:
        if self.readonly:
            raise StoreReadOnly(f"cannot write to the store at {self.home}: "
                                f"{self._readonly_why}; read commands still work")
        if self._damage is not None:
            raise StoreCorrupt(problems.corrupt_message(self.db_path, self._damage))
        if self._full is not None and not self._settling:
            raise StoreFull(self._full)
        if not self._begun:
            self._conn.execute("BEGIN IMMEDIATE")
            self._begun = True

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self.transaction():
            try:
                self._begin()
                if self._staged or self._updates:  # what was kept goes first, in order
                    self._flush()
                return self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise self._problem(exc, "write to the store") from None

    def _append(self, sql: str, params: tuple[Any, ...]) -> None:
        """An INSERT that nothing in the same transaction reads back (an event): kept
        and written with its kind in one ``executemany`` just before the commit (or the
        next read). Outside a transaction, written at once."""
        with self._lock:
            if self._depth == 0:
                self._write(sql, params)
                return
            self._begin()  # a read-only or full store says so now, not at the commit
            self._staged.setdefault(sql, []).append(params)

    def _flush(self) -> None:
        """Write what the transaction kept so far: the merged row updates, grouped by
        the columns they set (one ``executemany`` each), then the kept inserts."""
        if self._updates:
            groups: dict[tuple[str, str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
            for (table, where, key), fields in self._updates.items():
                groups.setdefault((table, where, tuple(fields)), []).append(
                    tuple(encode(k, v) for k, v in fields.items()) + key)
            self._updates.clear()
            for (table, where, names), rows in groups.items():
                sets = ", ".join(f"{k}=?" for k in names)
                self._conn.executemany(f"UPDATE {table} SET {sets} WHERE {where}", rows)
        for sql, rows in self._staged.items():
            self._conn.executemany(sql, rows)
        self._staged.clear()

    def _write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement over many rows (``executemany``), in the current transaction."""
        if not rows:
            return
        with self.transaction():
            try:
                self._begin()
                if self._staged or self._updates:
                    self._flush()
                self._conn.executemany(sql, rows)
            except sqlite3.Error as exc:
                raise self._problem(exc, "write to the store") from None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            try:
                if self._staged or self._updates:
                    self._flush()
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._problem(exc, "read the store") from None
        return [Row(decode(dict(r))) for r in rows]

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()

    @contextlib.contextmanager
    def settling(self) -> Iterator[None]:
        """Let the writes that record the end of a run through after the disk filled
        (every other write fails fast from then on, so that they cannot take the space
        given back for this)."""
        with self._lock:
            self._settling = True
            try:
                yield
            finally:
                self._settling = False

    def check(self, tables: tuple[str, ...] = ()) -> str | None:
        """Run SQLite's ``quick_check`` on the database (or only on ``tables`` and their
        indexes): None when it is sound, else what is damaged (the store refuses
        writes from then on)."""
        found: list[str] = []
        with self._lock:
            for table in tables or (None,):
                sql = f"PRAGMA quick_check({table})" if table else "PRAGMA quick_check(20)"
                try:
                    found += [r[0] for r in self._conn.execute(sql) if r[0] != "ok"]
                except sqlite3.Error as exc:
                    found.append(str(exc))
        damage = "; ".join(found) if found else None
        if damage is not None:
            self._damage = damage
        return damage

    def _update(self, table: str, where: str, key: tuple[Any, ...],
                fields: dict[str, Any]) -> None:
        """``UPDATE table SET fields WHERE where`` (``key`` fills ``where``). Inside a
        transaction, the updates of one row are merged (later values win, as if each
        were run in turn) and written with the other rows' at the commit, or before the
        next read or other write: one ``executemany`` per set of columns."""
        if not fields:
            return
        with self._lock:
            if self._depth > 0:
                self._begin()  # a read-only or full store says so now, not at the commit
                self._updates.setdefault((table, where, key), {}).update(fields)
                return
        sets = ", ".join(f"{k}=?" for k in fields)
        params = tuple(encode(k, v) for k, v in fields.items()) + key
        self._write(f"UPDATE {table} SET {sets} WHERE {where}", params)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _problem(self, exc: sqlite3.Error, action: str) -> StoreError:
        """The named error for a failure of the database; a damaged database is checked
        (and refused for writing from then on), and a full disk gives up the reserve so
        that the end of the run can still be recorded."""
        if problems.is_corrupt(exc) and self._damage is None:
            self._damage = self.check() or " ".join(str(exc).split())
        error = problems.translate(exc, self.home, self.db_path, action, self._damage)
        if isinstance(error, StoreFull):
            problems.release_reserve(self.home)
            self._full = self._full or str(error)
        return error

    def _check_damage(self) -> None:
        """Refuse to write to a damaged database: ``quick_check`` once per process and
        database file (a store is opened many times by one process)."""
        try:
            st = os.stat(self.db_path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key not in _checked:  # the tables that hold states and paths; samples can be big
            _checked[key] = self.check(("meta", "experiments", "tasks", "attempts",
                                        "requests"))
        damage = _checked[key]
        if damage is not None:
            self._damage = damage
            self.close()
            raise StoreCorrupt(problems.corrupt_message(self.db_path, damage))


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)
