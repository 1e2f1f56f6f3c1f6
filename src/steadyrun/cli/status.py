"""``steadyrun status ID``: an experiment's state and its tasks', at any size.

An experiment of up to :data:`SMALL` tasks shows every task. A bigger one shows the
count of tasks in each state, the tasks worth a look (running, retrying, failed,
cancelled, skipped: at most :data:`SHOWN` of them, then how many more and the command
that lists them) and a total line; reading it costs a few aggregate queries however
many tasks there are. ``--all`` streams every task (``--state`` some of them), each
row written as it is read.

JSON: ``--json`` prints one document. For a small experiment it holds every task
with its sweep parameters and value; for a big one, ``counts`` (tasks per state),
``totals``, the tasks worth a look under ``tasks`` and how many were left out under
``tasks_more``. ``--all --json`` prints JSON lines instead: one object per task, in
the order the tasks were defined, written as they are read.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from steadyrun.cli import render
from steadyrun.cli.base import Command, argument, flag
from steadyrun.cli.parse import ID_HELP, UsageProblem
from steadyrun.units import format_duration

#: Experiments with at most this many tasks show every task.
SMALL = 50
#: A bigger experiment shows at most this many of the tasks worth a look.
SHOWN = 20
COLUMNS = ["task", "state", "attempts", "failure", "duration", "host", "message"]


@click.command("status", cls=Command)
@argument("exp_id", metavar="ID", help=ID_HELP)
@flag("--all", "every", help="List every task, streamed as it is read (with --state: "
                             "those in these states).")
@click.option("--state", "states", metavar="STATES",
              help="With --all: only tasks in these states, comma-separated (failed, "
                   "running, ...).")
@flag("--json", "as_json", help="Print JSON (with --all: JSON lines, one task a line).")
def status_cmd(exp_id: str, every: bool, states: str | None, as_json: bool) -> None:
    """Show an experiment's state and its tasks'.

    Up to 50 tasks, every task is shown. Beyond, the counts by state, the tasks worth a
    look (running, retrying, failed, cancelled, skipped; at most 20) and a total line;
    `--all` lists every task (`--all --state failed`: the failed ones), streamed.
    `--json` prints one document (for a big experiment: counts and the tasks worth a
    look); `--all --json` prints one JSON object per task and line.
    """
    from steadyrun.cli.main import _open
    from steadyrun.states import TaskState
    from steadyrun.store.summary import state_counts

    chosen = _states(states, [str(s) for s in TaskState])
    if chosen and not every:
        raise UsageProblem("--state lists tasks: give --all too (`steadyrun status ID "
                           f"--all --state {states}`)")
    store, full = _open(exp_id)
    if every and as_json:
        _stream_json(store, full, chosen)
        return
    counts = state_counts(store, full)
    total = sum(counts.values())
    if not every and total <= SMALL:
        _small(store, full, as_json)
        return
    _big(store, full, counts, every, chosen, as_json)


def _states(text: str | None, known: list[str]) -> tuple[str, ...]:
    if text is None:
        return ()
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in chosen if s not in known]
    if bad or not chosen:
        raise UsageProblem(f"--state {text!r}: give task states, comma-separated, among "
                           f"{', '.join(known)}")
    return chosen


def _head(st: Any, tasks_line: str) -> None:
    state = st.state
    if st.controller_dead:
        state = f"{st.state} — controller dead; `{st.next_step}`"
    render.print_fields([
        ("experiment", st.id), ("title", st.title), ("state", state),
        ("created", render.fmt_time(st.created_at)),
        ("started", render.fmt_time(st.started_at)),
        ("ended", render.fmt_time(st.ended_at)),
        ("duration", format_duration(render.elapsed(st.started_at, st.ended_at))),
        ("controller", render.describe_controller(st.controller or {})),
        ("tasks", tasks_line),
    ])


def _row(t: Any, preempted: int) -> list[Any]:
    problem = t.kind or ""
    if t.state == "failed" and t.exit_code not in (None, 0):
        problem += f" (exit {t.exit_code})"
    attempts = f"{t.attempts} ({preempted} preempted)" if preempted else t.attempts
    return [t.name, t.state, attempts, problem, format_duration(t.duration), t.host or "",
            render.short(t.message or "", 60)]


def _small(store: Any, full: str, as_json: bool) -> None:
    """Every task, as it always was shown (with ``counts`` added to the JSON)."""
    from steadyrun.cli.results import status_json
    from steadyrun.manage import experiment_status

    st = experiment_status(store, full)
    counts: dict[str, int] = {}
    for t in st.tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    if as_json:
        data = status_json(store, full, st)
        data["counts"] = counts
        render.print_json(data)
        return
    _head(st, f"{len(st.tasks)}: {render.summarize_counts(counts)}")
    render.out()
    rows = [_row(t, t.preempted) for t in st.tasks]
    render.print_table(COLUMNS, rows, state_column=1)
    failed = [t.name for t in st.tasks if t.state == "failed"]
    if failed:
        render.out(f"\nsee `steadyrun logs {st.id} {failed[0]}`; `steadyrun resume {st.id}` "
                   "reruns what did not succeed")


def _big(store: Any, full: str, counts: dict[str, int], every: bool,
         chosen: tuple[str, ...], as_json: bool) -> None:
    """Counts, the tasks worth a look (or every task, streamed) and a total line."""
    from steadyrun.manage import experiment_head
    from steadyrun.store.summary import NOTABLE_STATES, attempt_totals, notable_tasks

    st = experiment_head(store, full)
    total = sum(counts.values())
    totals = attempt_totals(store, full)
    notable = sum(counts.get(s, 0) for s in NOTABLE_STATES)
    shown = [] if every else notable_tasks(store, full, counts, SHOWN)
    if as_json:
        data = st.to_dict()
        data["counts"] = counts
        data["totals"] = {"tasks": total, **totals}
        data["tasks"] = [_task_json(t) for t in shown]
        data["tasks_more"] = notable - len(shown)
        render.print_json(data)
        return
    _head(st, f"{total}: {render.summarize_counts(counts)}")
    render.out()
    if every:
        _stream_rows(store, full, chosen)
    elif shown:
        render.print_table(COLUMNS, [_row(t, t.preempted) for t in shown], state_column=1)
    more = 0 if every else notable - len(shown)
    if more > 0:
        which = ",".join(s for s in NOTABLE_STATES if counts.get(s))
        render.out(f"... and {more} more; every one: `steadyrun status {full} --all "
                   f"--state {which}`")
    elif not every and not shown:
        render.out(f"no task is running or failed; every task: `steadyrun status {full} "
                   "--all`")
    render.out(f"\ntotal: {total} tasks, {render.summarize_counts(counts)}; "
               f"{totals['attempts']} attempts")
    if counts.get("failed"):
        render.out(f"`steadyrun resume {full}` reruns what did not succeed")


def _stream_rows(store: Any, full: str, chosen: tuple[str, ...]) -> None:
    """Every task as an aligned line, written as it is read (widths fixed up front)."""
    from steadyrun.store.summary import iter_tasks, name_width

    widths = [max(4, name_width(store, full)), 9, 8, 7, 8, 4]
    header = [c.upper() for c in COLUMNS]

    def line(cells: list[Any]) -> str:
        text = [str(c) for c in cells]
        head = [v.ljust(widths[i]) for i, v in enumerate(text[:-1])]
        return "  ".join([*head, text[-1]]).rstrip()

    render.out(line(header))
    for t in iter_tasks(store, full, chosen):
        sys.stdout.write(line(_row(t, t.preempted)) + "\n")


def _stream_json(store: Any, full: str, chosen: tuple[str, ...]) -> None:
    from steadyrun.store.summary import iter_tasks

    for t in iter_tasks(store, full, chosen):
        sys.stdout.write(json.dumps(_task_json(t), default=str) + "\n")


def _task_json(t: Any) -> dict[str, Any]:
    return dict(t.to_dict())


def nothing_to_resume(exp_id: str, which: tuple[str, ...], *, detach: bool,
                      as_json: bool) -> bool:
    """For ``steadyrun resume``: when counts show that it would run nothing, say so
    and return True (exit 1 when the experiment did not succeed), without reading the
    definition. An experiment of up to :data:`SMALL` tasks, run in the foreground,
    is left to the full resume, which prints every task's result as always; so is a
    store that cannot be written (the resume says why)."""
    from steadyrun.store.db import Store
    from steadyrun.store.summary import nothing_to_resume as needless
    from steadyrun.store.summary import state_counts

    if not exp_id.strip():
        return False
    store = Store()
    try:
        if store.readonly:
            return False
        full = store.resolve_id(exp_id)
        if not needless(store, full, which):
            return False
        counts = state_counts(store, full)
        if not detach and sum(counts.values()) <= SMALL:
            return False
        state = store.experiment(full).state
    finally:
        store.close()
    summary = render.summarize_counts(counts)
    if detach:
        render.out(full)
        render.err(f"nothing to resume in {full} ({state}: {summary}); nothing was started")
        return True
    if as_json:
        render.print_json({"id": full, "state": state, "counts": counts, "resumed": []})
    else:
        render.out(f"experiment {full} {state}: nothing to resume ({summary}); "
                   f"`steadyrun status {full}` shows the tasks, `steadyrun results {full}` "
                   "their values")
    if state != "succeeded":
        render.err(f"--rerun {','.join(which)} chooses no task of {full}; `steadyrun "
                   f"resume {full} --rerun failed` or a task name reruns one")
        raise click.exceptions.Exit(1)
    return True
