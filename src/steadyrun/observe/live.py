"""Watching an experiment while it runs: a live table on a terminal, plain lines elsewhere.

What the user gets:

- ``exp.run()`` on a terminal (stderr is a tty, ``progress=True``) draws a table that
  refreshes a few times a second: every task's state, attempt, CPU %, RSS and GPU memory
  of its process tree, elapsed time, and a footer with the totals against capacity
  (CPUs and memory requested by running tasks, the RSS they use, the machine's memory).
  Elsewhere (logs, CI, a pipe) it prints one plain line per task state change.
  ``STEADYRUN_PROGRESS=plain`` (or ``live``) forces one or the other.
- ``steadyrun monitor ID`` draws the same table from another process, reading the store
  (:func:`frame_from_store`; samples reach the store in batches every few seconds, so
  figures there lag the live view by that much).

Both build a :class:`Frame` (plain data) and draw it with :func:`render_table` (rich) or
:func:`format_plain` (text). rich is imported only when a table is drawn. The live view
reads the engine only through ``Engine.snapshot()``, from its own refresh thread; it
never changes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from steadyrun.units import format_duration, format_size, parse_size

if TYPE_CHECKING:
    from steadyrun.engine.snapshot import EngineSnapshot

log = logging.getLogger(__name__)

#: Task states shown first when a table has more tasks than rows.
_FIRST = {"running": 0, "retrying": 1, "failed": 2, "cancelled": 3, "skipped": 4,
          "succeeded": 5, "pending": 6}
_STATE_STYLES = {"running": "bold cyan", "retrying": "cyan", "pending": "dim",
                 "succeeded": "green", "failed": "bold red", "cancelled": "yellow",
                 "skipped": "yellow"}
COLUMNS = ("task", "state", "attempt", "cpu %", "rss", "gpu mem", "elapsed", "note")


@dataclass
class TaskLine:
    """One task in a :class:`Frame`. Resource figures are those of the latest sample of a
    running attempt (None otherwise, or before its first sample)."""

    name: str
    state: str
    attempt: int = 0
    cpu_percent: float | None = None
    rss: int | None = None
    gpu_memory: int | None = None
    elapsed: float | None = None
    note: str = ""


@dataclass
class Totals:
    """The footer of a :class:`Frame`: what running tasks requested against the
    capacity (None: unknown), the RSS they use now, and the machine's memory."""

    cpus_used: float = 0.0
    cpus: float | None = None
    memory_requested: int = 0
    memory: int | None = None
    gpus_used: int = 0
    gpus: int | None = None
    rss: int = 0
    machine_used: int | None = None
    machine_total: int | None = None


@dataclass
class Frame:
    """What one picture of an experiment shows (see :func:`render_table`)."""

    title: str
    state: str
    tasks: list[TaskLine]
    totals: Totals = field(default_factory=Totals)
    time: float = field(default_factory=time.time)


# --- building frames --------------------------------------------------------------------


def frame_from_engine(engine: Any, title: str | None = None,
                      now: float | None = None) -> Frame:
    """A frame of a running :class:`~steadyrun.engine.loop.Engine`, read through its
    :meth:`~steadyrun.engine.loop.Engine.snapshot` (safe from another thread)."""
    return frame_from_snapshot(engine.snapshot(), title, now)


def frame_from_snapshot(snap: EngineSnapshot, title: str | None = None,
                        now: float | None = None) -> Frame:
    """A frame of an engine's snapshot: every task (with the latest sample and the
    backend detail of a running attempt) and the capacity requested of each executor
    against what it has."""
    now = time.time() if now is None else now
    lines = []
    rss_total = 0
    for view in snap.tasks:
        line = TaskLine(name=view.name, state=view.state, attempt=view.attempts,
                        note=_note(view.state, view.kind, view.exit_code, view.message))
        if view.state == "running" and view.attempt_started_at is not None:
            line.elapsed = now - view.attempt_started_at
            line.cpu_percent, line.rss = view.cpu_percent, view.rss
            line.gpu_memory = view.gpu_memory
            rss_total += view.rss or 0
            line.note = view.detail or ""
        elif view.started_at is not None:
            end = view.ended_at if view.ended_at is not None else now
            line.elapsed = end - view.started_at
        if view.due_in is not None and view.due_in > 0:
            line.note += f"; retry in {view.due_in:.1f}s"
        elif view.waiting_for_dependencies:
            line.note = "waiting for dependencies"
        lines.append(line)
    totals = Totals(rss=rss_total)
    for use in snap.capacity:
        totals.cpus = (totals.cpus or 0.0) + use.cpus
        totals.memory = (totals.memory or 0) + use.memory
        totals.gpus = (totals.gpus or 0) + use.gpus
        totals.cpus_used += use.cpus_used
        totals.memory_requested += use.memory_used
        totals.gpus_used += use.gpus_used
    _add_machine_memory(totals)
    state = "finished" if snap.finished else "running"
    return Frame(title=title or snap.exp_id, state=state, tasks=lines, totals=totals,
                 time=now)


def frame_from_store(store: Any, exp_id: str, now: float | None = None,
                     machine: bool | None = None) -> Frame:
    """A frame of experiment ``exp_id`` as the store knows it: task states, the latest
    attempt of each, and the latest stored sample of each running attempt.

    Capacity is known for a local executor (this machine's, with the executor's own
    limits); for other executors the footer shows what is in use without it.
    ``machine`` adds this machine's memory (default: when the controller runs here)."""
    import socket

    now = time.time() if now is None else now
    row = store.experiment(exp_id)
    last: dict[str, Any] = {}
    first_start: dict[str, float] = {}
    for a in store.attempts(exp_id):
        last[a.task] = a
        if a.started_at is not None:
            first_start[a.task] = min(first_start.get(a.task, a.started_at), a.started_at)
    running = [a for a in last.values() if a.state == "running"]
    samples = _latest_samples(store, exp_id, running)
    totals = Totals()
    lines = []
    for t in store.tasks(exp_id):
        a = last.get(t.name)
        line = TaskLine(name=t.name, state=t.state, attempt=t.attempts,
                        note=_note(t.state, t.kind, a.exit_code if a is not None else None,
                                   t.message))
        if a is not None and a.state == "running" and t.state == "running":
            line.elapsed = now - a.started_at if a.started_at else None
            s = samples.get((a.task, a.number))
            if s is not None:
                line.cpu_percent, line.rss, line.gpu_memory = s.cpu_percent, s.rss, s.gpu_memory
                totals.rss += s.rss or 0
            res = a.resources or {}
            totals.cpus_used += float(res.get("cpus") or 0)
            # a row another version wrote: count nothing rather than fail the view
            with contextlib.suppress(Exception):
                totals.memory_requested += parse_size(res.get("memory")) or 0
            totals.gpus_used += len(res.get("gpus") or ())
        elif a is not None and t.name in first_start:
            end = a.ended_at if a.ended_at is not None else now
            line.elapsed = end - first_start[t.name]
        lines.append(line)
    cap = _store_capacity(row.executor)
    if cap is not None:
        totals.cpus, totals.memory, totals.gpus = cap.cpus, cap.memory, len(cap.gpus)
    if machine is None:
        machine = row.controller_host in (None, socket.gethostname())
    if machine:
        _add_machine_memory(totals)
    return Frame(title=f"{row.id} ({row.title})", state=row.state, tasks=lines,
                 totals=totals, time=now)


# --- drawing ----------------------------------------------------------------------------


def render_table(frame: Frame, max_rows: int | None = None) -> Any:
    """The frame as a rich renderable: a table of tasks and a footer of totals.

    With more tasks than ``max_rows``, running, retrying and failed tasks are shown
    first and the rest are counted in one last line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    shown, hidden = _choose(frame.tasks, max_rows)
    table = Table(title=f"{frame.title}: {frame.state}", title_justify="left",
                  header_style="bold", box=None, padding=(0, 2, 0, 0), pad_edge=False)
    for name in COLUMNS:
        numeric = name in ("attempt", "cpu %", "rss", "gpu mem", "elapsed")
        table.add_column(name.upper(), justify="right" if numeric else "left",
                         no_wrap=name in ("task", "state"), overflow="ellipsis")
    for line in shown:
        cells = _cells(line)
        state = Text(cells[1], style=_STATE_STYLES.get(line.state, ""))
        table.add_row(Text(cells[0]), state, *(Text(c) for c in cells[2:]))
    parts: list[Any] = [table]
    if hidden:
        parts.append(Text(_hidden_line(hidden), style="dim"))
    parts.append(Text(format_totals(frame.totals), style="bold"))
    return Group(*parts)


def format_plain(frame: Frame, max_rows: int | None = None) -> str:
    """The frame as aligned plain text (for pipes and logs): the same columns and footer
    as :func:`render_table`."""
    shown, hidden = _choose(frame.tasks, max_rows)
    rows = [[c.upper() for c in COLUMNS], *(_cells(line) for line in shown)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    out = [f"{frame.title}: {frame.state}"]
    for r in rows:
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    if hidden:
        out.append(_hidden_line(hidden))
    out.append(format_totals(frame.totals))
    return "\n".join(out)


def format_totals(t: Totals) -> str:
    """``'CPUs 2/4 in use | memory 1.0GiB requested of 7.5GiB | tasks use 300.0MiB ...'``."""
    cpus = f"{t.cpus_used:g}" + (f"/{t.cpus:g}" if t.cpus is not None else "")
    parts = [f"CPUs {cpus} in use",
             f"memory {format_size(t.memory_requested)} requested"
             + (f" of {format_size(t.memory)}" if t.memory is not None else ""),
             f"tasks use {format_size(t.rss)}"]
    if t.gpus:
        parts.append(f"GPUs {t.gpus_used}/{t.gpus} in use")
    if t.machine_used is not None and t.machine_total:
        parts.append(f"machine {format_size(t.machine_used)} used of "
                     f"{format_size(t.machine_total)}")
    return " | ".join(parts)


def to_text(renderable: Any, width: int = 120) -> str:
    """What ``renderable`` looks like on a terminal ``width`` columns wide, as plain text
    (no colours): for tests and logs."""
    import io

    from rich.console import Console

    console = Console(record=True, file=io.StringIO(), width=width, color_system=None,
                      force_terminal=False, legacy_windows=False)
    console.print(renderable)
    return console.export_text()


def format_change(tr: Any, state: str) -> str:
    """The plain line for a task state change: ``[steadyrun] train: retrying (error,
    exit code 1)``."""
    detail = ""
    if state == "running":
        detail = f" (attempt {tr.attempts})"
    elif state in ("retrying", "failed") and tr.kind:
        detail = f" ({tr.kind}" + (f", exit code {tr.exit_code}" if tr.exit_code else "") + ")"
    elif state == "skipped" and tr.message:
        detail = f" ({tr.message})"
    return f"[steadyrun] {tr.name}: {state}{detail}"


# --- the view exp.run() shows ------------------------------------------------------------


class LiveView:
    """The progress display of one engine run.

    Give :meth:`on_change` to the engine as its ``on_change``, :meth:`attach` the engine,
    then :meth:`start` before ``engine.run()`` and :meth:`stop` after it (or use it as a
    context manager). ``live=True`` draws a refreshing table on ``stream`` (default
    stderr) with rich, ``refresh_per_second`` times a second from rich's own thread;
    failures and retries are also printed as lines above it, so they stay in the
    scrollback. ``live=False`` prints one plain line per state change. ``live=None``
    chooses: a table when ``stream`` is a terminal (see :func:`wants_live`).

    A failure while drawing is logged (logger ``steadyrun.observe.live``) and the previous frame
    stays; it never stops the experiment.
    """

    def __init__(self, engine: Any = None, *, stream: TextIO | None = None,
                 live: bool | None = None, refresh_per_second: float = 4.0,
                 title: str | None = None) -> None:
        self.engine = engine
        self.stream = stream
        self.live = wants_live(self._stream) if live is None else live
        self.refresh_per_second = refresh_per_second
        self.title = title
        self._live: Any = None
        self._last: Any = None
        self._warned = False
        self._next_frame = 0.0
        self._lock = threading.Lock()

    @property
    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def attach(self, engine: Any) -> LiveView:
        """Watch ``engine`` (through its ``snapshot()``)."""
        self.engine = engine
        return self

    def on_change(self, tr: Any, state: str) -> None:
        """The engine's callback: a line per change (plain), or a line above the table
        for a failure or retry (live)."""
        if not self.live:
            print(format_change(tr, state), file=self._stream, flush=True)
            return
        live = self._live
        if live is None:
            return
        # no redraw here: a pass of the loop may change thousands of tasks, and rich's
        # thread redraws a few times a second anyway
        if state in ("retrying", "failed"):
            try:
                live.console.print(format_change(tr, state), highlight=False, markup=False)
            except Exception:  # noqa: BLE001 - drawing must never stop the experiment
                log.warning("live view: could not print a line", exc_info=True)

    def start(self) -> LiveView:
        """Start drawing (live mode); nothing to do in plain mode. Idempotent."""
        if not self.live or self._live is not None:
            return self
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self._stream, highlight=False)
        redirect_stdout = _isatty(sys.stdout)  # a piped stdout stays where it goes
        self._live = Live(get_renderable=self._renderable, console=console,
                          refresh_per_second=self.refresh_per_second, auto_refresh=True,
                          transient=False, redirect_stdout=redirect_stdout,
                          redirect_stderr=True)
        self._live.start()
        return self

    def refresh(self) -> None:
        """Redraw now (live mode)."""
        live = self._live
        if live is not None:
            try:
                live.refresh()
            except Exception:  # noqa: BLE001
                log.warning("live view: refresh failed", exc_info=True)

    def stop(self) -> None:
        """Draw the last frame and stop (it stays on screen). Idempotent."""
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()
            except Exception:  # noqa: BLE001
                log.warning("live view: stop failed", exc_info=True)

    def render(self, width: int = 120) -> str:
        """The current table as text (what the terminal shows)."""
        return to_text(self._renderable(), width)

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _renderable(self) -> Any:
        with self._lock:
            try:
                if self.engine is None:
                    from rich.text import Text

                    return Text("starting...")
                now = time.monotonic()
                if self._last is not None and now < self._next_frame:
                    return self._last  # a big experiment's frame is costly: draw less often
                height = self._live.console.size.height if self._live is not None else None
                frame = frame_from_engine(self.engine, self.title)
                self._last = render_table(frame, max(5, height - 6) if height else None)
                # at most a tenth of the controller's time goes to drawing
                self._next_frame = now + 10 * (time.monotonic() - now)
            except Exception:  # noqa: BLE001 - keep the last frame
                if not self._warned:  # once: it would repeat a few times a second
                    self._warned = True
                    log.warning("live view: could not draw a frame", exc_info=True)
                if self._last is None:
                    from rich.text import Text

                    return Text("")
            return self._last


def wants_live(stream: TextIO | None = None) -> bool:
    """Whether progress should be a live table: ``STEADYRUN_PROGRESS`` (``live`` or
    ``plain``) when set, else whether ``stream`` (default stderr) is a terminal that can
    redraw (not ``TERM=dumb``)."""
    forced = os.environ.get("STEADYRUN_PROGRESS", "").strip().lower()
    if forced in ("live", "plain"):
        return forced == "live"
    if os.environ.get("TERM") == "dumb":
        return False
    return _isatty(stream if stream is not None else sys.stderr)


# --- steadyrun monitor --------------------------------------------------------------------


def watch_store(store: Any, exp_id: str, *, interval: float = 1.0, once: bool = False,
                stream: TextIO | None = None, live: bool | None = None) -> Any:
    """Show experiment ``exp_id`` from the store until it is final; return its row.

    ``once`` shows one frame. On a terminal the table is redrawn every ``interval``
    seconds; otherwise (and with ``once``) frames are printed as plain text, a new one
    only when a task's state or attempt changed. It returns at once for a final
    experiment, or when its controller is gone (the caller says what to do). Ctrl-C
    propagates as ``KeyboardInterrupt``."""
    from steadyrun.manage import FINAL_EXPERIMENT_STATES
    from steadyrun.store.liveness import controller_dead

    out = stream if stream is not None else sys.stdout
    live = wants_live(out) if live is None else live

    def settled() -> tuple[bool, Any]:
        row = store.experiment(exp_id)
        return row.state in FINAL_EXPERIMENT_STATES or controller_dead(row), row

    done, row = settled()
    if done:
        return row
    if once or not live:
        previous: list[tuple[str, str, int]] | None = None
        while True:
            frame = frame_from_store(store, exp_id)
            key = [(t.name, t.state, t.attempt) for t in frame.tasks]
            if key != previous:
                out.write(format_plain(frame) + ("\n" if once else "\n\n"))
                out.flush()
                previous = key
            if once:
                return row
            time.sleep(interval)
            done, row = settled()
            if done:
                return row
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out, highlight=False)
    with Live(console=console, auto_refresh=False, transient=False) as view:
        while not done:
            height = console.size.height
            view.update(render_table(frame_from_store(store, exp_id), max(5, height - 6)),
                        refresh=True)
            time.sleep(interval)
            done, row = settled()
        view.update(render_table(frame_from_store(store, exp_id)), refresh=True)
    return row


# --- helpers ----------------------------------------------------------------------------


def _note(state: str, kind: str | None, exit_code: int | None, message: str | None) -> str:
    if state in ("failed", "retrying") and kind:
        return kind + (f", exit code {exit_code}" if exit_code else "")
    if state in ("skipped", "cancelled") and message:
        return " ".join(message.split())[:60]
    return ""


def _cells(line: TaskLine) -> list[str]:
    return [line.name, line.state, str(line.attempt) if line.attempt else "-",
            "-" if line.cpu_percent is None else f"{line.cpu_percent:.0f}",
            format_size(line.rss), format_size(line.gpu_memory),
            format_duration(line.elapsed), line.note]


def _choose(lines: list[TaskLine], max_rows: int | None
            ) -> tuple[list[TaskLine], dict[str, int]]:
    """The lines to show (in task order) and the counts by state of those left out."""
    if max_rows is None or len(lines) <= max_rows:
        return lines, {}
    keep = max(1, max_rows - 1)  # one row says what was left out
    ranked = sorted(range(len(lines)), key=lambda i: (_FIRST.get(lines[i].state, 9), i))
    chosen = set(ranked[:keep])
    hidden: dict[str, int] = {}
    for i, line in enumerate(lines):
        if i not in chosen:
            hidden[line.state] = hidden.get(line.state, 0) + 1
    return [line for i, line in enumerate(lines) if i in chosen], hidden


def _hidden_line(hidden: dict[str, int]) -> str:
    total = sum(hidden.values())
    parts = ", ".join(f"{n} {s}" for s, n in sorted(hidden.items(),
                                                   key=lambda kv: _FIRST.get(kv[0], 9)))
    return f"... and {total} more task{'s' if total != 1 else ''}: {parts}"


def _add_machine_memory(totals: Totals) -> None:
    try:
        import psutil

        vm = psutil.virtual_memory()
    except Exception:  # noqa: BLE001 - the footer just leaves it out
        return
    totals.machine_used, totals.machine_total = int(vm.total - vm.available), int(vm.total)


def _latest_samples(store: Any, exp_id: str, running: list[Any]) -> dict[tuple[str, int], Any]:
    """The latest stored sample of each running attempt (one indexed look-up each)."""
    found: dict[tuple[str, int], Any] = {}
    for a in running:
        row = store.latest_sample(exp_id, a.task, a.number)
        if row is not None:
            found[(a.task, a.number)] = row
    return found


def _store_capacity(executor: Any) -> Any:
    """The capacity of a recorded local executor, as it would detect it now; None for
    other executors (their capacity is not recorded)."""
    if not isinstance(executor, dict) or executor.get("type") != "LocalExecutor":
        return None
    from steadyrun.observe.resources import local_capacity

    try:
        return local_capacity(executor.get("cpus"), executor.get("memory"),
                              executor.get("gpus"))
    except Exception:  # noqa: BLE001 - an odd recorded option: show no capacity
        return None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


__all__ = ["COLUMNS", "Frame", "LiveView", "TaskLine", "Totals", "format_change",
           "format_plain", "format_totals", "frame_from_engine", "frame_from_snapshot",
           "frame_from_store",
           "render_table", "to_text", "wants_live", "watch_store"]
