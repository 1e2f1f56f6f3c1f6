"""A fake executor driven by a fake clock, for testing the engine's decisions alone.

Each task has a script: a function of the attempt number that returns
``(duration_seconds, kind_or_None)``. ``wait()`` advances the fake clock to the next
attempt end (or by the timeout) instead of sleeping, so backoff and timeouts are exact.
``slots`` limits how many attempts run at once: more launches wait in a backend queue
(as a pool does) and start when one ends; ``free_slots()`` says how many would start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from steadyrun.executors.base import AttemptSpec, Capacity, ErrorInfo, Executor, Outcome


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Launch:
    spec: AttemptSpec
    at: float
    ends: float
    kind: str | None
    stopped: str | None = None
    pid: int = 0


@dataclass
class FakeExecutor(Executor):
    clock: FakeClock
    scripts: dict[str, Callable[[int], tuple[float, str | None]]] = field(default_factory=dict)
    cpus: float = 2
    memory: int = 8 * 1024**3
    gpus: list[int] = field(default_factory=list)
    available: int | None = None
    name: str = "fake"
    slots: int | None = None

    def __post_init__(self) -> None:
        self.launches: list[Launch] = []
        self.running: dict[str, Launch] = {}
        self.queued: list[AttemptSpec] = []
        self.max_queued = 0
        self.stops: list[tuple[str, str, float]] = []
        self.max_concurrent = 0
        self.closed = 0

    def close(self) -> None:
        self.closed += 1

    def pids(self) -> dict[str, int]:
        return {aid: rec.pid for aid, rec in self.running.items()}

    def free_slots(self) -> int | None:
        return None if self.slots is None else max(0, self.slots - len(self.running))

    def capacity(self) -> Capacity:
        return Capacity(cpus=self.cpus, memory=self.memory, gpus=list(self.gpus))

    def available_memory(self) -> int | None:
        return self.available

    def launch(self, spec: AttemptSpec) -> None:
        if self.slots is not None and len(self.running) >= self.slots:
            self.queued.append(spec)  # held by the backend: it starts when one ends
            self.max_queued = max(self.max_queued, len(self.queued))
            return
        self._start(spec)

    def _start(self, spec: AttemptSpec) -> None:
        script = self.scripts.get(spec.task, lambda n: (1.0, None))
        duration, kind = script(spec.number)
        rec = Launch(spec, self.clock.now, self.clock.now + duration, kind,
                     pid=10000 + len(self.launches))
        self.launches.append(rec)
        self.running[spec.attempt_id] = rec
        self.max_concurrent = max(self.max_concurrent, len(self.running))

    def stop(self, attempt_id: str, kind: str) -> None:
        rec = self.running.get(attempt_id)
        if rec is None:
            return
        self.stops.append((attempt_id, kind, self.clock.now))
        rec.stopped = kind
        rec.ends = self.clock.now

    def wait(self, timeout: float) -> list[Outcome]:
        if self.running:
            first = min(r.ends for r in self.running.values())
            if first <= self.clock.now + timeout:
                self.clock.now = max(self.clock.now, first)
                done = [r for r in self.running.values() if r.ends <= self.clock.now]
                out = []
                for r in done:
                    del self.running[r.spec.attempt_id]
                    kind = r.stopped or r.kind
                    err = ErrorInfo("RuntimeError", f"fake {kind}") if kind else None
                    out.append(Outcome(r.spec.attempt_id, kind, exit_code=1 if kind else 0,
                                       error=err, value=f"value of {r.spec.task}" if not kind
                                       else None, has_value=not kind))
                while self.queued and len(self.running) < (self.slots or 0):
                    self._start(self.queued.pop(0))
                return out
        self.clock.now += timeout
        return []

    def names_in_launch_order(self) -> list[str]:
        return [r.spec.task for r in self.launches]


@dataclass
class FakeDependencyExecutor(FakeExecutor):
    """A fake backend that holds an attempt until the jobs it depends on succeeded and
    cancels it when one fails (as Slurm's afterok with kill-on-invalid-dep does)."""

    supports_dependencies: bool = True

    def job_key(self, attempt_id: str) -> str | None:
        return f"job-{attempt_id}"

    def launch(self, spec: AttemptSpec) -> None:
        super().launch(spec)
        rec = self.launches[-1]
        rec.duration = rec.ends - rec.at
        rec.waiting_for = set(spec.depends_on_jobs)
        if rec.waiting_for:
            rec.ends = float("inf")

    def wait(self, timeout: float) -> list[Outcome]:
        out = super().wait(timeout)
        for o in out:
            key = self.job_key(o.attempt_id)
            for rec in self.running.values():
                if key in getattr(rec, "waiting_for", ()):
                    if o.kind is None:
                        rec.waiting_for.discard(key)
                        if not rec.waiting_for:
                            rec.ends = self.clock.now + rec.duration
                    else:
                        rec.kind, rec.ends = "cancelled", self.clock.now
        return out
