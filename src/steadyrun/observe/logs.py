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

A gang attempt (one attempt run as several ranks, :mod:`steadyrun.launchers`) shows
every rank's logs, each line prefixed ``[rank N] `` (ranks in order), then the
launcher's own lines (the node agents', torchrun's) prefixed ``[launcher] ``; with
``follow`` the ranks' new lines interleave as they arrive. ``rank=N`` shows rank N's
logs alone, without a prefix.

What can go wrong: an unknown task is a :class:`~steadyrun.errors.TaskDefinitionError`
naming the tasks there are; a bad ``stream``, or a ``rank`` that no attempt shown has
(an attempt that is one process, a rank past the gang's size), a
:class:`~steadyrun.errors.SteadyrunError` naming the ranks there are.
A line longer than 1 MiB is shown in pieces of 1 MiB.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator
from typing import Any

from steadyrun.attempt.logread import CHUNK, LogReader, gang_ranks
from steadyrun.attempt.names import STDERR_LOG, STDOUT_LOG
from steadyrun.errors import SteadyrunError, TaskDefinitionError
from steadyrun.store.db import Row, Store

#: A line longer than this (in characters) is shown in pieces of this size.
MAX_LINE = 1 << 20
_FINAL_EXPERIMENT_STATES = ("succeeded", "failed", "cancelled")
_OPEN_TASK_STATES = ("pending", "running", "retrying")
#: Seconds a running attempt may go without ``gang.json`` before ``rank=`` gives up
#: waiting for it to start its ranks.
GANG_START_GRACE = 30.0
LAUNCHER = "launcher"


def iter_logs(store: Store, exp_id: str, task: str | None = None, attempt: int | None = None,
              follow: bool = False, stream: str = "both", poll: float = 0.2,
              tail: int | None = None, rank: int | None = None) -> Iterator[str]:
    """Lines of output (without their newlines) of an experiment's attempts: the last
    attempt of each task, or of ``task``, or attempt number ``attempt``; stdout then
    stderr. Lines carry a ``[task] `` prefix when several tasks are shown. See the
    module docs for ``follow``, ``tail`` and ``rank``."""
    for block in iter_log_blocks(store, exp_id, task, attempt, follow, stream, poll, tail,
                                 rank):
        yield from block[:-1].split("\n")


def iter_log_blocks(store: Store, exp_id: str, task: str | None = None,
                    attempt: int | None = None, follow: bool = False, stream: str = "both",
                    poll: float = 0.2, tail: int | None = None,
                    rank: int | None = None) -> Iterator[str]:
    """Like :func:`iter_logs`, in blocks of whole lines, each ending with a newline."""
    names = {"both": (STDOUT_LOG, STDERR_LOG), "stdout": (STDOUT_LOG,),
             "stderr": (STDERR_LOG,)}.get(stream)
    if names is None:
        raise SteadyrunError(f"stream={stream!r}: choose 'both', 'stdout' or 'stderr'")
    if tail is not None and tail < 0:
        raise SteadyrunError(f"tail={tail!r}: give a number of lines >= 0")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise SteadyrunError(f"rank={rank!r}: give a rank number >= 0")
    tasks = [t.name for t in store.tasks(exp_id)]
    if task is not None and task not in tasks:
        raise TaskDefinitionError(
            f"experiment {exp_id} has no task {task!r} (tasks: {', '.join(tasks)})")
    open_logs: dict[tuple[str, int, Any, str], _Log] = {}
    gangs: dict[tuple[str, int], list[int]] = {}  # attempts known to be gangs: their ranks
    checked = False
    try:
        while True:
            rows = _rows(store, exp_id, task, attempt)
            done = not follow or _settled(store, exp_id, task, rows)
            for r in rows:
                key = (r.task, r.number)
                if key not in gangs:
                    found = gang_ranks(store.attempt_dir(exp_id, r.task, r.number))
                    if found is not None:
                        gangs[key] = found
            if rank is not None and not checked:
                checked = _check_rank(exp_id, rows, gangs, rank, waiting=not done)
            sources = {r: _sources(r, gangs.get((r.task, r.number)), names, rank)
                       for r in rows}
            shown = {(r.task, r.number, who, name) for r, srcs in sources.items()
                     for who, name in srcs}
            for k in [k for k in open_logs if k not in shown]:  # a retry replaced it
                if k[2] is None and (k[0], k[1], LAUNCHER, k[3]) in shown:
                    continue  # a plain-looking attempt that turned out a gang: renamed below
                yield from open_logs.pop(k).blocks(True)
            for r, srcs in sources.items():
                prefix = f"[{r.task}] " if task is None else ""
                final = done or r.state != "running"
                folder = store.attempt_dir(exp_id, r.task, r.number)
                for who, name in srcs:
                    k = (r.task, r.number, who, name)
                    log = open_logs.get(k)
                    if log is None and who == LAUNCHER:  # was read as a plain attempt's
                        log = open_logs.pop((r.task, r.number, None, name), None)
                        if log is not None:
                            log.prefix = prefix + "[launcher] "
                            open_logs[k] = log
                    if log is None:
                        path = (folder / name if who in (None, LAUNCHER)
                                else folder / "ranks" / str(who) / name)
                        label = "" if who is None or rank is not None else (
                            "[launcher] " if who == LAUNCHER else f"[rank {who}] ")
                        log = open_logs[k] = _Log(LogReader(path), prefix + label, tail)
                    yield from log.blocks(final)
            if done:
                return
            time.sleep(poll)
    finally:
        for log in open_logs.values():
            log.reader.close()


def _sources(row: Row, ranks: list[int] | None, names: tuple[str, ...],
             rank: int | None) -> list[tuple[Any, str]]:
    """What to read of one attempt, in order: ``(who, log name)``, ``who`` a rank, the
    launcher, or None for a plain attempt's own logs."""
    if ranks is None:
        return [] if rank is not None else [(None, name) for name in names]
    if rank is not None:
        return [(rank, name) for name in names] if rank in ranks else []
    return ([(k, name) for k in ranks for name in names]
            + [(LAUNCHER, name) for name in names])


def _check_rank(exp_id: str, rows: list[Row], gangs: dict[tuple[str, int], list[int]],
                rank: int, waiting: bool) -> bool:
    """Raise :class:`SteadyrunError` when no attempt shown has ``rank`` (naming the
    ranks there are); False while a running attempt may still start its ranks."""
    have = [gangs[(r.task, r.number)] for r in rows if (r.task, r.number) in gangs]
    if any(rank in ranks for ranks in have):
        return True
    now = time.time()
    if waiting and (not rows or any(
            r.state == "running" and (r.task, r.number) not in gangs
            and now - (r.started_at or now) < GANG_START_GRACE for r in rows)):
        return False
    raise SteadyrunError(rank_problem(exp_id, rows, gangs, rank))


def rank_problem(exp_id: str, rows: list[Any], gangs: dict[tuple[str, int], list[int]],
                 rank: int) -> str:
    """Why ``rank`` cannot be shown for the attempts ``rows``: which ranks they have."""
    if not rows:
        return f"experiment {exp_id}: no attempt to show rank {rank} of"
    parts = []
    for r in rows:
        ranks = gangs.get((r.task, r.number))
        where = f"task {r.task!r}, attempt {r.number}"
        parts.append(f"{where} is one process, not a gang: it has no ranks (leave out "
                     "--rank)" if ranks is None else
                     f"{where} has ranks {_span(ranks)}")
    return f"no rank {rank}: " + "; ".join(parts)


def _span(ranks: list[int]) -> str:
    if ranks and ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2:
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks)) or "none"


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
