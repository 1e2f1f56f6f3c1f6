"""The two file operations every attempt needs: an owner-only atomic write, and making
an attempt folder that was only named until then.

Light (``os`` and ``stat`` only): the worker imports it for every attempt.
"""

from __future__ import annotations

import os
import stat
import threading

#: A return value whose pickle is at most this long stays out of ``result.pkl`` for an
#: attempt whose folder is made lazily: it goes to the store's database with the
#: attempt's row instead.
SMALL_RESULT_BYTES = 4096


def join(directory: str, name: str) -> str:
    """``directory/name``: cheaper than ``os.path.join``, and called per attempt."""
    return f"{directory}{os.sep}{name}"


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) through a temporary file and ``os.replace``: a
    reader sees no file or the whole one. Raises ``OSError``."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_dir(path: str | os.PathLike[str]) -> str:
    """Make an attempt folder that was only named so far (and its task's folder when
    that is missing too), owner-only; return it. An attempt whose folder is made lazily
    leaves nothing on disk until it has something to keep (a log line, a large value,
    an error record). Raises ``OSError`` when it cannot be made, or when it or its
    task's folder is a link or a file rather than a folder (never followed)."""
    path = os.fspath(path)
    for where in (os.path.dirname(path), path):
        try:
            os.mkdir(where, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(where).st_mode):
                raise NotADirectoryError(
                    f"{where} is not a folder (a link or a file put there)") from None
        else:
            os.chmod(where, 0o700)  # whatever the umask
    return path


__all__ = ["SMALL_RESULT_BYTES", "atomic_write", "join", "make_dir"]
