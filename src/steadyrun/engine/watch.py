"""What the engine watches while attempts run: their resource use.

One :class:`~steadyrun.observe.monitor.AttemptMonitor` thread samples the process tree of every
running attempt whose executor knows its root pid (CPU %, RSS of the whole tree, GPU
memory by pid). :class:`Watch` connects it to one engine run:

- samples go to the store in batches (``samples`` table), and each attempt's peaks
  (``peak_rss``, ``peak_gpu_memory``, ``cpu_seconds``) to its row when it ends;
- an attempt with ``Resources(memory=..., enforce=True)`` is held to its request by
  the kernel where its executor put it in a memory cgroup
  (:mod:`steadyrun.attempt.memcg`); elsewhere (no cgroup possible, a backend without
  one) its tree is sampled every :data:`ENFORCE_INTERVAL` seconds while it runs, and
  one that grows past its request is named by :meth:`Watch.over_memory` and stopped by
  the engine as ``oom``. Sampling sees a fast allocation late: a tree can pass its
  request by what it allocates in a tenth of a second before it is stopped;
- an attempt killed by SIGKILL while its tree's memory was near its request or the
  machine's capacity is ``oom``, not ``lost`` (:meth:`Watch.oom_evidence`): that is how
  the kernel's out-of-memory killer looks from outside;
- a gang attempt (its executor has a ``gang``) is sampled by its node agents, every
  rank apart: a thread here reads what they added to the attempt's
  ``samples/node-*.jsonl`` every :data:`RANK_POLL` seconds and stores it with each
  row's ``rank`` and ``host``, the rest when the attempt ends; its peaks come from
  those samples (:mod:`steadyrun.engine.ranksamples`). The local sampling of such an
  attempt's tree still serves the live views and memory enforcement (a gang's request
  is its per-rank request times its ranks), but is not stored twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from steadyrun.attempt import memcg
from steadyrun.attempt.names import SAMPLES_FILE
from steadyrun.engine.ranksamples import RankSampleReader
from steadyrun.errors import StoreError
from steadyrun.executors.base import Executor, Outcome
from steadyrun.store.db import Store
from steadyrun.units import format_size

log = logging.getLogger(__name__)

#: A SIGKILL'd tree at or above this share of its limit counts as out of memory.
NEAR_LIMIT = 0.85
#: Seconds between samples of the attempts whose memory request is enforced by sampling.
ENFORCE_INTERVAL = memcg.SAMPLING_INTERVAL
#: Seconds between looks at the sample files of running gang attempts.
RANK_POLL = 2.0


class _GangAttempt:
    """A running gang attempt whose node agents' samples are being imported."""

    __slots__ = ("lock", "reader", "size")

    def __init__(self, attempt_dir: Path, task: str, number: int, size: int) -> None:
        self.lock = threading.Lock()  # one reader of its files at a time
        self.reader = RankSampleReader(attempt_dir, task, number)
        self.size = size


class Watch:
    """Resource watching for one engine run (see the module docs).

    ``interval`` is the sampling period in seconds. Nothing is sampled for executors
    whose attempts have no local pid (a remote cluster samples on its own nodes).
    """

    def __init__(self, store: Store, exp_id: str, executors: Iterable[Executor],
                 interval: float) -> None:
        from steadyrun.observe.monitor import AttemptMonitor

        self.store = store
        self.exp_id = exp_id
        self._executors = list(executors)
        self._keys: dict[str, tuple[str, int]] = {}  # attempt id -> (task, number)
        self._lock = threading.Lock()
        #: True while an attempt's memory request is enforced by sampling here: the
        #: engine then looks every ENFORCE_INTERVAL seconds
        self.enforcing = False
        self._enforcer: Any = None  # a ProcessTreeSampler, made when first needed
        self._enforced_at = 0.0
        self._enforced_rss: dict[str, int] = {}
        self._over: dict[str, tuple[int, int]] = {}  # attempt id -> (rss, request) seen
        self._enforced_peak: dict[str, int] = {}  # the most RSS enforcement sampling saw
        self._gangs: dict[str, _GangAttempt] = {}  # running gang attempts
        self._gang_ids: set[str] = set()  # every gang attempt seen (their local samples
        # are not stored: the node agents' are)
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        self._store_failed = False
        self.monitor = AttemptMonitor(self._pids, interval=interval, sink=self._sink,
                                      batch_size=200, flush_every=2.0)

    def start(self) -> None:
        self.monitor.start()
        self._poller = threading.Thread(target=self._poll_gangs, name="steadyrun-ranks",
                                        daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop sampling and write what is queued (and what the running gang attempts'
        node agents wrote so far)."""
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(10.0)
            self._poller = None
        self.monitor.stop()
        if self._enforcer is not None:
            self._enforcer.close()
        self.import_rank_samples()

    def track(self, attempt_id: str, task: str, number: int, *,
              attempt_dir: Path | None = None, executor: Executor | None = None) -> None:
        """Start recording samples of a launched attempt. An attempt whose ``executor``
        has a ``gang`` also gets its ranks' samples from ``attempt_dir``."""
        gang = getattr(executor, "gang", None) if executor is not None else None
        with self._lock:
            self._keys[attempt_id] = (task, number)
            if gang is not None and attempt_dir is not None:
                self._gangs[attempt_id] = _GangAttempt(Path(attempt_dir), task, number,
                                                       int(getattr(gang, "size", 1) or 1))
                self._gang_ids.add(attempt_id)

    def import_rank_samples(self) -> int:
        """Store what the node agents of running gang attempts added since the last
        look; returns the number of rows. Runs every :data:`RANK_POLL` seconds on its
        own thread; never raises (a store that refuses is logged once)."""
        with self._lock:
            gangs = list(self._gangs.values())
        count = 0
        for gang in gangs:
            with gang.lock:
                try:
                    rows = gang.reader.read_new()
                except Exception:  # noqa: BLE001 - sampling must never stop the controller
                    log.warning("ranks: could not read samples in %s", gang.reader.folder,
                                exc_info=True)
                    continue
            count += len(rows)
            self._store(rows)
        return count

    def settle(self, attempt_id: str) -> dict[str, Any]:
        """Stop tracking an attempt that ended; its peaks as attempt-row fields."""
        with self._lock:
            self._keys.pop(attempt_id, None)
            gang = self._gangs.pop(attempt_id, None)
        ranked: dict[str, Any] = {}
        if gang is not None:
            with gang.lock:
                rows = gang.reader.read_new(final=True)
                ranked = gang.reader.peaks()
            self._store(rows)
        peaks = self.monitor.forget(attempt_id)
        enforced = self._enforced_peak.pop(attempt_id, None)
        if ranked:
            return ranked
        if peaks is None or peaks.samples == 0:
            return {} if enforced is None else {"peak_rss": enforced}
        return {"peak_rss": max(peaks.peak_rss, enforced or 0),
                "peak_gpu_memory": peaks.peak_gpu_memory,
                "cpu_seconds": round(peaks.cpu_seconds, 3)}

    def latest(self) -> dict[str, Any]:
        """The latest sample of each sampled attempt (attempt id -> sample; for a gang
        attempt not sampled here, the newest figures its node agents wrote)."""
        latest: dict[str, Any] = self.monitor.latest()
        with self._lock:
            gangs = [(k, g) for k, g in self._gangs.items() if k not in latest]
        for attempt_id, gang in gangs:
            if gang.lock.acquire(blocking=False):  # never wait on a look at its files
                try:
                    sample = gang.reader.latest()
                finally:
                    gang.lock.release()
                if sample is not None:
                    latest[attempt_id] = sample
        return latest

    def rss(self, attempt_id: str) -> int | None:
        """The latest RSS of an attempt's whole tree, or None before its first sample."""
        sample = self.monitor.latest().get(attempt_id)
        return sample.rss if sample is not None else None

    def sample_enforced(self, running: dict[str, Any]) -> None:
        """Sample the trees of running attempts whose enforced memory request no memory
        cgroup holds, at most every :data:`ENFORCE_INTERVAL` seconds (the engine calls
        it every pass, outside its transactions); :attr:`enforcing` says whether any
        are left. ``running`` maps attempt id to the engine's task run."""
        requests = self._sampled_requests(running)
        if not requests:
            self.enforcing, self._enforced_rss = False, {}
            return
        now = time.monotonic()
        if now - self._enforced_at < ENFORCE_INTERVAL * 0.9:
            return
        self._enforced_at = now
        self._enforced_rss = self._sample_enforced(requests)
        for attempt_id, rss in self._enforced_rss.items():
            if rss > self._enforced_peak.get(attempt_id, 0):
                self._enforced_peak[attempt_id] = rss

    def over_memory(self, running: dict[str, Any]) -> list[tuple[str, int, int]]:
        """``(attempt id, rss, request)`` of running attempts whose tree exceeds an
        enforced memory request that no memory cgroup holds, by the latest samples
        (:meth:`sample_enforced`, and the monitor's). ``running`` maps attempt id to the
        engine's task run."""
        requests = self._sampled_requests(running)
        if not requests:
            return []
        latest = self.monitor.latest()
        over = []
        for attempt_id, request in requests.items():
            sample = latest.get(attempt_id)
            rss = max(self._enforced_rss.get(attempt_id, 0),
                      sample.rss if sample is not None else 0)
            if rss > request:
                over.append((attempt_id, rss, request))
                self._over.setdefault(attempt_id, (rss, request))
        return over

    def over_memory_message(self, attempt_id: str) -> str | None:
        """Why :meth:`over_memory` named an attempt (once), for its error message."""
        seen = self._over.pop(attempt_id, None)
        if seen is None:
            return None
        return (f"its processes used {format_size(seen[0])}, more than its enforced memory "
                f"request of {format_size(seen[1])} (sampled every {ENFORCE_INTERVAL:g} s: "
                "no memory cgroup holds it)")

    def _sample_enforced(self, requests: dict[str, int]) -> dict[str, int]:
        """The RSS of each enforced tree now (its root pid must be known)."""
        roots = {k: v for k, v in self._pids().items() if k in requests}
        self.enforcing = bool(roots)  # a backend without local pids samples on its own
        if not roots:
            return {}
        if self._enforcer is None:
            from steadyrun.observe.monitor import ProcessTreeSampler

            self._enforcer = ProcessTreeSampler(gpu=False)
        return {k: s.rss for k, s in self._enforcer.sample(roots).items()}

    def oom_evidence(self, outcome: Outcome, peak_rss: int | None, request: int,
                     capacity: int) -> str | None:
        """Why an attempt killed by SIGKILL was out of memory, or None when it was not
        (no sample near a limit, or it was not a SIGKILL)."""
        if outcome.kind != "lost" or "SIGKILL" not in (outcome.message or ""):
            return None
        if not peak_rss:
            return None
        for limit, what in ((request, "its memory request"), (capacity, "the machine's")):
            if limit and peak_rss >= NEAR_LIMIT * limit:
                return (f"killed by SIGKILL while its processes used {format_size(peak_rss)},"
                        f" near {what} ({format_size(limit)}): out of memory")
        return None

    def _sampled_requests(self, running: dict[str, Any]) -> dict[str, int]:
        """Attempt id -> enforced memory request of the whole tree, of the attempts no
        memory cgroup holds (a gang's: its per-rank request times its ranks)."""
        requests = _sampled_requests(running)
        if requests and self._gangs:
            with self._lock:
                sizes = {k: g.size for k, g in self._gangs.items() if k in requests}
            for attempt_id, size in sizes.items():
                requests[attempt_id] *= size
        return requests

    def _poll_gangs(self) -> None:
        while not self._stop_polling.wait(RANK_POLL):
            if self._gangs:
                self.import_rank_samples()

    def _store(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        try:
            self.store.add_samples(self.exp_id, rows)
        except StoreError as exc:  # the engine meets it on its own next write
            if not self._store_failed:
                self._store_failed = True
                log.warning("monitor: samples dropped: %s", exc)

    # --- monitor callbacks (sampler thread) -----------------------------------------

    def _pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        for ex in self._executors:
            pids.update(ex.pids())
        with self._lock:
            return {k: v for k, v in pids.items() if k in self._keys}

    def _sink(self, records: list[Any]) -> None:
        with self._lock:
            keys = dict(self._keys)
            gangs = set(self._gang_ids)
        rows = []
        for r in records:
            if r.key in gangs:  # its node agents sample every rank
                continue
            key = keys.get(r.key) or _parse_attempt_id(r.key)
            if key is None:
                continue
            rows.append((key[0], key[1], r.time, round(r.cpu_percent, 1), r.rss, r.processes,
                         r.read_bytes, r.write_bytes, r.gpu_memory, r.gpu_utilization))
        self._store(rows)


def _sampled_requests(running: dict[str, Any]) -> dict[str, int]:
    """Attempt id -> enforced memory request, of the attempts no memory cgroup holds."""
    return {aid: tr.resources.memory_bytes for aid, tr in running.items()
            if tr.resources.enforce and tr.resources.memory_bytes and not memcg.limited(aid)}


def _parse_attempt_id(attempt_id: str) -> tuple[str, int] | None:
    """``exp/task/3`` -> ``("task", 3)`` for an attempt that ended before its samples
    were written (task names contain no slash)."""
    parts = attempt_id.rsplit("/", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def import_remote_samples(store: Store, exp_id: str, task: str, number: int,
                          attempt_dir: Path) -> dict[str, Any]:
    """Samples taken where an attempt ran, stored like local ones; returns the
    attempt's peaks as attempt-row fields ({} when there are none): a gang attempt's
    node agents' ``samples/node-*.jsonl`` (every rank, see
    :mod:`steadyrun.engine.ranksamples`), else the ``samples.json`` an executor
    wrote in its folder (as the Ray executor does)."""
    reader = RankSampleReader(attempt_dir, task, number)
    rows = reader.read_new(final=True)
    if rows:
        store.add_samples(exp_id, rows)
        return reader.peaks()
    try:
        data = json.loads((attempt_dir / SAMPLES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    rows = [(task, number, s.get("time"), s.get("cpu_percent"), s.get("rss"),
             s.get("processes"), s.get("read_bytes"), s.get("write_bytes"),
             s.get("gpu_memory"), s.get("gpu_utilization"))
            for s in data.get("samples") or () if isinstance(s, dict)]
    store.add_samples(exp_id, rows)
    peaks = data.get("peaks") or {}
    if not peaks.get("samples"):
        return {}
    return {"peak_rss": peaks.get("peak_rss"), "peak_gpu_memory": peaks.get("peak_gpu_memory"),
            "cpu_seconds": peaks.get("cpu_seconds")}


def sampler_for(store: Store, exp_id: str, executors: Iterable[Executor],
                interval: float | None) -> Watch | None:
    """A :class:`Watch` when ``interval`` is set, else None (sampling off)."""
    if not interval:
        return None
    return Watch(store, exp_id, executors, interval)


