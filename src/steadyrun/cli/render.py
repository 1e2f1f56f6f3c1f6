"""Output of the ``steadyrun`` command: tables, key/value blocks, JSON, times.

On a terminal the output is drawn with rich (colours, boxes); otherwise it is plain
aligned text that ``grep``/``awk`` can read. rich is imported only on a terminal, so
scripts and pipes never pay for it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from steadyrun.units import format_duration

# state -> rich style; the order is the order in which counts are summarised
STATE_STYLES = {
    "running": "bold cyan",
    "retrying": "cyan",
    "pending": "dim",
    "created": "dim",
    "queued": "dim",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "skipped": "yellow",
}


def use_rich() -> bool:
    """Whether stdout is a terminal that rich should draw on."""
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def out(text: str = "") -> None:
    """Print one line (or block) to stdout."""
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    """Print one line (or block) to stderr."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def print_json(obj: Any) -> None:
    """JSON for scripts: indented, non-JSON values written as strings."""
    out(json.dumps(obj, indent=2, default=str))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                state_column: int | None = None, title: str | None = None) -> None:
    """A table with a header row; ``state_column`` is coloured by state on a terminal."""
    text = [["" if v is None else str(v) for v in row] for row in rows]
    if use_rich():
        _rich_table(columns, text, state_column, title)
        return
    if title:
        out(title)
    widths = [len(c) for c in columns]
    for row in text:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [[c.upper() for c in columns], *text]:
        out("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def print_fields(pairs: Sequence[tuple[str, Any]], *, state_key: str | None = "state") -> None:
    """``key  value`` lines (the head of ``status``)."""
    pairs = [(k, "" if v is None else str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    if use_rich():
        from rich.markup import escape

        console = _console()
        for key, value in pairs:
            text = escape(value)
            if key == state_key:
                first = value.split(" ", 1)[0]
                text = f"[{STATE_STYLES.get(first, '')}]{text}[/]" if first in STATE_STYLES \
                    else text
            console.print(f"[bold]{key.ljust(width)}[/]  {text}", highlight=False)
        return
    for key, value in pairs:
        out(f"{key.ljust(width)}  {value}".rstrip())


def summarize_counts(counts: dict[str, int] | None) -> str:
    """``'8 succeeded, 1 failed, 1 running'`` in a stable order."""
    if not counts:
        return ""
    order = list(STATE_STYLES)
    items = sorted(((s, n) for s, n in counts.items() if n),
                   key=lambda sn: (order.index(sn[0]) if sn[0] in order else len(order), sn[0]))
    return ", ".join(f"{n} {s}" for s, n in items)


def fmt_time(ts: float | None) -> str:
    """A local date and time, or ``-``."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_ago(ts: float | None, now: float | None = None) -> str:
    """``'42s ago'``, ``'12m ago'``, ``'5h ago'``, ``'3d ago'``, or ``-``."""
    if ts is None:
        return "-"
    seconds = max(0.0, (now or time.time()) - ts)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f}h ago"
    return f"{seconds // 86400:.0f}d ago"


def short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters on one line."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- experiments ------------------------------------------------------------------------


#: Beyond this many tasks, ``run``/``resume`` sum up their outcome instead of a row each.
RESULT_ROWS = 50


def print_result(result: Any, as_json: bool) -> None:
    """The outcome of ``run``/``resume``: a table of tasks (or JSON) and a last line.
    Beyond :data:`RESULT_ROWS` tasks the table holds the tasks that did not succeed
    (at most 20), counts by state, and the commands that show the rest; JSON always
    holds every task."""
    if not as_json and len(result) > RESULT_ROWS:
        _print_big_result(result)
        return
    rows, data = [], {}
    for task_name in result:
        tr = result[task_name]
        value: Any = None
        shown = tr.message or tr.kind or ""
        if tr.state == "succeeded":
            try:
                value = tr.value
                shown = "-" if value is None else short(value)
            except Exception as e:  # a value that cannot be loaded here: say so, go on
                value = shown = f"<value not readable here: {type(e).__name__}: {e}>"
        elif tr.kind:
            shown = tr.kind + (f", exit code {tr.exit_code}" if tr.exit_code else "") \
                + (f": {short(tr.message, 50)}" if tr.message else "")
        rows.append([task_name, tr.state, tr.attempts, format_duration(tr.duration), shown])
        data[task_name] = {"state": tr.state, "attempts": tr.attempts,
                           "duration": tr.duration, "value": _jsonable(value),
                           "kind": tr.kind, "exit_code": tr.exit_code,
                           "message": tr.message or None}
    if as_json:
        print_json({"id": result.id, "state": result.state, "tasks": data})
        return
    print_table(["task", "state", "attempts", "duration", "value / error"], rows,
                state_column=1)
    out(f"experiment {result.id} {result.state}")


def _print_big_result(result: Any) -> None:
    from steadyrun.store.db import Store
    from steadyrun.store.summary import NOTABLE_STATES, notable_tasks, state_counts

    store = Store(readonly=True)
    try:
        counts = state_counts(store, result.id)
        shown = notable_tasks(store, result.id, counts, 20)
    finally:
        store.close()
    if shown:
        print_table(["task", "state", "attempts", "duration", "error"],
                    [[t.name, t.state, t.attempts, format_duration(t.duration),
                      (t.kind or "") + (f", exit code {t.exit_code}" if t.exit_code else "")
                      + (f": {short(t.message, 50)}" if t.message else "")]
                     for t in shown], state_column=1)
    more = sum(counts.get(s, 0) for s in NOTABLE_STATES) - len(shown)
    if more > 0:
        out(f"... and {more} more: `steadyrun status {result.id} --all --state "
            f"{','.join(s for s in NOTABLE_STATES if counts.get(s))}`")
    out(f"{sum(counts.values())} tasks: {summarize_counts(counts)}; values: "
        f"`steadyrun results {result.id}`")
    out(f"experiment {result.id} {result.state}")


def print_summary(store: Any, exp_id: str, as_json: bool) -> None:
    """What ``monitor`` prints at the end: per task its state, attempts, failure,
    duration, peak RSS / GPU memory and CPU seconds (or JSON)."""
    from steadyrun.observe.report import SUMMARY_COLUMNS, summary_rows, task_summaries

    row = store.experiment(exp_id)
    summaries = task_summaries(store, exp_id)
    if as_json:
        print_json({"id": row.id, "title": row.title, "state": row.state,
                    "tasks": [s.to_dict() for s in summaries]})
        return
    print_table(SUMMARY_COLUMNS, summary_rows(summaries), state_column=1,
                title=f"experiment {row.id} ({row.title}) {row.state}")


def state_label(state: str, controller_dead: bool) -> str:
    """An experiment's state, saying so when it is unfinished without a live controller
    (``steadyrun resume ID`` picks it up)."""
    return f"{state} (controller dead)" if controller_dead else state


def describe_controller(c: dict[str, Any]) -> str:
    """``'pid 123 on host, alive (heartbeat 2.0s ago)'``, or ``-`` when there is none."""
    if not c or c.get("pid") is None:
        return "-"
    where = f"pid {c['pid']}" + (f" on {c['host']}" if c.get("host") else "")
    beat = fmt_ago(c.get("heartbeat"))
    if c.get("alive") is False:
        return f"{where}, dead (last heartbeat {beat})"
    if c.get("alive") is None:
        return f"{where}, unknown (heartbeat {beat})"
    return f"{where}, alive (heartbeat {beat})"


def elapsed(started: float | None, ended: float | None) -> float | None:
    """Seconds from ``started`` to ``ended`` (or to now while it runs)."""
    if started is None:
        return None
    return (ended if ended is not None else time.time()) - started


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


# --- rich (terminal only) ---------------------------------------------------------------


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _rich_table(columns: Sequence[str], rows: list[list[str]], state_column: int | None,
                title: str | None) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, title=title,
                  title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        # ids and states stay whole on a narrow terminal (ids are copied into the next
        # command); the other columns wrap
        whole = i == 0 or i == state_column
        width = max([len(name), *(len(row[i]) for row in rows)]) if whole else len(name)
        table.add_column(name.upper(), min_width=width, no_wrap=whole, overflow="fold")
    for row in rows:
        cells = [Text(cell) for cell in row]
        if state_column is not None and state_column < len(row):
            first = row[state_column].split(" ", 1)[0]
            cells[state_column].stylize(STATE_STYLES.get(first, ""))
        table.add_row(*cells)
    _console().print(table)


# --- dry run ----------------------------------------------------------------------------


def print_dryrun(title: str, tasks: Sequence[Any], executor: Any) -> None:
    """What ``steadyrun run --dryrun`` shows: a summary (as YAML comments) then the
    resolved definition as YAML, the same shape an experiment records. Writes nothing."""
    from steadyrun.config import to_yaml
    from steadyrun.config.secrets import withhold
    from steadyrun.units import format_size

    cap = executor.capacity()
    where = getattr(executor, "name", type(executor).__name__)
    lines = [
        "# dry run: nothing was started and nothing was written",
        f"# would run {len(tasks)} task{'s' if len(tasks) != 1 else ''} as experiment "
        f"{title!r} on {where}",
        f"# capacity there: cpus={cap.cpus:g}, memory={format_size(cap.memory)}, "
        f"gpus={len(cap.gpus)}",
    ]
    width = max(len(t.name) for t in tasks)
    for t in tasks:
        ex = t.executor or executor
        note = ("" if cap.fits(ex.request_of(t.resources))
                else "  <- more than the capacity: would not start")
        timeout = f", timeout={format_duration(t.timeout)}" if t.timeout else ""
        lines.append(f"#   {t.name.ljust(width)}  {t.resources.describe()}{timeout}{note}")
    definition = {
        "title": title,
        "executor": executor.to_config(),
        "tasks": [{"name": t.name, "payload": withhold(t.payload),  # env names only
                   "resources": {"cpus": t.resources.cpus, "memory": t.resources.memory,
                                 "gpus": t.resources.gpus},
                   **({"timeout": t.timeout} if t.timeout else {})}
                  for t in tasks],
    }
    out("\n".join(lines))
    out(to_yaml(definition).rstrip("\n"))
