"""Bounded attempt logs: the first and the last bytes of what an attempt prints.

An attempt that prints without end must not fill the disk. A cap (``max_log_bytes``,
256 MiB by default, ``None`` for no limit) bounds each of ``stdout.log`` and
``stderr.log`` of every attempt:

- the first half of the cap (the head) is written to the log as it comes;
- what comes after goes to part files beside it (``stdout.log.part-CAP-HEADEND-OFFSET``),
  rotated so that at most the other half of the cap (the tail) is kept;
- when the attempt ends the parts are appended to the log, after one line that says
  what was dropped there::

      [steadyrun: 812345678 bytes of output dropped here (stream bytes 134217728 to
      946563406); this log keeps the first 134217728 bytes and the last 117440512
      (max_log_bytes=268435456)]

  (one line in the file). A finished log is thus at most the cap plus that line.

A worker killed before it could join its parts leaves them; the engine joins them when
it records the end of the attempt (:func:`join_parts`), and readers
(:mod:`steadyrun.attempt.logread`) show head, marker and parts in order meanwhile.

Where the output comes from:

- a worker process points its file descriptors 1 and 2 at pipes, and a pump thread
  writes what arrives to the capped logs (:func:`capture_fds`), so the output of C code
  and of child processes is bounded too;
- an attempt in a thread of the controller writes through :class:`CappedLog` directly
  (:mod:`steadyrun.attempt.streams`), and a Script it runs writes into a pipe pumped
  the same way (:func:`pipe_into`).

Only the standard library, imported when used: the worker imports this module for
every attempt.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from steadyrun.attempt.names import STDERR_LOG, STDOUT_LOG

#: The cap of each log when none is given: 256 MiB (the first and the last 128 MiB).
DEFAULT_MAX_LOG_BYTES = 256 * 1024 * 1024
#: The smallest cap accepted (a smaller one would keep too little to be useful).
MIN_MAX_LOG_BYTES = 4096
#: Environment variable through which an executor gives a worker process its cap: a
#: number of bytes, or ``none`` for no limit. Unset: :data:`DEFAULT_MAX_LOG_BYTES`.
MAX_LOG_ENV = "STEADYRUN_MAX_LOG_BYTES"
#: Sentinel of the ``cap`` arguments: read the cap from :data:`MAX_LOG_ENV`.
FROM_ENV = -1
#: Seconds a capture waits, when its attempt is over, for processes that still hold its
#: pipes (what they print later is dropped; they are being ended anyway).
DRAIN_WAIT = 0.2
#: How many part files hold the tail at most (the newest may be partly filled); fewer
#: for a small cap, whose parts would otherwise be tiny (each costs a file's creation).
TAIL_PARTS = 8
_MIN_PART = 1 << 20

_CHUNK = 1 << 20  # bytes read from a pipe at once
_PIPE_SIZE = 1 << 20  # asked of the kernel for each pipe: fewer wake-ups per MiB
_MARKER_PATTERN = (rb"\[steadyrun: \d+ bytes of output dropped here "
                   rb"\(stream bytes (\d+) to (\d+)\)[^\n]*\n")


def cap_from_env() -> int | None:
    """The cap :data:`MAX_LOG_ENV` asks for (``none``: no limit); unset or unreadable:
    :data:`DEFAULT_MAX_LOG_BYTES`."""
    text = (os.environ.get(MAX_LOG_ENV) or "").strip().lower()
    if text in ("none", "unlimited"):
        return None
    try:
        return max(MIN_MAX_LOG_BYTES, int(text))
    except ValueError:
        return DEFAULT_MAX_LOG_BYTES


def env_value(cap: int | None) -> str:
    """What :data:`MAX_LOG_ENV` holds for ``cap``."""
    return "none" if cap is None else str(cap)


def marker(start: int, end: int, cap: int, kept_head: int, kept_tail: int | None,
           newline_first: bool) -> bytes:
    """The line that stands for the bytes ``start``..``end`` of a stream, dropped."""
    tail = f" and the last {kept_tail}" if kept_tail is not None else ""
    text = (f"[steadyrun: {end - start} bytes of output dropped here (stream bytes {start} "
            f"to {end}); this log keeps the first {kept_head} bytes{tail} "
            f"(max_log_bytes={cap})]\n")
    return (b"\n" if newline_first else b"") + text.encode()


def parse_marker(data: bytes) -> tuple[int, int, int, int] | None:
    """``(start, end, marker_start, marker_end)`` of the first marker line in ``data``
    (stream bytes dropped, and where the line lies in ``data``), or None."""
    import re  # readers only: the worker never needs it

    m = re.search(_MARKER_PATTERN, data)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.start(), m.end()


class Part:
    """One part file of a capped log: ``offset`` is where its bytes start in the stream;
    ``head_end`` where the log's head ended; ``cap`` the cap it was written under."""

    __slots__ = ("path", "cap", "head_end", "offset")

    def __init__(self, path: str, cap: int, head_end: int, offset: int) -> None:
        self.path, self.cap, self.head_end, self.offset = path, cap, head_end, offset

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0


def parts_of(log_path: str) -> list[Part]:
    """The part files of ``log_path`` that exist now, in stream order (none for a log
    that stayed under its cap or was joined already)."""
    directory, name = os.path.split(log_path)
    prefix = name + ".part-"
    try:
        names = [n for n in os.listdir(directory or ".") if n.startswith(prefix)]
    except OSError:
        return []
    parts = []
    for n in names:
        numbers = n[len(prefix):].split("-")
        if len(numbers) == 3 and all(x.isdigit() for x in numbers):
            cap, head, offset = map(int, numbers)
            parts.append(Part(os.path.join(directory, n), cap, head, offset))
    parts.sort(key=lambda p: p.offset)
    return parts


class CappedLog:
    """Appends bytes to one log file, keeping its head and its tail under ``cap``
    (``None``: everything). Thread-safe. :meth:`close` joins the tail to the log; bytes
    written after it are dropped. Raises ``OSError`` when the log cannot be opened."""

    def __init__(self, path: str, cap: int | None) -> None:
        self.path = path
        self.cap = cap
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._written = os.fstat(self._fd).st_size  # stream offset of the next byte
        self._head_end = -1
        self._part_size = self._keep = 0
        if cap is not None:
            tail = cap - cap // 2
            self._head_end = max(cap // 2, self._written)
            self._part_size = max(tail // TAIL_PARTS, min(tail // 2, _MIN_PART), 1)
            self._keep = tail // self._part_size
        self._parts: list[str] = []
        self._part_fd = -1
        self._part_len = 0
        self._closed = False
        self._failed = False

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` (all of it, or its place in the tail); returns its length."""
        view = memoryview(data).cast("B")
        n = len(view)
        with self._lock:
            if self._closed or not n:
                return n
            if self.cap is None:
                _write_all(self._fd, view)
                return n
            room = self._head_end - self._written
            if room > 0:
                _write_all(self._fd, view[:room])
                self._written += min(room, n)
                view = view[room:]
            if len(view) > self._part_size * self._keep:
                view = self._skip(view)
            while len(view):
                if self._part_fd < 0 or self._part_len >= self._part_size:
                    self._rotate()
                k = min(len(view), self._part_size - self._part_len)
                _write_all(self._part_fd, view[:k])
                self._part_len += k
                self._written += k
                view = view[k:]
        return n

    def fail(self, error: BaseException) -> None:
        """Say once (on the process's original stderr) that this log lost output."""
        if not self._failed:
            self._failed = True
            with contextlib.suppress(Exception):
                print(f"steadyrun: cannot write {self.path}: {error}; its output is lost",
                      file=sys.__stderr__)

    def close(self) -> None:
        """Join the kept tail to the log (with the marker line) and close it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._part_fd >= 0:
                os.close(self._part_fd)
                self._part_fd = -1
            try:
                if self._parts:
                    _join(self.path, parts_of(self.path))
            finally:
                os.close(self._fd)

    def _skip(self, view: memoryview) -> memoryview:
        """``view`` alone fills every part kept: drop the parts there are and the bytes
        of ``view`` that would be rotated away, unwritten."""
        size = self._part_size
        end = self._written + len(view)
        last = self._head_end + (end - 1 - self._head_end) // size * size
        keep_from = last - (self._keep - 1) * size
        if keep_from <= self._written:
            return view
        if self._part_fd >= 0:
            os.close(self._part_fd)
            self._part_fd = -1
        for path in self._parts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._parts.clear()
        view = view[keep_from - self._written:]
        self._written = keep_from
        return view

    def _rotate(self) -> None:
        if self._part_fd >= 0:
            os.close(self._part_fd)
        path = f"{self.path}.part-{self.cap}-{self._head_end}-{self._written}"
        self._part_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                0o600)
        self._part_len = 0
        self._parts.append(path)
        while len(self._parts) > self._keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._parts.pop(0))


def join_parts(attempt_dir: str | os.PathLike[str]) -> list[str]:
    """Join the part files a killed worker left to their logs (with the marker line);
    returns the logs joined. Nothing to do (and one ``listdir``) for logs under their cap
    or joined already. Safe to call again after it was interrupted; a log that cannot be
    written is left as it is."""
    directory = os.fspath(attempt_dir)
    joined = []
    for name in (STDOUT_LOG, STDERR_LOG):
        path = os.path.join(directory, name)
        parts = parts_of(path)
        if parts:
            try:
                _join(path, parts)
            except OSError:  # a folder gone or read-only: readers still find the parts
                continue
            joined.append(path)
    return joined


class _Pump:
    """A thread that copies what arrives on pipes to capped logs until every pipe is at
    its end, or until :meth:`finish` stops it."""

    def __init__(self, pairs: list[tuple[int, CappedLog]]) -> None:
        self._pairs = pairs
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="steadyrun-log-pump")
        self._thread.start()

    def _run(self) -> None:
        import select

        poller = select.poll()
        logs = dict(self._pairs)
        for fd in logs:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        stopping = False
        while logs and not stopping:
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    stopping = True
                elif fd in logs and not self._copy(fd, logs[fd], buf, view):
                    poller.unregister(fd)
                    os.close(fd)
                    del logs[fd]
        for fd, log in logs.items():  # stopped: take what is there, without waiting
            os.set_blocking(fd, False)
            with contextlib.suppress(BlockingIOError):
                while self._copy(fd, log, buf, view):
                    pass
            os.close(fd)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    @staticmethod
    def _copy(fd: int, log: CappedLog, buf: bytearray, view: memoryview) -> bool:
        n = os.readv(fd, [buf])
        if n:
            try:
                log.write(view[:n])
            except Exception as e:  # a full disk: the attempt goes on, never blocked
                log.fail(e)
        return n > 0

    def finish(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for every pipe's end, then take what is left."""
        self._thread.join(wait)
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join()


def pipe_into(log: CappedLog) -> tuple[int, _Pump]:
    """A pipe whose reading end is pumped into ``log``: returns its writing end (for a
    child process's stdout or stderr; close it once given) and the pump."""
    r, w = os.pipe()
    _grow_pipe(w)
    return w, _Pump([(r, log)])


class FdCapture:
    """Points file descriptors 1 and 2 of this process at the attempt's logs, capped;
    :meth:`finish` points them back and joins the logs' tails. See :func:`capture_fds`."""

    def __init__(self, directory: str, cap: int | None, keep: bool) -> None:
        _flush_std()
        self._keep = keep
        self._saved = (os.dup(1), os.dup(2))
        self._logs: list[CappedLog] = []
        self._pump: _Pump | None = None
        self._done = False
        try:
            for name in (STDOUT_LOG, STDERR_LOG):
                self._logs.append(CappedLog(os.path.join(directory, name), cap))
            if cap is None:  # nothing to bound: the descriptors point at the files
                for fd, log in zip((1, 2), self._logs, strict=True):
                    os.dup2(log.fileno(), fd)
            else:
                pairs = []
                for fd, log in zip((1, 2), self._logs, strict=True):
                    r, w = os.pipe()
                    _grow_pipe(w)
                    os.dup2(w, fd)
                    os.close(w)
                    pairs.append((r, log))
                self._pump = _Pump(pairs)
        except BaseException:
            self._restore()
            raise
        _active.append(self)

    def finish(self, wait: float = 1.0) -> None:
        """Flush, point fds 1 and 2 back (at what they were with ``keep``, else at the
        log files, uncapped), wait up to ``wait`` seconds for the processes still holding
        the pipes, take what arrived and join each log's tail. Idempotent."""
        if self._done:
            return
        self._done = True
        _flush_std()
        targets = self._saved if self._keep or len(self._logs) < 2 else (
            self._logs[0].fileno(), self._logs[1].fileno())
        for fd, target in zip((1, 2), targets, strict=True):
            os.dup2(target, fd)
        try:
            if self._pump is not None:
                self._pump.finish(wait)
        finally:
            self._close_logs()
            for fd in self._saved:
                os.close(fd)
            with contextlib.suppress(ValueError):
                _active.remove(self)

    def _restore(self) -> None:
        for fd, orig in zip((1, 2), self._saved, strict=True):
            os.dup2(orig, fd)
            os.close(orig)
        self._done = True
        self._close_logs()

    def _close_logs(self) -> None:
        for log in self._logs:
            try:
                log.close()
            except OSError as e:
                print(f"steadyrun: cannot finish {log.path}: {e}", file=sys.__stderr__)


def capture_fds(directory: str, cap: int | None = FROM_ENV, *, keep: bool = False
                ) -> FdCapture:
    """Point fds 1 and 2 (and so ``sys.stdout``, ``sys.stderr``, C code and child
    processes) at ``stdout.log`` and ``stderr.log`` in ``directory``, each capped at
    ``cap`` bytes (:data:`FROM_ENV`: :func:`cap_from_env`; ``None``: no limit, and no
    pump). Call :meth:`FdCapture.finish` when the attempt is over; ``keep`` makes it
    point the descriptors back at what they were, else they stay on the log files.
    Raises ``OSError`` when the logs cannot be opened (nothing is changed then)."""
    if cap == FROM_ENV:
        cap = cap_from_env()
    return FdCapture(directory, cap, keep)


def finish_active(wait: float) -> None:
    """Finish every capture of this process (a worker being stopped, before it dies)."""
    for capture in list(_active):
        with contextlib.suppress(OSError):
            capture.finish(wait)


# --- internals --------------------------------------------------------------------------

_active: list[FdCapture] = []


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        view = view[os.write(fd, view):]


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, AttributeError, OSError):  # not Linux, or above the system's limit
        pass


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()


def _join(path: str, parts: list[Part]) -> None:
    """Append the marker and ``parts`` (in stream order) to the log at ``path``, then
    remove them. A join that was interrupted after its marker is redone from the head."""
    first, last = parts[0], parts[-1]
    head_end = first.head_end
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size > head_end:
            found = parse_marker(os.pread(fd, 4096, head_end))
            if found is not None and found[2] <= 1:  # our own earlier join: start over
                os.ftruncate(fd, head_end)
                size = head_end
        ends_nl = size == 0 or os.pread(fd, 1, size - 1) == b"\n"
        kept = last.offset + last.size() - first.offset
        line = marker(head_end, first.offset, first.cap, head_end, kept, not ends_nl)
        os.lseek(fd, 0, os.SEEK_END)
        _write_all(fd, memoryview(line))
        for part in parts:
            try:
                src = os.open(part.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                _copy_fd(src, fd)
            finally:
                os.close(src)
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part.path)
    finally:
        os.close(fd)


def _copy_fd(src: int, dst: int) -> None:
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
        return
    except (AttributeError, OSError):  # another filesystem or kernel: copy it here
        pass
    while True:
        data = os.read(src, _CHUNK)
        if not data:
            return
        _write_all(dst, memoryview(data))
