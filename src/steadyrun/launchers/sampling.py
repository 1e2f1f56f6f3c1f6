"""Resource samples of one node of a gang, written where the controller can read them
while the attempt runs.

A :class:`NodeSampler` thread in each node agent measures, every interval, the node's
whole tree (the agent, torchrun, every rank and what they started: ``rank`` null) and
each rank's own tree (by the pid in ``ranks/<r>/rank.json``), CPU, RSS and GPU memory
(NVML, when there is a GPU), and appends one JSON object a line to
``samples/node-<k>.jsonl`` in the attempt folder. Each line is written whole with one
``write`` on a file opened for appending, so a reader that remembers its offset reads
only complete lines. Sampling is best effort: a failure stops it, never the attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any

from steadyrun.launchers import RANK_INFO_FILE, RANKS_DIR, SAMPLES_DIR

#: How often a rank's ``rank.json`` is looked for again until it is found (seconds).
_FIND_EVERY = 0.5


def samples_path(attempt_dir: str, node_rank: int) -> str:
    """``samples/node-<k>.jsonl`` of one node in an attempt folder."""
    return os.path.join(attempt_dir, SAMPLES_DIR, f"node-{int(node_rank)}.jsonl")


class NodeSampler:
    """Samples one node's ranks every ``interval`` seconds (0: never) into
    :func:`samples_path`. ``world_size`` is the gang's: the node's ranks are those whose
    ``rank.json`` names this node (a rendezvous may number ranks in any node order)."""

    def __init__(self, attempt_dir: str, node_rank: int, world_size: int, per_node: int,
                 host: str, interval: float) -> None:
        self.attempt_dir = attempt_dir
        self.node_rank = node_rank
        self.ranks = list(range(world_size))
        self.per_node = per_node
        self._elsewhere: set[int] = set()
        self.host = host
        self.interval = interval
        self._pids: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None

    def start(self) -> None:
        """Start the sampling thread (nothing when the interval is 0 or psutil is
        missing)."""
        if self.interval <= 0:
            return
        try:
            from steadyrun.observe.monitor import ProcessTreeSampler
        except ImportError:
            return
        try:
            os.makedirs(os.path.join(self.attempt_dir, SAMPLES_DIR), mode=0o700, exist_ok=True)
            self._fd = os.open(samples_path(self.attempt_dir, self.node_rank),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            return
        self._thread = threading.Thread(target=self._run, args=(ProcessTreeSampler,),
                                        name="steadyrun-node-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take one last sample and stop; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _run(self, sampler_cls: Any) -> None:
        sampler = sampler_cls()
        next_find = 0.0
        try:
            while True:
                import time

                now = time.monotonic()
                if len(self._pids) < self.per_node and now >= next_find:
                    self._find_ranks()
                    next_find = now + _FIND_EVERY
                roots: dict[str, int] = {"node": os.getpid()}
                roots.update({str(r): pid for r, pid in self._pids.items()})
                try:
                    self._write(sampler.sample(roots))
                except Exception:  # best effort: the attempt goes on unsampled
                    return
                if self._stop.wait(self.interval):
                    break
            with contextlib.suppress(Exception):  # one last look at the end
                self._write(sampler.sample(roots))
        finally:
            with contextlib.suppress(Exception):
                sampler.close()

    def _find_ranks(self) -> None:
        for r in self.ranks:
            if r in self._pids or r in self._elsewhere:
                continue
            path = os.path.join(self.attempt_dir, RANKS_DIR, str(r), RANK_INFO_FILE)
            try:
                with open(path, encoding="utf-8") as f:
                    info = json.load(f)
                if info.get("node_rank") not in (None, self.node_rank):
                    self._elsewhere.add(r)
                    continue
                self._pids[r] = int(info["pid"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue

    def _write(self, samples: dict[str, Any]) -> None:
        if self._fd is None or not samples:
            return
        lines = []
        for key, s in samples.items():
            d = s.to_dict()
            d["rank"] = None if key == "node" else int(key)
            d["host"] = self.host
            d["node_rank"] = self.node_rank
            lines.append(json.dumps(d, separators=(",", ":")))
        os.write(self._fd, ("\n".join(lines) + "\n").encode("utf-8"))


__all__ = ["NodeSampler", "samples_path"]
