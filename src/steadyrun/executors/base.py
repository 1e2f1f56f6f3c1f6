"""The executor contract: where one attempt runs.

An executor knows how to start one attempt on its backend, report the attempts that
ended (all of them at once, in one call), stop an attempt and say what capacity it has.
It knows nothing of DAGs, retries, backoff or the store: the engine owns those.

Contract, in order of a call's life:

1. ``open()`` once before the first launch; ``close()`` once at the end (idempotent).
2. ``capacity()`` says what the backend can run at once; the engine admits attempts so
   that the requests of running attempts never exceed it.
3. ``launch(spec)`` starts one attempt and returns without waiting for it. It raises
   :class:`~steadyrun.errors.ExecutorError` when the attempt could not be started at all.
   The engine calls ``launch_many(specs)`` with every attempt admitted in one pass, so a
   backend can submit them together (the default calls ``launch`` for each).
4. ``wait(timeout)`` blocks at most ``timeout`` seconds and returns every
   :class:`Outcome` that arrived since the last call (possibly none). Each launched
   attempt yields exactly one outcome, eventually.
5. ``stop(attempt_id, kind)`` ends a running attempt and its whole process tree
   (SIGTERM, a grace period, SIGKILL where the backend has processes); its outcome then
   arrives through ``wait`` with ``kind`` (``"timeout"`` or ``"cancelled"``). Stopping an
   attempt that already ended does nothing.
6. ``free_slots()`` says how many more attempts ``launch`` would start *now* (None: as
   many as capacity allows). The engine never hands an executor more than that, so an
   attempt is never queued inside a backend where its pid and time limit are unknown.

Hooks a backend may fill in (the core names no backend; see :mod:`steadyrun.executors`
for the registry, Python entry points in the group ``steadyrun.executors``):

- ``from_config(options)`` rebuilds the executor from :meth:`Executor.to_config`.
- ``reclaim(attempt_dir)`` runs after a controller died, for every attempt it left
  ``running``: stop whatever the backend may still run for it (and wait until it has
  stopped), so that ``resume`` never runs an attempt twice.
- ``describe_attempt(attempt_id)`` is a short backend detail for the live view.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.task import Resources


@dataclass
class Capacity:
    """What an executor can run at once. ``gpus`` lists device indices."""

    cpus: float
    memory: int
    gpus: list[int] = field(default_factory=list)

    def fits(self, request: Resources) -> bool:
        """True when ``request`` could ever run here (it is not larger than everything)."""
        return (request.cpus <= self.cpus + 1e-9 and request.memory_bytes <= self.memory
                and request.gpus <= len(self.gpus))


@dataclass
class AttemptSpec:
    """Everything an executor needs to start one attempt.

    ``attempt_dir`` exists and is private to this attempt: the worker writes its logs
    (``stdout.log``, ``stderr.log``) and its result there. With ``lazy_dir`` (for an
    executor whose ``lazy_attempt_dirs`` is true) it is only named: the worker makes it
    when the attempt has something to keep, and a small value comes back in
    :attr:`Outcome.result_bytes`. ``gpus`` are the device indices the engine assigned
    (exported as ``CUDA_VISIBLE_DEVICES``).
    """

    attempt_id: str
    task: str
    number: int
    payload: Any
    attempt_dir: Path
    resources: Resources = field(default_factory=Resources)
    gpus: list[int] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: Backend job keys this attempt must wait for (set only for executors with
    #: ``supports_dependencies``): the backend starts it after they all succeeded.
    depends_on_jobs: list[str] = field(default_factory=list)
    lazy_dir: bool = False
    #: The task's ``checkpoint_on_timeout``: a backend with time limits of its own warns
    #: the attempt before them too (Slurm's ``--signal``).
    checkpoint_on_timeout: bool = False


@dataclass
class ErrorInfo:
    """A failure as the worker saw it: exception type, message, traceback, and whether it
    was an out-of-memory error."""

    type: str
    message: str
    traceback: str = ""
    oom: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback,
                "oom": self.oom}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorInfo:
        return cls(type=str(d.get("type", "")), message=str(d.get("message", "")),
                   traceback=str(d.get("traceback", "")), oom=bool(d.get("oom", False)))


@dataclass
class Outcome:
    """How one attempt ended.

    ``kind`` is ``None`` on success, else one of ``error``, ``oom``, ``timeout``,
    ``lost``, ``cancelled``. ``value`` is the payload's return value when it came back in
    memory; ``has_value`` says whether it did (executors that leave the value in
    ``attempt_dir/result.pkl`` set it False and the engine reads the file).
    """

    attempt_id: str
    kind: str | None
    exit_code: int | None = None
    error: ErrorInfo | None = None
    value: Any = None
    has_value: bool = False
    message: str = ""
    pid: int | None = None
    host: str | None = None
    #: a small return value, pickled, that the worker kept out of the attempt's folder
    #: (``AttemptSpec.lazy_dir``): the engine stores it with the attempt's row.
    result_bytes: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.kind is None


def pickle_payload(spec: AttemptSpec, where: str, hint: str = "") -> bytes:
    """``spec.payload`` as cloudpickle bytes for another process; an
    :class:`~steadyrun.errors.ExecutorError` naming the attempt when it cannot be."""
    import cloudpickle

    try:
        return cloudpickle.dumps(spec.payload)
    except Exception as e:
        from steadyrun.errors import ExecutorError

        raise ExecutorError(
            f"attempt {spec.attempt_id} of task {spec.task!r}: its payload cannot be "
            f"pickled for {where} ({type(e).__name__}: {e}); use module-level functions "
            f"and picklable arguments{hint}") from e


class Executor(abc.ABC):
    """Base of every executor. Subclasses implement the five methods of the contract."""

    #: A short name shown in status tables ("local/subprocess", "slurm", "ray").
    name: str = "executor"
    #: True when the backend can hold an attempt until other attempts of the same
    #: executor succeed (Slurm's ``--dependency=afterok``): the engine then submits a
    #: dependant as soon as its dependencies are submitted, with
    #: ``AttemptSpec.depends_on_jobs`` naming them by :meth:`job_key`.
    supports_dependencies: bool = False
    #: True when attempts are sampled where they run (another machine) and the
    #: executor leaves ``samples.json`` in the attempt folder for the engine to import.
    samples_remotely: bool = False
    #: True when ``stop(attempt_id, "preempted")`` asks the attempt to save and stop
    #: (SIGUSR1 to its worker, the grace period, then the kill) rather than killing it:
    #: what ``Task(checkpoint_on_timeout=True)`` needs (:mod:`steadyrun.attempt.preempt`).
    can_preempt: bool = False
    #: True when the executor runs attempts whose folder is only named
    #: (``AttemptSpec.lazy_dir``): an attempt with nothing to keep costs no files.
    lazy_attempt_dirs: bool = False
    #: The gang each attempt runs as (``nodes x ntasks_per_node`` ranks, a launcher),
    #: or None when an attempt is one process (:mod:`steadyrun.launchers`).
    gang: Any = None

    def request_of(self, resources: Resources) -> Resources:
        """What one attempt takes of :meth:`capacity`: the request of one rank times the
        gang's ranks (the request itself for a plain attempt)."""
        return resources if self.gang is None else self.gang.total(resources)

    def job_key(self, attempt_id: str) -> str | None:
        """The backend's id of a submitted attempt (for ``depends_on_jobs``)."""
        return None

    def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the backend (start pools, connect). Called once before launches."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend. Idempotent."""

    @abc.abstractmethod
    def capacity(self) -> Capacity:
        """What can run at once on this backend."""

    def check(self, resources: Resources, task: str | None = None) -> None:
        """Raise :class:`~steadyrun.errors.InsufficientResources` when a request could
        never run here, before anything starts; the message names the task, the
        request and what there is. The default compares with :meth:`capacity`;
        backends made of several machines also check that one of them is large enough."""
        cap = self.capacity()
        whole = self.request_of(resources)
        if not cap.fits(whole):
            from steadyrun.errors import InsufficientResources
            from steadyrun.units import format_size

            ranks = "" if whole is resources else (
                f" ({self.gang.size} ranks of {resources.describe()})")
            raise InsufficientResources(
                f"task {task!r} asks for {whole.describe()}{ranks} but its executor has "
                f"cpus={cap.cpus:g}, memory={format_size(cap.memory)}, gpus={len(cap.gpus)} "
                "in all; lower the request or run it where there is more")

    def available_memory(self) -> int | None:
        """Memory free right now as the backend measures it, or None when unknown.

        The engine admits a memory request only when it also fits this figure."""
        return None

    @abc.abstractmethod
    def launch(self, spec: AttemptSpec) -> None:
        """Start one attempt; do not wait for it."""

    def launch_many(self, specs: list[AttemptSpec]) -> dict[str, Exception]:
        """Start several attempts admitted in the same pass; return the ones that could
        not start (attempt id -> error). Backends that submit in bulk (a Slurm job
        array, one Ray call) override this; the default launches one by one."""
        failed: dict[str, Exception] = {}
        for spec in specs:
            try:
                self.launch(spec)
            except Exception as exc:  # reported per attempt, the others still start
                failed[spec.attempt_id] = exc
        return failed

    @abc.abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes that arrived, waiting at most ``timeout`` seconds for the first."""

    @abc.abstractmethod
    def stop(self, attempt_id: str, kind: str) -> None:
        """End a running attempt (its whole tree); its outcome will carry ``kind``."""

    def pids(self) -> dict[str, int]:
        """Root process id of each running attempt, for monitoring (where known)."""
        return {}

    def free_slots(self) -> int | None:
        """How many more attempts :meth:`launch` would start right away; None when only
        :meth:`capacity` limits it."""
        return None

    def describe_attempt(self, attempt_id: str) -> str | None:
        """A short backend detail of a running attempt for the live view (a job id)."""
        return self.job_key(attempt_id)

    def to_config(self) -> dict[str, Any]:
        """A plain description of this executor, stored with the experiment."""
        return {"type": type(self).__name__}

    @classmethod
    def from_config(cls, options: dict[str, Any]) -> Executor:
        """The executor that :meth:`to_config` described (without its ``type``)."""
        return cls(**options)

    @classmethod
    def reclaim(cls, attempt_dir: Path) -> str | None:
        """Stop what may still run for an attempt whose controller died, and wait until
        it has stopped; return what was done, or None when nothing of it ran here.

        The default finds the worker by the identity file it wrote before its payload
        started (pid and process start time, so a reused pid is never touched) and
        kills its whole tree; a pool worker running the attempt is killed with it.
        Backends whose attempts outlive a controller elsewhere (a cluster job)
        extend this."""
        from steadyrun.attempt.folder import read_identity

        ident = read_identity(attempt_dir)
        if ident is None or not ident.alive():
            return None
        from steadyrun.attempt.proctree import kill_tree

        kill_tree(ident.pid, grace=2.0)
        return f"stopped its leftover worker (pid {ident.pid})"

    def __enter__(self) -> Executor:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
