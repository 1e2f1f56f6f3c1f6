"""An experiment's results as one table: a row per task, its parameters and its values.

What ``steadyrun results ID``, ``ExperimentResult.to_pandas()`` and the ``values`` of
``steadyrun status --json`` show, built here once so that they agree:

- **parameters** are the sweep's axes: the arguments whose values differ between the
  tasks' payloads, as the experiment's recorded definition holds them (read as data:
  no module of the tasks is imported). Nested configs give dotted names
  (``model.hidden``). A payload recorded as a pickle contributes the ``k=v`` pairs of
  its task name (``train[lr=0.1,batch_size=32]``) instead.
- **values** are the scalars of what each task returned: a dict is flattened with dotted
  keys (``metrics.loss``), a scalar is the column ``value``, anything else (a list, an
  array, an object) shows as a short type note (``<list len=3>``). Values are read from
  each task's ``result.pkl`` inside the experiment's folder (the store's own accessor).
- a task that did not succeed shows its state and no values; a value that cannot be
  read shows why in ``result_note``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from steadyrun.errors import SteadyrunError

#: The columns every row has, before the parameters and the values.
FIXED_COLUMNS = ("task", "state")
NOTE_COLUMN = "result_note"
_SCALARS = (str, int, float, bool, type(None))


@dataclass
class ResultTable:
    """Rows of an experiment's results: ``params`` and ``values`` name the columns
    after ``task`` and ``state`` (in that order; ``result_note`` last when a row has one);
    each row is a dict of column -> value (missing when the task has none)."""

    id: str
    state: str
    params: list[str]
    values: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """Every column, in display order."""
        note = [NOTE_COLUMN] if any(NOTE_COLUMN in r for r in self.rows) else []
        return [*FIXED_COLUMNS, *self.params, *self.values, *note]

    def sorted_by(self, key: str, *, descending: bool = False) -> ResultTable:
        """The table with its rows sorted by column ``key`` (a column name, or the end
        of exactly one: ``loss`` for ``metrics.loss``): numerically when every value is
        a number, else as text; rows without a value come last either way. Raises
        :class:`SteadyrunError` for an unknown or ambiguous column, listing them."""
        column = self.column(key)
        present = [r for r in self.rows if r.get(column) is not None]
        missing = [r for r in self.rows if r.get(column) is None]
        numeric = all(_number(r[column]) is not None for r in present)

        def order(row: dict[str, Any]) -> Any:
            return _number(row[column]) if numeric else str(row[column])

        present.sort(key=order, reverse=descending)
        return ResultTable(self.id, self.state, self.params, self.values, present + missing)

    def column(self, key: str) -> str:
        """The column that ``key`` names (see :meth:`sorted_by`)."""
        columns = self.columns
        if key in columns:
            return key
        ends = [c for c in columns if c.endswith("." + key)]
        if len(ends) == 1:
            return ends[0]
        if ends:
            raise SteadyrunError(f"{key!r} names several columns ({', '.join(ends)}); give "
                                 "the whole name")
        raise SteadyrunError(f"no column {key!r} in the results of {self.id}; columns: "
                             f"{', '.join(columns)}")

    def records(self) -> list[dict[str, Any]]:
        """The rows as JSON-safe dicts with every column (None where missing)."""
        return [{c: json_safe(r.get(c)) for c in self.columns} for r in self.rows]

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of the rows, one column per column, indexed by task.
        Raises :class:`SteadyrunError` saying ``pip install pandas`` when pandas is not
        installed."""
        try:
            import pandas as pd
        except ImportError:
            raise SteadyrunError("to_pandas() needs pandas, which is not installed: "
                                 "pip install pandas") from None
        frame = pd.DataFrame([{c: r.get(c) for c in self.columns} for r in self.rows],
                             columns=self.columns)
        return frame.set_index("task")


def result_table(store: Any, exp_id: str, result: Any = None) -> ResultTable:
    """The results of experiment ``exp_id`` as a :class:`ResultTable`.

    ``result`` is its :class:`~steadyrun.store.results.ExperimentResult` when the caller
    has one (its values already in memory are used); otherwise it is read from
    ``store``. Raises :class:`~steadyrun.errors.ExperimentNotFound` for an unknown id.
    """
    if result is None:
        from steadyrun.store.results import experiment_result

        result = experiment_result(store, exp_id)
    params = task_params(store, exp_id, list(result))
    rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
    param_names: dict[str, None] = {}
    value_names: dict[str, None] = {}
    for name in result:
        tr = result[name]
        row: dict[str, Any] = {"task": name, "state": tr.state}
        for key, value in params.get(name, {}).items():
            param_names.setdefault(key, None)
            row[key] = value
        values: dict[str, Any] = {}
        if tr.state == "succeeded":
            values, note = read_values(tr)
            value_names.update(dict.fromkeys(values))
            if note:
                row[NOTE_COLUMN] = note
        rows.append((row, values))
    # a value named like a parameter or a fixed column is kept apart from it
    taken = {*param_names, *FIXED_COLUMNS, NOTE_COLUMN}
    renamed = {v: f"result.{v}" if v in taken else v for v in value_names}
    for row, values in rows:
        row.update((renamed[k], v) for k, v in values.items())
    return ResultTable(result.id, result.state, list(param_names), list(renamed.values()),
                       [row for row, _ in rows])


def read_values(task_result: Any) -> tuple[dict[str, Any], str]:
    """A succeeded task's value flattened (see :func:`flatten`), and a note saying why
    it could not be read ('' when it could)."""
    try:
        value = task_result.value
    except SteadyrunError as exc:
        return {}, f"value not readable: {exc}"
    except Exception as exc:  # a value that cannot be rebuilt here: say so, go on
        return {}, f"value not readable: {type(exc).__name__}: {exc}"
    return flatten(value), ""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"metrics": {"loss": 0.1}}`` -> ``{"metrics.loss": 0.1}``; a scalar ->
    ``{"value": x}`` (or ``{prefix: x}``); anything else -> a short type note."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.update(flatten(v, key))
        return out
    return {prefix or "value": scalar(value)}


def scalar(value: Any) -> Any:
    """``value`` when it is a scalar (numpy scalars as Python ones), else a type note
    such as ``<list len=3>`` or ``<ndarray shape=(2, 3)>``."""
    if isinstance(value, _SCALARS):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            plain = item()
        except Exception:
            plain = None
        if isinstance(plain, _SCALARS):
            return plain
    kind = type(value).__name__
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"<{kind} shape={shape}>"
    try:
        return f"<{kind} len={len(value)}>"
    except TypeError:
        return f"<{kind}>"


def json_safe(value: Any) -> Any:
    """A scalar as JSON allows it: non-finite floats as the strings nan, inf, -inf."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def task_params(store: Any, exp_id: str, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Task name -> its sweep parameters (the arguments that differ between tasks);
    empty when the definition cannot be read or nothing differs."""
    names = list(names)
    args = _definition_arguments(store, exp_id)
    flat: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in args:
            flat[name] = _flatten_args(args[name])
        else:
            flat[name] = _name_params(name)
    if len(flat) < 2:
        return {}
    keys: dict[str, None] = {}
    for f in flat.values():
        keys.update(dict.fromkeys(f))
    missing = object()
    differing = [k for k in keys
                 if len({repr(f.get(k, missing)) for f in flat.values()}) > 1]
    return {n: {k: f[k] for k in differing if k in f} for n, f in flat.items()}


# --- helpers ----------------------------------------------------------------------------


def _definition_arguments(store: Any, exp_id: str) -> dict[str, Any]:
    """Task name -> the arguments of its payload in the recorded definition, read as
    data; tasks whose payload was recorded as a pickle are left out."""
    from steadyrun.config import _flow
    from steadyrun.config.plain import load_plain
    from steadyrun.store.definition import DEFINITION_FILE

    try:
        path = store.experiment_dir(exp_id) / DEFINITION_FILE
        text = path.read_text()
        data = _flow.read(text, data=True)  # the one-line-per-task layout, quickly
        if data is None:
            data = load_plain(text, str(path), tags="data")
    except (OSError, SteadyrunError, UnicodeDecodeError):
        return {}
    out: dict[str, Any] = {}
    for entry in (data or {}).get("tasks", []) if isinstance(data, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        payload = entry.get("payload")
        if isinstance(payload, dict) and set(payload) != {"cloudpickle"}:
            out[entry["name"]] = payload
    return out


def _flatten_args(args: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in args.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_flatten_args(v, key))
        elif isinstance(v, _SCALARS):
            out[key] = v
        else:
            out[key] = _compact(v)
    return out


def _compact(value: Any) -> str:
    import json

    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


_NAMED = re.compile(r"\[(.*)\]$")


def _name_params(name: str) -> dict[str, Any]:
    """``train[lr=0.1,batch_size=32]`` -> ``{"lr": 0.1, "batch_size": 32}``."""
    found = _NAMED.search(name)
    if not found:
        return {}
    out: dict[str, Any] = {}
    for part in found.group(1).split(","):
        key, sep, text = part.partition("=")
        if sep and key:
            out[key] = _number(text) if _number(text) is not None else text
    return out


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return None
    return None
