"""Owner-only files and folders, and the checks that keep a store private.

Everything the store writes is created 0600 (files) or 0700 (folders) whatever the
umask, and every path that is opened is derived from the store's own folder, never
read back from the database. A home owned by someone else, or writable by others, is
refused: whoever can write there can make this process run their commands.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

from steadyrun.errors import StoreError, StoreFull, StoreReadOnly, StoreUnsafe

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700

#: Where a store's id may lead: one folder name, no separators, not hidden.
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*")


def make_private_dir(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and each missing folder above it with mode 0700 (the umask
    cannot loosen it); an existing folder is left as it is."""
    path = Path(path)
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        os.chmod(folder, PRIVATE_DIR)  # a umask such as 0o277 takes owner bits too


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` that creates a missing file as 0600, whatever the umask."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE)
    if flags & os.O_CREAT:
        with contextlib.suppress(OSError):
            os.fchmod(fd, PRIVATE_FILE)
    return fd


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Create (or replace the contents of) ``path`` as an owner-only file."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_home(home: Path) -> None:
    """Refuse a store folder that another user owns or that others may write.

    Raises :class:`StoreUnsafe` saying what to run (``chmod 700`` or ``chown``)."""
    try:
        st = os.stat(home)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot use {home} as the steadyrun store: {exc}; set "
                         "STEADYRUN_HOME to a folder of your own") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cannot use {home} as the steadyrun store: it is not a folder; "
                         "set STEADYRUN_HOME to a folder of your own")
    _check_owner(home, st, "store folder", f"chmod 700 {home}")


def check_file(path: Path) -> None:
    """Refuse a file of the store (the database) that another user owns or that others
    may write; a missing file passes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StoreUnsafe(f"{path} is a symbolic link; the store's database must be a "
                          f"file of its own: remove the link or set STEADYRUN_HOME elsewhere")
    _check_owner(path, st, "store database", f"chmod 600 {path}")


def tighten(path: Path, mode: int) -> None:
    """Narrow an own file's or folder's mode to ``mode`` when it is looser (stores made
    before files were owner-only); a failure (a read-only mount) changes nothing."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, mode)


def check_id(exp_id: str) -> str:
    """``exp_id`` when it can name a folder under ``experiments/`` (one plain name);
    :class:`StoreUnsafe` otherwise (a database row that was tampered with)."""
    if not isinstance(exp_id, str) or not _ID.fullmatch(exp_id):
        raise StoreUnsafe(f"experiment id {exp_id!r} in the store's database is not a plain "
                          "folder name; it is not used as a path")
    return exp_id


def check_inside(path: Path, root: Path, what: str) -> Path:
    """``path`` when, links followed, it stays inside ``root``; :class:`StoreUnsafe`
    otherwise."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise StoreUnsafe(f"{what} {path} leads outside {root} (to {real}); it is not "
                          "used: remove the link, or check who else writes to this store")
    return path


def task_dir_name(name: str) -> str:
    """A file-system-safe folder name for a task; unchanged when already safe."""
    safe = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", name)[:80]
    if safe != name or safe in {".", ".."}:
        safe = f"{safe}-{_short_hash(name)}"
    return safe


def os_error(exc: OSError, home: Path, action: str) -> StoreError:
    """A named store error for an ``OSError`` met while writing the store's files."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        from steadyrun.store.problems import full_message

        return StoreFull(full_message(home, action))
    if exc.errno == errno.EROFS:
        return StoreReadOnly(f"cannot {action}: the store at {home} is on a read-only file "
                             "system; read commands (list, status, logs) still work; set "
                             "STEADYRUN_HOME to a writable folder to run")
    return StoreError(f"cannot {action} in the store at {home}: {exc}")


def _check_owner(path: Path, st: os.stat_result, what: str, fix: str) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise StoreUnsafe(
            f"the {what} {path} belongs to uid {st.st_uid}, not to you (uid {me}); "
            f"steadyrun only uses a store of your own: set STEADYRUN_HOME to a folder of "
            f"yours, or if this one is yours run `chown -R {me} {path}`")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreUnsafe(
            f"the {what} {path} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): anyone could replace what steadyrun reads "
            f"and runs from it; run `{fix}`")


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]
