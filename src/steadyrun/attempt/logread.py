"""Reading an attempt's log in constant memory, while it is written or after.

:class:`LogReader` reads one log (``stdout.log`` or ``stderr.log``) chunk by chunk from
where it stopped, so the same reader serves a one-off read and ``logs --follow``. It
knows the layout of a capped log (:mod:`steadyrun.attempt.logcap`): while an attempt
runs past its cap, the reader goes from the head in the log file to the part files that
hold the tail, and says with one marker line what it did not see; when the parts are
joined into the log meanwhile, it goes on at the same place in the joined file.

:meth:`LogReader.seek_last_lines` starts it at the last N lines, reading backwards from
the end in blocks, whatever the size of the log. :func:`tail_bytes` is the last bytes of
a log, for error messages.

:func:`gang_ranks` says which ranks a gang attempt has (each keeps its own logs in
``ranks/<rank>/``, see :mod:`steadyrun.launchers`).

What can go wrong: a log that does not exist reads as empty (an attempt that printed
nothing has none); bytes the writer dropped while the reader lagged behind (a capped log
rotating its tail faster than it is read) are replaced by a marker line saying how many.
"""

from __future__ import annotations

import os

from steadyrun.attempt.logcap import Part, marker, parse_marker, parts_of

#: Bytes a read returns at most.
CHUNK = 1 << 20
_BLOCK = 64 * 1024  # read backwards in blocks of this size
_MARKER_WINDOW = 64 * 1024  # where a joined log's marker may lie, after its head


class LogReader:
    """Reads the log at ``path`` from its start (or from :meth:`seek_last_lines`);
    :meth:`read` returns the next bytes, ``b""`` when there is nothing more for now.
    Holds at most one open file at a time; :meth:`close` it (or use ``with``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._pos = 0  # in the log file, while reading it
        self._part: Part | None = None  # the part being read, past the head
        self._part_fd = -1
        self._part_pos = 0
        self._pending = b""  # a marker line to return first

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._part_fd >= 0:
            os.close(self._part_fd)
            self._part_fd = -1

    def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes more of the log, in order; ``b""`` when none is there
        yet (call again later to follow it)."""
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        for _ in range(8):  # a few moves between files at most; they change under us
            if self._part is None:
                data = _pread(self.path, size, self._pos)
                if data:
                    self._pos += len(data)
                    return data
                if not self._enter_parts():
                    return b""
            else:
                data = os.read(self._part_fd, size)
                if data:
                    self._part_pos += len(data)
                    return data
                if not self._next_part():
                    return b""
            if self._pending:
                return self.read(size)
        return b""

    def seek_last_lines(self, lines: int) -> None:
        """Start at the beginning of the last ``lines`` lines of what is there now (a
        final line without its newline counts as one), reading backwards in blocks."""
        parts = parts_of(self.path)
        pieces: list[tuple[Part | None, int]] = [(None, _size(self.path))]
        pieces += [(p, p.size()) for p in parts]
        if lines <= 0:
            self._start_at(pieces[-1][0], parts, pieces[-1][1])
            return
        wanted = lines
        at_end = True
        for part, size in reversed(pieces):
            path = self.path if part is None else part.path
            end = size
            while end > 0:
                start = max(0, end - _BLOCK)
                block = _pread(path, end - start, start)
                if not block:
                    break
                if at_end and block.endswith(b"\n"):  # the newline that ends the last line
                    block = block[:-1]
                at_end = False
                cut = len(block)
                while (nl := block.rfind(b"\n", 0, cut)) >= 0:
                    wanted -= 1
                    if wanted == 0:
                        self._start_at(part, parts, start + nl + 1)
                        return
                    cut = nl
                end = start
        self._start_at(None, parts, 0)  # fewer lines than asked for: all of them

    # --- internals --------------------------------------------------------------------

    def _start_at(self, part: Part | None, parts: list[Part], offset: int) -> None:
        self.close()
        self._pending = b""
        if part is None:
            self._part, self._pos = None, offset
            return
        try:
            self._open_part(part)
        except FileNotFoundError:  # rotated away meanwhile: start with what follows
            later = [p for p in parts_of(self.path) if p.offset > part.offset]
            if not later:
                self._part, self._pos = None, _size(self.path)
                return
            self._open_part(later[0])
            return
        os.lseek(self._part_fd, offset, os.SEEK_SET)
        self._part_pos = offset

    def _open_part(self, part: Part) -> None:
        fd = os.open(part.path, os.O_RDONLY | os.O_CLOEXEC)
        self.close()
        self._part, self._part_fd, self._part_pos = part, fd, 0

    def _enter_parts(self) -> bool:
        """At the end of the log file: move on to the part files when the log ran past
        its cap (True), else stay (False)."""
        for _ in range(3):
            parts = parts_of(self.path)
            if not parts or self._pos < parts[0].head_end:
                return False
            first = parts[0]
            if self._pos > first.head_end:  # past the head: a join may be under way
                found = parse_marker(_pread(self.path, 4096, first.head_end))
                if found is not None and found[2] <= 1:
                    return False  # it is: the rest arrives in this file
            try:
                self._open_part(first)
            except FileNotFoundError:
                continue
            if first.offset > first.head_end:
                self._pending = marker(first.head_end, first.offset, first.cap,
                                       first.head_end, None, not self._ends_with_newline())
            return True
        return False

    def _next_part(self) -> bool:
        """At the end of the current part: go on to the next one once the writer has
        moved there (True), or into the joined log when the parts were joined."""
        assert self._part is not None
        here = self._part.offset + self._part_pos
        parts = parts_of(self.path)
        if not parts:
            return self._into_joined_log(self._part, here)
        later = [p for p in parts if p.offset > self._part.offset]
        if not later:
            return False  # still being written
        data_left = os.read(self._part_fd, 1)  # written just before the writer moved on
        if data_left:
            os.lseek(self._part_fd, -1, os.SEEK_CUR)
            return True
        nxt = later[0]
        try:
            self._open_part(nxt)
        except FileNotFoundError:
            return True  # rotated away too: the next call looks again
        if nxt.offset > here:
            self._pending = marker(here, nxt.offset, nxt.cap, nxt.head_end, None, False)
        return True

    def _into_joined_log(self, part: Part, here: int) -> bool:
        """The parts were joined into the log: go on at stream byte ``here`` in it."""
        head = _pread(self.path, _MARKER_WINDOW, part.head_end)
        found = parse_marker(head)
        self.close()
        self._part = None
        if found is None:  # not joined as expected: show nothing twice
            self._pos = _size(self.path)
            return False
        dropped_from, tail_from, _, line_end = found
        tail_start = part.head_end + line_end
        if here >= tail_from:
            self._pos = tail_start + (here - tail_from)
        else:
            self._pos = tail_start
            self._pending = marker(here, tail_from, part.cap, dropped_from, None, False)
        return True

    def _ends_with_newline(self) -> bool:
        return self._pos == 0 or _pread(self.path, 1, self._pos - 1) == b"\n"


def gang_ranks(attempt_dir: str | os.PathLike[str]) -> list[int] | None:
    """The ranks of a gang attempt, in order (each has its logs in ``ranks/<rank>/``):
    every rank of its ``gang.json`` and any rank folder there; None for an attempt that
    is one process (no ``gang.json``, or not yet: a gang writes it when it starts)."""
    from steadyrun.launchers import RANKS_DIR, read_gang

    gang = read_gang(attempt_dir)
    if gang is None:
        return None
    ranks = set(range(gang.size))
    try:
        names = os.listdir(os.path.join(os.fspath(attempt_dir), RANKS_DIR))
    except OSError:
        names = []
    ranks.update(int(n) for n in names if n.isdigit())
    return sorted(ranks)


def tail_bytes(path: str | os.PathLike[str], size: int) -> bytes:
    """The last ``size`` bytes (at most) of a log as it reads now, part files included;
    ``b""`` when there is none."""
    path = os.fspath(path)
    chunks = []
    need = size
    for p in reversed(parts_of(path)):
        n = p.size()
        take = min(n, need)
        chunks.append(_pread(p.path, take, n - take))
        need -= take
        if need <= 0:
            break
    if need > 0:
        n = _size(path)
        take = min(n, need)
        chunks.append(_pread(path, take, n - take))
    return b"".join(reversed(chunks))


# --- helpers ----------------------------------------------------------------------------


def _pread(path: str, size: int, offset: int) -> bytes:
    if size <= 0:
        return b""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
