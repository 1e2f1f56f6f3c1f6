"""What ``steadyrun logs`` and ``Experiment.logs()`` print: an experiment's output, read
from its attempt folders in constant memory, whatever the size of the logs.

- :func:`iter_log_blocks` yields text in blocks of whole lines (each ends with a
  newline), at most about 1 MiB each: what the CLI writes as it comes.
- :func:`iter_logs` yields the same lines one at a time, without their newlines.

Both read each log in chunks through :class:`~steadyrun.attempt.logread.LogReader`, so a
1 GiB log costs 1 MiB of memory, and a capped log that is still being written shows its
head, a line saying what was dropped, then its tail. ``tail=N`` starts each log at its
last N lines, found by reading backwards from its end. ``follow`` keeps reading while
the attempts run, and goes on to a retry's new attempt, until the task (or the
experiment) is final.

What can go wrong: an unknown task is a :class:`~steadyrun.errors.TaskDefinitionError`
naming the tasks there are; a bad ``stream`` a :class:`~steadyrun.errors.SteadyrunError`.
A line longer than 1 MiB is shown in pieces of 1 MiB.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator
from typing import Any

from steadyrun.attempt.logread import CHUNK, LogReader
from steadyrun.attempt.names import STDERR_LOG, STDOUT_LOG
from steadyrun.errors import SteadyrunError, TaskDefinitionError
from steadyrun.store.db import Row, Store

#: A line longer than this (in characters) is shown in pieces of this size.
MAX_LINE = 1 << 20
_FINAL_EXPERIMENT_STATES = ("succeeded", "failed", "cancelled")
_OPEN_TASK_STATES = ("pending", "running", "retrying")


def iter_logs(store: Store, exp_id: str, task: str | None = None, attempt: int | None = None,
              follow: bool = False, stream: str = "both", poll: float = 0.2,
              tail: int | None = None) -> Iterator[str]:
    """Lines of output (without their newlines) of an experiment's attempts: the last
    attempt of each task, or of ``task``, or attempt number ``attempt``; stdout then
    stderr. Lines carry a ``[task] `` prefix when several tasks are shown. See the
    module docs for ``follow`` and ``tail``."""
    for block in iter_log_blocks(store, exp_id, task, attempt, follow, stream, poll, tail):
        yield from block[:-1].split("\n")


def iter_log_blocks(store: Store, exp_id: str, task: str | None = None,
                    attempt: int | None = None, follow: bool = False, stream: str = "both",
                    poll: float = 0.2, tail: int | None = None) -> Iterator[str]:
    """Like :func:`iter_logs`, in blocks of whole lines, each ending with a newline."""
    names = {"both": (STDOUT_LOG, STDERR_LOG), "stdout": (STDOUT_LOG,),
             "stderr": (STDERR_LOG,)}.get(stream)
    if names is None:
        raise SteadyrunError(f"stream={stream!r}: choose 'both', 'stdout' or 'stderr'")
    if tail is not None and tail < 0:
        raise SteadyrunError(f"tail={tail!r}: give a number of lines >= 0")
    tasks = [t.name for t in store.tasks(exp_id)]
    if task is not None and task not in tasks:
        raise TaskDefinitionError(
            f"experiment {exp_id} has no task {task!r} (tasks: {', '.join(tasks)})")
    open_logs: dict[tuple[str, int, str], _Log] = {}
    try:
        while True:
            rows = _rows(store, exp_id, task, attempt)
            done = not follow or _settled(store, exp_id, task, rows)
            shown = {(r.task, r.number, name) for r in rows for name in names}
            for key in [k for k in open_logs if k not in shown]:  # a retry replaced it
                yield from open_logs.pop(key).blocks(True)
            for r in rows:
                prefix = f"[{r.task}] " if task is None else ""
                final = done or r.state != "running"
                for name in names:
                    key = (r.task, r.number, name)
                    log = open_logs.get(key)
                    if log is None:
                        path = store.attempt_dir(exp_id, r.task, r.number) / name
                        log = open_logs[key] = _Log(LogReader(path), prefix, tail)
                    yield from log.blocks(final)
            if done:
                return
            time.sleep(poll)
    finally:
        for log in open_logs.values():
            log.reader.close()


class _Log:
    """One log being shown: its reader, the text of a line not ended yet, its prefix."""

    __slots__ = ("reader", "prefix", "partial", "decoder", "ended")

    def __init__(self, reader: LogReader, prefix: str, tail: int | None) -> None:
        self.reader = reader
        self.prefix = prefix
        self.partial = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.ended = False
        if tail is not None:
            reader.seek_last_lines(tail)

    def blocks(self, final: bool) -> Iterator[str]:
        """What arrived since last time, as blocks of whole lines; with ``final`` the
        unfinished last line too (the attempt is over)."""
        if self.ended:
            return
        while True:
            data = self.reader.read(CHUNK)
            if not data:
                break
            text = self.partial + self.decoder.decode(data)
            cut = text.rfind("\n") + 1
            if cut:
                self.partial = text[cut:]
                yield self._prefixed(text[:cut])
            else:
                self.partial = text
            if len(self.partial) >= MAX_LINE:
                piece, self.partial = self.partial, ""
                yield self._prefixed(piece + "\n")
        if final:
            rest = self.partial + self.decoder.decode(b"", True)
            self.partial = ""
            if rest:
                yield self._prefixed(rest + "\n")
            self.ended = True
            self.reader.close()

    def _prefixed(self, block: str) -> str:
        if not self.prefix:
            return block
        return self.prefix + block[:-1].replace("\n", "\n" + self.prefix) + "\n"


def _rows(store: Store, exp_id: str, task: str | None, attempt: int | None) -> list[Row]:
    rows = store.attempts(exp_id, task)
    if attempt is not None:
        return [r for r in rows if r.number == attempt]
    latest: dict[str, Row] = {}
    for r in rows:
        latest[r.task] = r
    return list(latest.values())


def _settled(store: Store, exp_id: str, task: str | None, rows: list[Any]) -> bool:
    if task is None:
        return store.experiment(exp_id).state in _FINAL_EXPERIMENT_STATES
    states = {t.name: t.state for t in store.tasks(exp_id)}
    return states[task] not in _OPEN_TASK_STATES and all(r.state != "running" for r in rows)
