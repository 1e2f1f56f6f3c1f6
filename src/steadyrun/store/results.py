"""From store rows to results: one mapping for every reader.

``Experiment.run()`` (right after its engine ended) and
``Experiment.from_id(ID).results()`` (from any process, any time later) both build
their :class:`TaskResult` objects here, from a task's row and its attempts' rows, so
the two never disagree: a failed task carries the same :class:`TaskFailed` (kind,
message, exit code, remote traceback, log tail) either way.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.attempt.folder import RESULT_FILE, log_tail
from steadyrun.errors import ResultUnavailable, SteadyrunError, TaskFailed
from steadyrun.store.db import Row, Store, task_dir_name
from steadyrun.store.files import check_inside


@dataclass(frozen=True)
class RankOutcome:
    """How one rank of a gang attempt ended: its global ``rank``, ``node_rank`` and
    ``local_rank``, the ``host`` and ``node`` it ran on, its ``pid``, and ``kind`` (None
    when it succeeded, else the failure kind: ``error``, ``oom``, ``lost``, ...),
    ``exit_code``, ``error_type`` and ``message`` of its failure."""

    rank: int
    node_rank: int | None = None
    local_rank: int | None = None
    host: str | None = None
    node: str | None = None
    pid: int | None = None
    kind: str | None = None
    exit_code: int | None = None
    error_type: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankOutcome:
        """From one entry of an attempt's ``ranks.json`` (unknown keys ignored)."""
        def whole(key: str) -> int | None:
            v = d.get(key)
            return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        def text(key: str) -> str | None:
            v = d.get(key)
            return None if v is None else str(v)

        return cls(rank=whole("rank") or 0, node_rank=whole("node_rank"),
                   local_rank=whole("local_rank"), host=text("host"), node=text("node"),
                   pid=whole("pid"), kind=text("kind"), exit_code=whole("exit_code"),
                   error_type=text("error_type"), message=text("message"))


def read_ranks(attempt_dir: str | os.PathLike[str]) -> list[RankOutcome]:
    """The per-rank outcomes in a gang attempt's ``ranks.json``, by rank; ``[]`` for a
    plain attempt, a gang whose ranks have not all ended, or a file that cannot be read
    (it is written atomically once every rank ended)."""
    try:
        with open(os.path.join(os.fspath(attempt_dir), "ranks.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(data, list):
        return []
    ranks = [RankOutcome.from_dict(d) for d in data if isinstance(d, dict)]
    return sorted(ranks, key=lambda r: r.rank)


@dataclass(eq=False)
class TaskResult:
    """How one task ended: ``state`` (succeeded, failed, skipped, cancelled), ``value``
    (what the payload returned), ``attempts``, ``duration`` in seconds (first attempt's
    start to last attempt's end: :func:`task_duration`), ``error`` (a
    :class:`TaskFailed` for a failed task, else None), ``kind`` and ``exit_code`` of the
    last attempt, ``changes`` (what degradation changed, per attempt), and the last
    attempt's ``peak_rss`` /
    ``peak_gpu_memory`` (bytes, whole process tree) and ``cpu_seconds`` as the monitor
    sampled them (None when it was too short to sample). For a gang attempt, the
    peaks are the whole gang's (every rank, summed: :mod:`steadyrun.engine.ranksamples`)
    and :attr:`ranks` says how each rank ended."""

    name: str
    state: str
    attempts: int
    duration: float | None
    error: TaskFailed | None
    kind: str | None
    exit_code: int | None
    changes: list[dict[str, Any]]
    message: str
    peak_rss: int | None = None
    peak_gpu_memory: int | None = None
    cpu_seconds: float | None = None
    _value: Any = None
    _has_value: bool = False
    _result_path: Path | None = None
    _result_bytes: bytes | None = field(default=None, repr=False)
    _experiment_id: str = ""
    _attempt_dir: Path | None = None
    _ranks: list[RankOutcome] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def value(self) -> Any:
        """The payload's return value (read from the attempt's folder on first access).

        Raises the task's :class:`TaskFailed` when it failed, :class:`SteadyrunError`
        saying why there is none (skipped, cancelled), and :class:`ResultUnavailable`
        when the task succeeded but its ``result.pkl`` is missing or unreadable
        (truncated, corrupt): the message names the file and the ``steadyrun resume ID
        --rerun TASK`` that gets the value back."""
        if self.state != "succeeded":
            if self.error is not None:
                raise self.error
            raise SteadyrunError(f"task {self.name!r} has no value: it was {self.state}"
                                 + (f" ({self.message})" if self.message else ""))
        if not self._has_value and self._result_bytes is not None:
            self._value = load_small_result(self._result_bytes, self.name,
                                            self._experiment_id)
            self._has_value = True
        elif not self._has_value and self._result_path is not None:
            self._value = load_result(self._result_path, self.name, self._experiment_id)
            self._has_value = True
        return self._value

    @property
    def ranks(self) -> list[RankOutcome]:
        """How each rank of the last attempt ended (:class:`RankOutcome`, by rank), read
        from its ``ranks.json`` on first access; ``[]`` for a task whose attempts are
        one process (or that never ran)."""
        if self._ranks is None:
            self._ranks = read_ranks(self._attempt_dir) if self._attempt_dir else []
        return list(self._ranks)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the value, as plain data (the error as its fields)."""
        error = None
        if self.error is not None:
            e = self.error
            error = {"task": e.task, "kind": e.kind, "message": e.message,
                     "exit_code": e.exit_code, "remote_traceback": e.remote_traceback,
                     "log_tail": e.log_tail, "attempts": e.attempts}
        return {"name": self.name, "state": self.state, "attempts": self.attempts,
                "duration": self.duration, "kind": self.kind, "exit_code": self.exit_code,
                "message": self.message, "changes": self.changes, "error": error,
                "peak_rss": self.peak_rss, "peak_gpu_memory": self.peak_gpu_memory,
                "cpu_seconds": self.cpu_seconds, "ranks": [asdict(r) for r in self.ranks]}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        extra = f", kind={self.kind!r}" if self.kind else ""
        return (f"TaskResult({self.name!r}, state={self.state!r}, attempts={self.attempts}"
                f"{extra})")


class ExperimentResult(Mapping[str, TaskResult]):
    """The outcome of an experiment: a mapping of task name to :class:`TaskResult`,
    plus ``id``, ``state`` and ``failures``."""

    def __init__(self, exp_id: str, state: str,
                 results: Mapping[str, TaskResult | Callable[[], TaskResult]],
                 store: Store | None = None) -> None:
        self.id = exp_id
        self.state = state
        self._store = store  # where to_pandas() reads the definition (sweep parameters)
        # a task's result is built on first access (a sweep's caller reads a few)
        self._results: dict[str, TaskResult | Callable[[], TaskResult]] = dict(results)

    def __getitem__(self, name: str) -> TaskResult:
        try:
            result = self._results[name]
        except KeyError:
            raise KeyError(f"no task {name!r} in experiment {self.id} "
                           f"(tasks: {', '.join(self._results)})") from None
        if not isinstance(result, TaskResult):
            result = self._results[name] = result()
        return result

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def failures(self) -> list[TaskFailed]:
        return [r.error for r in self.values() if r.error is not None]

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with a row per task (indexed by name): its state, its
        sweep parameters and the scalars of its value, dicts flattened (``metrics.loss``),
        as ``steadyrun results ID`` shows them (see :mod:`steadyrun.store.table`).
        Raises :class:`SteadyrunError` naming ``pip install pandas`` when pandas is not
        installed."""
        from steadyrun.store.table import result_table

        store = self._store if self._store is not None else Store(readonly=True)
        return result_table(store, self.id, self).to_pandas()

    def __repr__(self) -> str:
        states = ", ".join(f"{n}={r.state}" for n, r in self.items())
        return f"ExperimentResult({self.id!r}, {self.state}: {states})"


def load_result(path: Path, task: str, exp_id: str = "") -> Any:
    """The value pickled in a succeeded attempt's ``result.pkl`` at ``path``.

    Raises :class:`ResultUnavailable` naming the file, why (missing, truncated or
    corrupt, or needing a module this process cannot import) and, where a rerun helps,
    the command that reruns ``task``: never a bare ``EOFError`` or ``None`` for a lost
    value."""
    import pickle

    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; the open itself may fail)
    except FileNotFoundError:
        raise ResultUnavailable(task, exp_id, str(path), "is missing (deleted, or never "
                                "copied back from where the task ran)") from None
    except OSError as e:
        raise ResultUnavailable(task, exp_id, str(path),
                                f"cannot be opened ({e.strerror or e})") from e
    with f:
        try:
            import cloudpickle

            return cloudpickle.load(f)
        except (ImportError, AttributeError) as e:
            raise ResultUnavailable(
                task, exp_id, str(path),
                f"needs code this process cannot import ({type(e).__name__}: {e}); read it "
                "where the task's modules are importable, or", rerun_helps=False) from e
        except (EOFError, pickle.UnpicklingError, MemoryError) as e:
            raise ResultUnavailable(task, exp_id, str(path), _corrupt(path, e)) from e
        except Exception as e:  # any other failure of unpickling damaged bytes
            raise ResultUnavailable(task, exp_id, str(path), _corrupt(path, e)) from e


def load_small_result(data: bytes, task: str, exp_id: str = "") -> Any:
    """A small return value the store kept with its attempt's row (no ``result.pkl``).
    Raises :class:`ResultUnavailable` as :func:`load_result` does."""
    where = f"the store's record of its last attempt ({len(data)} bytes)"
    try:
        import cloudpickle

        return cloudpickle.loads(data)
    except (ImportError, AttributeError) as e:
        raise ResultUnavailable(
            task, exp_id, where, f"needs code this process cannot import "
            f"({type(e).__name__}: {e}); read it where the task's modules are importable, or",
            rerun_helps=False) from e
    except Exception as e:  # truncated or damaged bytes: whatever unpickling raised
        raise ResultUnavailable(task, exp_id, where,
                                f"is corrupt ({type(e).__name__}: {e})") from e


def _corrupt(path: Path, e: BaseException) -> str:
    try:
        size = f"{os.path.getsize(path)} bytes"
    except OSError:
        size = "size unknown"
    return f"is truncated or corrupt ({size}; {type(e).__name__}: {e})"


def task_duration(attempts: Sequence[Any], now: float | None = None) -> float | None:
    """A task's duration in seconds, the one that ``TaskResult.duration``, ``steadyrun
    status`` and the report show: from the start of its first attempt to the end of its
    last (attempts in number order), so retries and the backoff between them count, and
    after a resume the time in between too. While the last attempt runs: up to ``now``,
    or None when ``now`` is not given; None before any attempt started."""
    first = next((a.started_at for a in attempts if a.started_at is not None), None)
    if first is None:
        return None
    ended = attempts[-1].ended_at
    if ended is None:
        ended = now
    return None if ended is None else max(0.0, ended - first)


def task_result(task: Row, attempts: list[Row], attempt_dir: Path | None,
                values: Mapping[str, Any] | None = None, exp_id: str = "") -> TaskResult:
    """The result of one task from its row, its attempts' rows (in number order) and
    the folder of its last attempt (derived from the experiment's folder, never read
    from the database). ``values`` holds return values still in memory (task name ->
    value), which are used instead of reading ``result.pkl``; ``exp_id`` is named in
    the message of a result that cannot be read."""
    last = attempts[-1] if attempts else None
    error = None
    if task.state == "failed":
        record = last.error if last is not None and isinstance(last.error, dict) else {}
        error = TaskFailed(
            task.name, task.kind, task.message or task.kind or "failed",
            exit_code=last.exit_code if last is not None else None,
            remote_traceback=record.get("traceback") or None,
            log_tail=(log_tail(attempt_dir) or None) if attempt_dir is not None else None,
            attempts=task.attempts)
    has_value = values is not None and task.name in values
    succeeded = task.state == "succeeded"
    return TaskResult(
        name=task.name, state=task.state, attempts=task.attempts,
        duration=task_duration(attempts),
        error=error, kind=task.kind, exit_code=last.exit_code if last is not None else None,
        changes=[a.changes for a in attempts if a.changes], message=task.message or "",
        peak_rss=last.peak_rss if last is not None else None,
        peak_gpu_memory=last.peak_gpu_memory if last is not None else None,
        cpu_seconds=last.cpu_seconds if last is not None else None,
        _value=values[task.name] if has_value and values is not None else None,
        _has_value=has_value and succeeded,
        _result_path=attempt_dir / RESULT_FILE if succeeded and attempt_dir is not None
        else None, _result_bytes=getattr(last, "result", None) if succeeded and last is not None
        else None, _experiment_id=exp_id, _attempt_dir=attempt_dir)


def experiment_result(store: Store, exp_id: str,
                      values: Mapping[str, Any] | None = None) -> ExperimentResult:
    """Every task's :class:`TaskResult` and the experiment's state, as the store has
    them (three queries). Raises :class:`~steadyrun.errors.ExperimentNotFound` for an
    unknown id."""
    row = store.experiment(exp_id)
    by_task: dict[str, list[Row]] = {}
    for a in store.attempt_outcomes(exp_id):
        by_task.setdefault(a.task, []).append(a)
    tasks_dir = os.fspath(store.experiment_dir(exp_id) / "tasks")
    results: dict[str, Callable[[], TaskResult]] = {}
    for t in store.tasks(exp_id):
        results[t.name] = functools.partial(_build, t, by_task.get(t.name, []), tasks_dir,
                                            values, exp_id)
    return ExperimentResult(exp_id, row.state, results, store)


def _build(task: Row, attempts: list[Row], tasks_dir: str,
           values: Mapping[str, Any] | None, exp_id: str) -> TaskResult:
    # the same folder as Store.attempt_dir, without a store at hand
    folder = (Path(os.path.join(tasks_dir, task_dir_name(task.name),
                                str(attempts[-1].number))) if attempts else None)
    if folder is not None:  # nothing is unpickled from outside the experiment's folder
        check_inside(folder, Path(tasks_dir).parent, "attempt folder")
    return task_result(task, attempts, folder, values, exp_id)
