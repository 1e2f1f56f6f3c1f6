"""What went wrong with a store, in words a user can act on.

Every ``sqlite3`` error of the store becomes a :class:`~steadyrun.errors.StoreError`
here: a full disk (:class:`~steadyrun.errors.StoreFull`, naming what fills the folder),
a damaged database (:class:`~steadyrun.errors.StoreCorrupt`, with the command that
recovers it), a read-only store (:class:`~steadyrun.errors.StoreReadOnly`), a database
busy for too long, or anything else with the database's path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path

from steadyrun.errors import StoreCorrupt, StoreError, StoreFull, StoreReadOnly
from steadyrun.units import format_size

_FULL = {"SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_SHMSIZE"}
_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_READONLY = ("SQLITE_READONLY", "SQLITE_CANTOPEN")


#: Kept taken in every writable store and given up when its disk fills, so that the end
#: of a run can still be recorded.
RESERVE_FILE = "steadyrun.reserve"
RESERVE_BYTES = 256 * 1024


def keep_reserve(home: Path) -> None:
    """Keep :data:`RESERVE_BYTES` of the store's disk taken by :data:`RESERVE_FILE` (a
    disk too full for it does without)."""
    from steadyrun.store.files import open_private

    path = home / RESERVE_FILE
    if path.exists():
        return
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        os.close(fd)


def release_reserve(home: Path) -> None:
    """Give the reserve back to a disk that is full."""
    with contextlib.suppress(OSError):
        os.unlink(home / RESERVE_FILE)


def is_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full"."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name == "SQLITE_FULL" or "disk is full" in str(exc)


def is_corrupt(exc: BaseException) -> bool:
    """True when an error suggests a damaged database file."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    return name.startswith(_CORRUPT) or "malformed" in text or "not a database" in text


def translate(exc: sqlite3.Error, home: Path, db_path: Path, action: str,
              damage: str | None = None) -> StoreError:
    """The named store error for ``exc``, met while doing ``action`` (in words).
    ``damage`` is what ``PRAGMA quick_check`` said, when the caller ran it."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if is_full(exc) or (name in _FULL and _disk_nearly_full(home)):
        return StoreFull(full_message(home, action))
    if damage is not None or is_corrupt(exc):
        return StoreCorrupt(corrupt_message(db_path, damage or str(exc)))
    if name.startswith(_READONLY) or "readonly database" in str(exc):
        return StoreReadOnly(
            f"cannot {action}: the store database {db_path} cannot be written ({exc}); "
            "read commands (list, status, logs, report --out DIR) still work; set "
            "STEADYRUN_HOME to a writable folder to run")
    if name == "SQLITE_BUSY" or "database is locked" in str(exc):
        return StoreError(
            f"cannot {action}: the store database {db_path} stayed locked by another "
            "steadyrun process; try again, or check `steadyrun list` for a stuck controller")
    return StoreError(f"cannot {action}: the store database {db_path} failed ({exc})")


def corrupt_message(db_path: Path, detail: str) -> str:
    """What a damaged database is, that steadyrun will not write to it, and how to
    recover what is readable."""
    detail = " ".join(detail.split())[:300]
    recovered = db_path.with_name("recovered.db")
    if shutil.which("sqlite3"):
        how = (f"recover what is readable with `sqlite3 {db_path} \".recover\" | sqlite3 "
               f"{recovered}`, then, with no steadyrun running, "
               f"`mv {db_path} {db_path}.damaged && mv {recovered} {db_path}`")
    else:
        how = ("install the sqlite3 command-line tool and run `sqlite3 steadyrun.db "
               f"\".recover\" | sqlite3 {recovered.name}` in {db_path.parent}, then move "
               f"{recovered.name} over steadyrun.db with no steadyrun running")
    return (f"the store database {db_path} is damaged ({detail}); steadyrun will not write "
            f"to it. Keep a copy of it, then {how}")


def full_message(home: Path, action: str) -> str:
    """Which folder is full, how much is free, what takes the space and what to do."""
    biggest = _biggest(home / "experiments")
    try:
        usage = shutil.disk_usage(home)
        free = f"{format_size(usage.free)} free of {format_size(usage.total)}"
        store = sum(size for _, size, _ in biggest) + _size(home / "steadyrun.db")
        if usage.used > 2 * store:
            free += (f"; the store takes {format_size(store)} of the "
                     f"{format_size(usage.used)} used, the rest is other files on that disk")
    except OSError:
        free = "free space unknown"
    fills = "; biggest: " + ", ".join(
        f"{name} {format_size(size)}" + (f" (mostly {what})" if what else "")
        for name, size, what in biggest) if biggest else ""
    return (f"cannot {action}: the disk holding the store {home} is full ({free}{fills}). "
            f"Free space there (e.g. remove old experiment folders, or large files the tasks "
            f"wrote) or set STEADYRUN_HOME to a bigger disk, then `steadyrun resume ID` "
            f"runs what did not finish")


def _disk_nearly_full(home: Path) -> bool:
    try:
        return shutil.disk_usage(home).free < 1 << 20
    except OSError:
        return False


def _biggest(folder: Path, count: int = 3, budget: float = 2.0,
             ) -> list[tuple[str, int, str]]:
    """The ``count`` largest experiment folders (name, bytes, largest file in it), within
    a time ``budget`` so that a huge store does not hold up the error."""
    deadline = time.monotonic() + budget
    sizes: list[tuple[str, int, str]] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        total, top, top_size = 0, "", 0
        for dirpath, _dirs, files in os.walk(folder / name):
            for f in files:
                path = os.path.join(dirpath, f)
                try:
                    size = os.lstat(path).st_blocks * 512
                except OSError:
                    continue
                total += size
                if size > top_size:
                    top, top_size = os.path.relpath(path, folder / name), size
            if time.monotonic() > deadline:
                break
        what = f"{top} {format_size(top_size)}" if top and top_size * 2 >= total else ""
        sizes.append((name, total, what))
        if time.monotonic() > deadline:
            break
    sizes.sort(key=lambda s: -s[1])
    return [s for s in sizes if s[1] > 0][:count]


def _size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_blocks * 512
    return total
