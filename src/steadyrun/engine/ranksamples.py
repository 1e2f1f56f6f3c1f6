"""Resource samples of gang attempts: every rank's, read from the node agents' files.

Each node agent of a gang attempt appends one JSON object a line to
``samples/node-<k>.jsonl`` in the attempt folder (see :mod:`steadyrun.launchers`):
``{time, rank, host, cpu_percent, rss, processes, read_bytes, write_bytes,
gpu_memory, gpu_utilization}``, ``rank`` null for the agent's whole tree on that node.
:class:`RankSampleReader` reads what was added since its last look (only whole lines,
from a byte offset kept per file), turns the lines into ``samples`` rows with their
``rank`` and ``host``, and keeps the attempt's peaks as it goes, so the files are read
once however long the attempt runs. It works wherever the attempt folder is visible:
a local gang, Slurm through the shared job folder, Ray.

The attempt's peaks (what ``TaskResult.peak_rss``, ``peak_gpu_memory`` and
``cpu_seconds`` give for a gang):

- per node, from its whole-tree rows (``rank`` null: the agent and all of the node's
  ranks, children included) when the node wrote any; else from its ranks' rows summed
  over each sweep (the rows of one sweep share their ``time``);
- ``peak_rss`` and ``peak_gpu_memory``: the sum over nodes of each node's highest
  figure. Nodes sample on their own clocks, so with several nodes this is an upper
  bound of the gang's simultaneous total (exact on one node);
- ``cpu_seconds``: each series' cumulative ``cpu_seconds`` where the lines carry it
  (the node agents' do), else its CPU percent integrated over the time between its
  samples; summed over the series used (a node's whole tree, else its ranks).

What can go wrong: a line that is not a JSON object (a node killed mid-write leaves
at most its last line unfinished, and that one is not read until it ends) is skipped;
a file that shrank (rewritten) is read again from its start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Bytes read from one file per look at most (the rest waits for the next look).
MAX_READ = 8 << 20
_KEEP_SWEEPS = 8  # open sweeps kept per node while summing ranks


@dataclass(frozen=True)
class GangSample:
    """The newest figures of a whole gang, as the live views show a running attempt."""

    time: float
    rss: int
    cpu_percent: float
    gpu_memory: int | None


@dataclass
class _NodePeaks:
    """What one node's samples showed so far."""

    tree_rows: int = 0
    tree_rss: int = 0
    tree_gpu: int | None = None
    tree_cpu: float = 0.0
    tree_last: float | None = None
    sweep_rss: int = 0
    sweep_gpu: int | None = None
    tree_latest: tuple[float, int, float, int | None] | None = None
    sweeps: dict[float, list[Any]] = field(default_factory=dict)
    rank_cpu: float = 0.0
    rank_last: dict[int, float] = field(default_factory=dict)
    tree_cum: float | None = None  # the highest cumulative cpu_seconds seen
    rank_cum: dict[int, float] = field(default_factory=dict)

    def add(self, s: dict[str, Any]) -> None:
        t = _num(s.get("time"))
        if t is None:
            return
        rss = _int(s.get("rss"))
        gpu = _int(s.get("gpu_memory"))
        cpu = _num(s.get("cpu_percent")) or 0.0
        cum = _num(s.get("cpu_seconds"))
        rank = s.get("rank")
        if rank is None:
            self.tree_rows += 1
            if cum is not None:
                self.tree_cum = max(self.tree_cum or 0.0, cum)
            self.tree_rss = max(self.tree_rss, rss or 0)
            if gpu is not None:
                self.tree_gpu = max(self.tree_gpu or 0, gpu)
            if self.tree_last is not None and t > self.tree_last:
                self.tree_cpu += cpu * (t - self.tree_last) / 100.0
            self.tree_last = t if self.tree_last is None else max(self.tree_last, t)
            if self.tree_latest is None or t >= self.tree_latest[0]:
                self.tree_latest = (t, rss or 0, cpu, gpu)
            return
        sweep = self.sweeps.get(t)
        if sweep is None:
            sweep = self.sweeps[t] = [0, None, 0.0]
            if len(self.sweeps) > _KEEP_SWEEPS:
                del self.sweeps[min(self.sweeps)]
        sweep[0] += rss or 0
        sweep[2] += cpu
        if gpu is not None:
            sweep[1] = (sweep[1] or 0) + gpu
        self.sweep_rss = max(self.sweep_rss, sweep[0])
        if sweep[1] is not None:
            self.sweep_gpu = max(self.sweep_gpu or 0, sweep[1])
        r = int(rank)
        if cum is not None:
            self.rank_cum[r] = max(self.rank_cum.get(r, 0.0), cum)
        last = self.rank_last.get(r)
        if last is not None and t > last:
            self.rank_cpu += cpu * (t - last) / 100.0
        self.rank_last[r] = t if last is None else max(last, t)

    @property
    def sampled(self) -> bool:
        return self.tree_rows > 0 or bool(self.rank_last)

    def figures(self) -> tuple[int, int | None, float]:
        """(peak RSS, peak GPU memory, CPU seconds) of this node."""
        if self.tree_rows:
            cpu = self.tree_cum if self.tree_cum is not None else self.tree_cpu
            return self.tree_rss, self.tree_gpu, cpu
        cpu = sum(self.rank_cum.values()) if self.rank_cum else self.rank_cpu
        return self.sweep_rss, self.sweep_gpu, cpu

    def latest(self) -> tuple[float, int, float, int | None] | None:
        """(time, RSS, CPU percent, GPU memory) of this node's newest figures."""
        if self.tree_latest is not None:
            return self.tree_latest
        if not self.sweeps:
            return None
        t = max(self.sweeps)
        rss, gpu, cpu = self.sweeps[t]
        return t, rss, cpu, gpu


class RankSampleReader:
    """Reads the ``samples/node-*.jsonl`` files of one gang attempt incrementally (see
    the module docs). Not thread-safe: one caller at a time."""

    def __init__(self, attempt_dir: str | os.PathLike[str], task: str, number: int) -> None:
        self.folder = Path(attempt_dir) / "samples"
        self.task = task
        self.number = number
        self._offsets: dict[str, int] = {}
        self._nodes: dict[str, _NodePeaks] = {}
        self.rows_read = 0

    def read_new(self, final: bool = False) -> list[tuple[Any, ...]]:
        """The ``samples`` rows added since the last call: ``(task, attempt, ts,
        cpu_percent, rss, processes, read_bytes, write_bytes, gpu_memory,
        gpu_utilization, rank, host)`` each. ``final``: the attempt ended, read all
        that is there (an unfinished last line included)."""
        rows: list[tuple[Any, ...]] = []
        for name in self._files():
            node = self._nodes.get(name)
            if node is None:
                node = self._nodes[name] = _NodePeaks()
            for s in self._read_file(name, final):
                node.add(s)
                rank = s.get("rank")
                rows.append((self.task, self.number, _num(s.get("time")),
                             _round(s.get("cpu_percent")), _int(s.get("rss")),
                             _int(s.get("processes")), _int(s.get("read_bytes")),
                             _int(s.get("write_bytes")), _int(s.get("gpu_memory")),
                             _num(s.get("gpu_utilization")),
                             int(rank) if isinstance(rank, int | float) else None,
                             str(s["host"]) if s.get("host") is not None else None))
        self.rows_read += len(rows)
        return rows

    def peaks(self) -> dict[str, Any]:
        """The attempt's peaks as attempt-row fields (``peak_rss``, ``peak_gpu_memory``,
        ``cpu_seconds``); ``{}`` before any sample was read."""
        nodes = [n for n in self._nodes.values() if n.sampled]
        if not nodes:
            return {}
        figures = [n.figures() for n in nodes]
        gpus = [g for _, g, _ in figures if g is not None]
        return {"peak_rss": sum(r for r, _, _ in figures),
                "peak_gpu_memory": sum(gpus) if gpus else None,
                "cpu_seconds": round(sum(c for _, _, c in figures), 3)}

    def latest(self) -> GangSample | None:
        """The newest figures of the whole gang (each node's newest, summed), or None
        before any sample was read."""
        found = [n.latest() for n in self._nodes.values()]
        latest = [x for x in found if x is not None]
        if not latest:
            return None
        gpus = [g for *_, g in latest if g is not None]
        return GangSample(time=max(t for t, *_ in latest),
                          rss=sum(r for _, r, _, _ in latest),
                          cpu_percent=round(sum(c for _, _, c, _ in latest), 1),
                          gpu_memory=sum(gpus) if gpus else None)

    # --- internals --------------------------------------------------------------------

    def _files(self) -> list[str]:
        try:
            names = os.listdir(self.folder)
        except OSError:  # not there yet, or no samples taken
            return []
        return sorted(n for n in names if n.startswith("node-") and n.endswith(".jsonl"))

    def _read_file(self, name: str, final: bool) -> Iterator[dict[str, Any]]:
        path = self.folder / name
        offset = self._offsets.get(name, 0)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < offset:  # rewritten: read it anew
                    offset = 0
                if size == offset:
                    return
                f.seek(offset)
                data = f.read(min(size - offset, MAX_READ) if not final else size - offset)
        except OSError:
            return
        cut = len(data) if final else data.rfind(b"\n") + 1
        self._offsets[name] = offset + cut
        for line in data[:cut].splitlines():
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except ValueError:
                continue
            if isinstance(s, dict):
                yield s


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _round(value: Any) -> float | None:
    v = _num(value)
    return None if v is None else round(v, 1)


__all__ = ["GangSample", "MAX_READ", "RankSampleReader"]
