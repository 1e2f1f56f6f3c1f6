"""``steadyrun results ID``: compare the tasks of an experiment (a sweep) side by side,
and the values that ``steadyrun status --json`` adds per task.

The table is :func:`steadyrun.store.table.result_table`: a row per task with its
state, its sweep parameters and the scalars of its value. Nothing is ever cut: on a
terminal long cells wrap, and a table too wide for the terminal is printed as plain
text with a note pointing at ``--csv``; piped output is plain aligned text.
"""

from __future__ import annotations

from typing import Any

import click

from steadyrun.cli import render
from steadyrun.cli.base import Command, argument, flag
from steadyrun.cli.parse import UsageProblem

#: The narrowest a wrapped column may get before the table counts as too wide.
_MIN_COLUMN = 10


@click.command("results", cls=Command)
@argument("exp_id", metavar="ID", help="Experiment id or unique prefix.")
@click.option("--sort", metavar="KEY",
              help="Sort the rows by this column (a parameter or value: lr, loss, "
                   "metrics.loss; the end of a dotted name is enough). Numbers sort as "
                   "numbers; rows without a value come last.")
@flag("--desc", help="Sort in descending order.")
@flag("--json", "as_json", help="Print JSON.")
@flag("--csv", "as_csv", help="Print CSV (a header row, then a row per task).")
def results_cmd(exp_id: str, sort: str | None, desc: bool, as_json: bool,
                as_csv: bool) -> None:
    """Compare an experiment's tasks: a row per task with its state, its parameters
    (the values that differ between the tasks, e.g. a sweep's axes) and the scalar
    values of its result (dicts flattened: metrics.loss).

    \b
      steadyrun results latest --sort loss
      steadyrun results train-2026 --sort acc --desc
      steadyrun results latest --csv > sweep.csv

    A task that did not succeed shows its state and no values; a non-scalar value
    (a list, an array) shows as a short type note. Values are read from the tasks'
    result files, which may need the tasks' modules to be importable here.
    """
    if as_json and as_csv:
        raise UsageProblem("--json and --csv: choose one")
    from steadyrun.store.table import result_table

    store, full = _open(exp_id)
    table = result_table(store, full)
    if sort is not None:
        table = table.sorted_by(sort, descending=desc)
    elif desc:
        raise UsageProblem("--desc sorts in descending order: give --sort KEY too")
    if as_json:
        render.print_json({"id": table.id, "state": table.state, "params": table.params,
                           "values": table.values, "columns": table.columns,
                           "rows": table.records()})
        return
    if as_csv:
        print_csv(table.columns, table.records())
        return
    if not table.rows:
        render.out(f"experiment {table.id} has no tasks")
        return
    print_wide_table(table.columns, [[cell(r.get(c)) for c in table.columns]
                                     for r in table.rows])


def status_json(store: Any, exp_id: str, status: Any) -> dict[str, Any]:
    """``status.to_dict()`` with, per task, ``params`` (its sweep parameters),
    ``value`` (JSON-safe: a scalar as it is, a dict flattened with dotted keys, anything
    else a type note; None without one) and ``values`` (always the flattened dict)."""
    from steadyrun.store.results import experiment_result
    from steadyrun.store.table import json_safe, read_values, task_params

    data = status.to_dict()
    result = experiment_result(store, exp_id)
    params = task_params(store, exp_id, list(result))
    for task in data.get("tasks", []):
        name = task.get("name")
        values: dict[str, Any] = {}
        value: Any = None
        if task.get("state") == "succeeded" and name in result:
            values, note = read_values(result[name])
            if note:
                task["value_note"] = note
            elif list(values) == ["value"]:
                value = values["value"]
            else:
                value = values
        task["params"] = {k: json_safe(v) for k, v in params.get(name, {}).items()}
        task["values"] = {k: json_safe(v) for k, v in values.items()}
        task["value"] = ({k: json_safe(v) for k, v in value.items()}
                         if isinstance(value, dict) else json_safe(value))
    return data


def cell(value: Any) -> str:
    """A cell's text, whole: floats as Python writes them (every digit), None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def print_csv(columns: list[str], records: list[dict[str, Any]]) -> None:
    """A header row and a row per record, as the csv module writes them."""
    import csv
    import sys

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        writer.writerow([cell(r.get(c)) for c in columns])


def print_wide_table(columns: list[str], rows: list[list[str]]) -> None:
    """A table whose cells are never cut: rich with wrapping cells on a terminal wide
    enough, else plain aligned lines (and, on a terminal, a note about ``--csv``)."""
    if render.use_rich():
        from rich.console import Console

        console = Console(highlight=False)
        needed = sum(_width(columns, rows, i) + 2 for i in range(len(columns)))
        if needed <= console.width:
            _rich_table(console, columns, rows)
            return
        render.err(f"note: {len(columns)} columns are too wide for this terminal "
                   f"({console.width} characters); printed unwrapped. `--csv` writes them "
                   "for a spreadsheet or pandas, `--json` for scripts")
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    for row in [[c.upper() for c in columns], *rows]:
        render.out("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())


def _rich_table(console: Any, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(name.upper(), min_width=_width(columns, rows, i), no_wrap=i < 2,
                         overflow="fold")
    for row in rows:
        cells = [Text(v) for v in row]
        cells[1].stylize(render.STATE_STYLES.get(row[1], ""))
        table.add_row(*cells)
    console.print(table)


def _width(columns: list[str], rows: list[list[str]], i: int) -> int:
    """The narrowest column ``i`` may be: whole for task and state (never wrapped),
    else its header, or its longest cell up to :data:`_MIN_COLUMN`."""
    longest = max([len(columns[i]), *(len(r[i]) for r in rows)])
    return longest if i < 2 else max(len(columns[i]), min(_MIN_COLUMN, longest))


def _open(exp_id: str) -> tuple[Any, str]:
    from steadyrun.store.db import Store

    if not exp_id.strip():
        raise UsageProblem("the experiment ID is empty: give an id or a unique prefix of "
                           "one (`steadyrun list` shows them)")
    store = Store(readonly=True)
    return store, store.resolve_id(exp_id)
