"""Task output while it runs: every attempt's stdout and stderr, one prefixed line each.

What the user gets from a foreground run (``exp.run()``, ``run.run()``, ``steadyrun
run``; off with ``tail_logs=False`` or ``--quiet``)::

    [steadyrun] train: running (attempt 1)
    train | epoch 1 loss 0.52
    train ! UserWarning: ...            (a line the task wrote to stderr)
    train | --- attempt 2 ---           (a retry)
    [steadyrun] train: succeeded

- A task's stdout lines go to this process's stdout, its stderr lines to stderr (with
  ``!`` instead of ``|``), so ``steadyrun run ... > out.txt`` keeps what the tasks
  printed. On a terminal the task names are coloured, each task by its place in the
  experiment, so a task keeps its colour from run to run (``NO_COLOR`` turns colours
  off).
- Names are padded to one width so the output lines up. Only whole lines are shown; what
  a task left without a final newline is shown when its attempt ends. A progress bar
  that redraws itself with carriage returns shows its latest state every few seconds,
  not every redraw.
- State changes (``with_changes``) print in order with the output: a task's last lines
  come before its ``succeeded``.
- A gang attempt (several ranks, :mod:`steadyrun.launchers`) shows every rank's lines
  as they arrive, interleaved, each after ``[rank N] ``, and the launcher's own lines
  (node agents, torchrun) after ``[launcher] ``: ``train | [rank 1] epoch 1 ...``.

How: the engine tells :meth:`LogTail.on_change` when an attempt starts and ends; one
follower thread reads the new bytes of each running attempt's ``stdout.log`` and
``stderr.log`` every ``interval`` seconds (a ``stat`` per file when nothing changed)
and reads the rest when the attempt ends. It works for every executor whose attempt
folder sees the logs: the local strategies, Slurm on a shared filesystem, Ray when the
node shares the folder (otherwise the output arrives when the attempt ends).

What can go wrong: output a task buffers is seen only when the task flushes it (the
worker line-buffers Python's own ``sys.stdout``; a Script's programs buffer as they
choose, e.g. ``PYTHONUNBUFFERED=1``). A stream that cannot be written (a closed pipe)
stops the tailing, with one warning on the logger ``steadyrun.observe.tail``; it never
stops the experiment.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from steadyrun.attempt.names import STDERR_LOG, STDOUT_LOG

log = logging.getLogger(__name__)

#: Seconds between looks at the log files of running attempts.
DEFAULT_INTERVAL = 0.15
#: A progress bar (a line redrawn with ``\r``) shows its latest state this often.
BAR_EVERY = 5.0
_MAX_NAME_WIDTH = 24
_MAX_LINE = 64 * 1024  # a "line" longer than this is shown in pieces
_READ_CHUNK = 1 << 20  # bytes per file per look, so one chatty task cannot starve others
_MAX_BUSY = 0.1  # at most this share of one CPU; with many tasks the looks slow down
_GANG_LOOK = 1.0  # seconds between looks for a started attempt's gang.json
_GANG_LOOK_FOR = 60.0  # ... during its first seconds (a gang writes it as it starts)
_COLORS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
_RESET = "\x1b[0m"

__all__ = ["DEFAULT_INTERVAL", "PROGRESS_CHOICES", "ForegroundView", "LogTail",
           "wants_color"]

#: What ``Experiment(progress=...)`` accepts.
PROGRESS_CHOICES = (True, False, "live", "plain")


class ForegroundView:
    """What a foreground run shows while it runs: the tasks' output (``tail``) and their
    progress (``progress``).

    ``progress``: ``True`` (the default) prints a ``[steadyrun] ...`` line per task
    state change among the output; without ``tail`` it draws the live table instead on
    a terminal (:class:`~steadyrun.observe.live.LiveView`). ``"live"`` draws the table
    on a terminal whatever ``tail`` is, the output scrolling above it; ``"plain"``
    always prints lines; ``False`` shows no progress. ``STEADYRUN_PROGRESS=live`` (or
    ``plain``) in the environment chooses for ``True``.

    Use it as the live view is used: :meth:`on_change` as the engine's ``on_change``,
    :meth:`attach` the engine, :meth:`start` before ``engine.run()``, :meth:`stop`
    after it. Raises :class:`~steadyrun.errors.SteadyrunError` for any other
    ``progress``.
    """

    def __init__(self, progress: bool | str, tail: bool, *, title: str | None = None,
                 names: Iterable[str] = ()) -> None:
        from steadyrun.observe.live import LiveView, wants_live

        check_progress(progress)
        forced = os.environ.get("STEADYRUN_PROGRESS", "").strip().lower()
        if progress == "live" or (progress is True and not tail):
            live = wants_live()
        elif progress is True:  # the output replaces the table unless it is asked for
            live = forced == "live"
        else:
            live = False
        self.view: LiveView | None = None
        self.tail: LogTail | None = None
        if progress and (live or not tail):
            self.view = LiveView(title=title, live=live)
        if tail:
            self.tail = LogTail(names, with_changes=bool(progress) and not live)

    def on_change(self, tr: Any, state: str) -> None:
        """The engine's callback (see :class:`LogTail` and ``LiveView``)."""
        if self.view is not None:
            self.view.on_change(tr, state)
        if self.tail is not None:
            self.tail.on_change(tr, state)

    def attach(self, engine: Any) -> ForegroundView:
        """Watch ``engine`` (the table reads its ``snapshot()``)."""
        if self.view is not None:
            self.view.attach(engine)
        return self

    def start(self) -> ForegroundView:
        """Start drawing the table and following the output."""
        if self.view is not None:
            self.view.start()
        if self.tail is not None:
            self.tail.start()
        return self

    def stop(self) -> None:
        """Print the output that is left, then the last table. Idempotent."""
        if self.tail is not None:
            self.tail.stop()
        if self.view is not None:
            self.view.stop()


def check_progress(progress: object) -> None:
    """Raise :class:`~steadyrun.errors.SteadyrunError` unless ``progress`` is one of
    :data:`PROGRESS_CHOICES`."""
    if progress not in PROGRESS_CHOICES or not isinstance(progress, bool | str):
        from steadyrun.errors import SteadyrunError

        raise SteadyrunError(
            f"progress={progress!r}: choose True (lines among the output, or the live "
            "table when tail_logs=False), 'live' (the table on a terminal), 'plain' "
            "(lines) or False (nothing)")


class LogTail:
    """Prints the output of running attempts as ``name | line`` while they run.

    Give :meth:`on_change` to the engine as its ``on_change`` (or call it from one),
    :meth:`start` before ``engine.run()`` and :meth:`stop` after it (or use it as a
    context manager); :meth:`stop` prints what is left. ``names`` (the task names) set
    the width the names are padded to. ``out`` and ``err`` default to ``sys.stdout`` and
    ``sys.stderr`` as they are at each write (so a live table that redirects them keeps
    the lines above it). ``with_changes`` also prints each task state change as a
    ``[steadyrun] ...`` line on ``err``. ``color`` (default: when the stream is a
    terminal) colours the names.
    """

    def __init__(self, names: Iterable[str] = (), *, out: TextIO | None = None,
                 err: TextIO | None = None, with_changes: bool = False,
                 color: bool | None = None, interval: float = DEFAULT_INTERVAL) -> None:
        self.out = out
        self.err = err
        self.with_changes = with_changes
        self.interval = interval
        self._color = color
        names = list(names)
        self._width = min(_MAX_NAME_WIDTH, max((len(n) for n in names), default=0))
        self._order = {n: i for i, n in enumerate(names)}
        self._events: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._followers: dict[str, _Follower] = {}
        self._prefixes: dict[tuple[str, str], str] = {}
        self._colors: tuple[bool, bool] = (False, False)
        self._broken = False

    # --- the engine's side (its thread: cheap, never raises) -----------------------------

    def on_change(self, tr: Any, state: str) -> None:
        """The engine's callback: a task whose attempt started (``running``) is
        followed; any other state ends the following of its attempt (its last bytes are
        read first). Never raises."""
        try:
            change = None
            if self.with_changes:
                from steadyrun.observe.live import format_change

                change = format_change(tr, state)
            att = getattr(tr, "current", None)
            if state == "running" and att is not None:
                self._events.append(("start", tr.name, att.number, Path(att.dir), change))
            else:
                self._events.append(("end", tr.name, change))
            if change is not None and not self._wake.is_set():
                self._wake.set()  # a line to show now; output is looked at every interval
        except Exception:  # noqa: BLE001 - showing output must never stop the experiment
            log.warning("tail: could not take a state change", exc_info=True)

    def follow(self, name: str, number: int, attempt_dir: str | os.PathLike[str]) -> None:
        """Follow attempt ``number`` of task ``name`` in ``attempt_dir`` (what
        :meth:`on_change` does for ``running``)."""
        self._events.append(("start", name, number, Path(attempt_dir), None))
        self._wake.set()

    def end(self, name: str) -> None:
        """Read the rest of task ``name``'s attempt and stop following it."""
        self._events.append(("end", name, None))
        self._wake.set()

    # --- lifetime ------------------------------------------------------------------------

    def start(self) -> LogTail:
        """Start the follower thread. Idempotent."""
        if self._thread is not None:
            return self
        self._colors = (self._wants_color(self._out()), self._wants_color(self._err()))
        self._thread = threading.Thread(target=self._run, name="steadyrun-tail",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Print what is left of every followed attempt and stop the thread (waiting at
        most ``timeout`` seconds for it). Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> LogTail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the follower thread -------------------------------------------------------------

    def _run(self) -> None:
        pause = self.interval
        while True:
            self._wake.wait(pause)
            self._wake.clear()
            stopping = self._stopping
            began = time.perf_counter()
            try:
                self._pass(final=stopping)
            except Exception:  # noqa: BLE001
                log.warning("tail: stopped showing task output", exc_info=True)
                return
            if stopping:
                return
            # with thousands of running attempts, look less often rather than use a core
            spent = time.perf_counter() - began
            pause = max(self.interval, spent / _MAX_BUSY)

    def _pass(self, final: bool) -> None:
        """One look: the state changes that arrived (in order), then new output."""
        chunks: list[tuple[int, str]] = []
        now = time.monotonic()
        while self._events:
            event = self._events.popleft()
            if event[0] == "start":
                _, name, number, directory, change = event
                old = self._followers.pop(name, None)
                if old is not None:
                    self._drain(old, chunks, now, final=True)
                if change:
                    chunks.append((2, change + "\n"))
                follower = _Follower(name, number, directory)
                self._followers[name] = follower
                if number > 1:
                    chunks.append((1, f"{self._prefix(name, 1)}--- attempt {number} ---\n"))
            else:
                _, name, change = event
                old = self._followers.pop(name, None)
                if old is not None:
                    self._drain(old, chunks, now, final=True)
                if change:
                    chunks.append((2, change + "\n"))
        for follower in list(self._followers.values()):
            self._drain(follower, chunks, now, final=final)
        if final:
            self._followers.clear()
        if chunks:
            self._write(chunks)

    def _drain(self, follower: _Follower, chunks: list[tuple[int, str]], now: float,
               final: bool) -> None:
        follower.look_for_gang(now, final)
        for label, which, source in follower.sources():
            lines = source.read(final, now)
            if lines:
                prefix = self._prefix(follower.name, which) + label
                chunks.append((which, "".join(prefix + line + "\n" for line in lines)))

    def _write(self, chunks: list[tuple[int, str]]) -> None:
        if self._broken:
            return
        # consecutive pieces for one stream in one write
        merged: list[tuple[int, list[str]]] = []
        for which, text in chunks:
            if merged and merged[-1][0] == which:
                merged[-1][1].append(text)
            else:
                merged.append((which, [text]))
        try:
            for which, texts in merged:
                stream = self._out() if which == 1 else self._err()
                stream.write("".join(texts))
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: stop showing output
            self._broken = True
            log.warning("tail: cannot write task output any more", exc_info=True)

    # --- helpers -------------------------------------------------------------------------

    def _out(self) -> TextIO:
        return self.out if self.out is not None else sys.stdout

    def _err(self) -> TextIO:
        return self.err if self.err is not None else sys.stderr

    def _wants_color(self, stream: TextIO) -> bool:
        return wants_color(stream) if self._color is None else self._color

    def _prefix(self, name: str, which: int) -> str:
        key = (name, "|" if which == 1 else "!")
        prefix = self._prefixes.get(key)
        if prefix is None:
            padded = name.ljust(self._width)
            mark = key[1]
            if self._colors[which - 1]:
                index = self._order.get(name)
                if index is None:
                    index = zlib.crc32(name.encode())
                code = _COLORS[index % len(_COLORS)]
                padded = f"\x1b[{code}m{padded}{_RESET}"
                if mark == "!":
                    mark = f"\x1b[31m!{_RESET}"
            prefix = self._prefixes[key] = f"{padded} {mark} "
        return prefix


def wants_color(stream: Any) -> bool:
    """Whether to colour what goes to ``stream``: a terminal, ``NO_COLOR`` unset and
    ``TERM`` not ``dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --- reading one log file by offset ----------------------------------------------------


@dataclass
class _Source:
    """One log file of one attempt: how far it was read and the unfinished line."""

    path: str
    offset: int = 0
    pending: bytes = b""
    bar_shown: float = 0.0

    def read(self, final: bool, now: float) -> list[str]:
        """The whole lines added since the last call (and, when ``final``, the rest)."""
        try:
            size = os.stat(self.path).st_size
        except OSError:  # not written yet (or never: a silent attempt has none)
            size = self.offset
        if size < self.offset:  # replaced or truncated: read it anew
            self.offset = 0
        data = b""
        if size > self.offset:
            data = self._read_bytes(size if final else min(size, self.offset + _READ_CHUNK))
        if not data and not self.pending:
            return []
        text = self.pending + data
        parts = text.split(b"\n")
        self.pending = parts.pop()
        lines = [_visible(p) for p in parts]
        if (final and self.pending) or len(self.pending) > _MAX_LINE:
            lines.append(_visible(self.pending))
            self.pending = b""
        elif data and b"\r" in self.pending and now - self.bar_shown >= BAR_EVERY:
            # a progress bar redrawn in place: its latest state, now and then
            latest = _visible(self.pending)
            if latest.strip():
                lines.append(latest)
                self.bar_shown = now
        return lines

    def _read_bytes(self, until: int) -> bytes:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(until - self.offset)
        except OSError:
            return b""
        self.offset += len(data)
        return data


@dataclass
class _Follower:
    """The logs of one running attempt: its two, and a gang's ranks' two each."""

    name: str
    number: int
    directory: Path
    stdout: _Source = field(init=False)
    stderr: _Source = field(init=False)
    ranks: list[tuple[str, _Source, _Source]] | None = field(init=False, default=None)
    began: float = field(init=False, default=0.0)
    looked: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.stdout = _Source(os.path.join(self.directory, STDOUT_LOG))
        self.stderr = _Source(os.path.join(self.directory, STDERR_LOG))

    def look_for_gang(self, now: float, final: bool) -> None:
        """Find out (once a second during its first minute, and at its end) whether the
        attempt runs as a gang; from then on its ranks' logs are read too."""
        if self.ranks is not None:
            return
        if not self.began:
            self.began = now
        if not final and (now - self.looked < _GANG_LOOK or now - self.began > _GANG_LOOK_FOR):
            return
        self.looked = now
        from steadyrun.attempt.logread import gang_ranks

        found = gang_ranks(self.directory)
        if found is None:
            return
        folder = os.path.join(self.directory, "ranks")
        self.ranks = [(f"[rank {k}] ", _Source(os.path.join(folder, str(k), STDOUT_LOG)),
                       _Source(os.path.join(folder, str(k), STDERR_LOG))) for k in found]

    def sources(self) -> list[tuple[str, int, _Source]]:
        """``(label, 1 or 2, source)`` of every log to read, ranks first."""
        if self.ranks is None:
            return [("", 1, self.stdout), ("", 2, self.stderr)]
        out = [(label, which, source) for label, o, e in self.ranks
               for which, source in ((1, o), (2, e))]
        return out + [("[launcher] ", 1, self.stdout), ("[launcher] ", 2, self.stderr)]


def _visible(raw: bytes) -> str:
    """A line as a terminal would leave it: what follows the last carriage return (a
    redrawn progress bar shows its last state), without a Windows line end."""
    raw = raw.rstrip(b"\r")
    if b"\r" in raw:
        raw = raw.rsplit(b"\r", 1)[1]
    return raw.decode("utf-8", "replace")
