"""Tasks: what to run (a payload) plus what it needs (resources), how to retry it, how to
degrade it on out-of-memory, how long it may take and what it waits for.

Nothing here knows about executors: a task says *what*, an executor says *where*.
"""

from __future__ import annotations

import copy
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from steadyrun.errors import TaskDefinitionError
from steadyrun.units import format_size, parse_duration, parse_size

FAILURE_KINDS = ("error", "oom", "timeout", "lost", "preempted", "cancelled")
_NAME_RE = re.compile(r"^[^\s/\\\x00][^/\\\x00]*$")


@dataclass(frozen=True)
class Resources:
    """What one attempt of a task needs: CPUs, memory (bytes or ``"2GiB"``) and GPUs.

    ``enforce=True`` stops an attempt that grows past ``memory`` as ``oom``: the kernel
    does, at the limit, where the executor can put the attempt in a memory cgroup (local
    ``subprocess``/``process`` as root); elsewhere the engine samples its processes every
    0.1 s, and in-process strategies (``thread``, ``sequential``) cannot enforce it.
    Raises :class:`TaskDefinitionError` for negative or unreadable values.
    """

    cpus: float = 1
    memory: int | str | None = None
    gpus: int = 0
    enforce: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int | float) or self.cpus < 0:
            raise TaskDefinitionError(
                f"Resources.cpus must be a number >= 0, got {self.cpus!r}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise TaskDefinitionError(
                f"Resources.gpus must be a whole number >= 0, got {self.gpus!r}")
        object.__setattr__(self, "memory", parse_size(self.memory, what="Resources.memory"))

    @property
    def memory_bytes(self) -> int:
        """The memory request in bytes (0 when none was given)."""
        return int(self.memory or 0)

    def scaled(self, count: int) -> Resources:
        """What ``count`` attempts of this request need together (a gang of ranks)."""
        return Resources(cpus=self.cpus * count,
                         memory=None if self.memory is None else self.memory_bytes * count,
                         gpus=self.gpus * count, enforce=self.enforce)

    def describe(self) -> str:
        """``'cpus=2, memory=4.0GiB, gpus=1'``: for messages."""
        memory = format_size(self.memory_bytes if self.memory is not None else None)
        return f"cpus={self.cpus:g}, memory={memory}, gpus={self.gpus}"


@dataclass(frozen=True)
class Retry:
    """When and how often to try a task again.

    ``max_attempts`` counts every attempt (1 means no retry). The delay before attempt
    ``n+1`` is ``initial_delay * backoff**(n-1)``, capped at ``max_delay``, then spread by
    ``±jitter`` (a fraction). Only failures whose kind is in ``on`` are retried.

    A ``preempted`` attempt (asked by its backend to stop early and save: see
    :func:`steadyrun.on_preempt`) is retried at once, whatever ``on`` says, and does not
    count against ``max_attempts``; ``max_preemptions`` bounds how many times a task may
    be preempted in one run before it fails (0: never retried). A ``resume`` starts
    both counts afresh, and its first attempt is told when the last one was preempted.
    """

    max_attempts: int = 3
    backoff: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.1
    on: tuple[str, ...] = ("error", "oom", "timeout", "lost")
    max_preemptions: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.on, str):
            object.__setattr__(self, "on", (self.on,))
        object.__setattr__(self, "on", tuple(self.on))
        unknown = [k for k in self.on if k not in FAILURE_KINDS]
        if unknown:
            raise TaskDefinitionError(
                f"Retry(on=...): unknown failure kind(s) {unknown}; known kinds: "
                f"{', '.join(FAILURE_KINDS)}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise TaskDefinitionError(
                f"Retry.max_attempts must be a whole number >= 1, got {self.max_attempts!r}")
        if not isinstance(self.max_preemptions, int) or self.max_preemptions < 0:
            raise TaskDefinitionError(
                "Retry.max_preemptions must be a whole number >= 0, "
                f"got {self.max_preemptions!r}")
        if self.backoff < 1 or self.initial_delay < 0 or self.max_delay < 0:
            raise TaskDefinitionError(
                "Retry: backoff must be >= 1 and delays >= 0 "
                f"(got backoff={self.backoff}, initial_delay={self.initial_delay}, "
                f"max_delay={self.max_delay})")
        if not 0 <= self.jitter <= 1:
            raise TaskDefinitionError(f"Retry.jitter must be within [0, 1], got {self.jitter}")

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based)."""
        base = min(self.initial_delay * self.backoff ** max(0, failed_attempts - 1),
                   self.max_delay)
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base)

    def should_retry(self, kind: str, attempts_made: int) -> bool:
        """True when a failure of ``kind`` after ``attempts_made`` attempts is retried."""
        return kind in self.on and attempts_made < self.max_attempts


#: A task without an explicit policy retries once when its worker was lost (a machine
#: or process vanished), never on its own errors.
DEFAULT_RETRY = Retry(max_attempts=2, on=("lost",), initial_delay=1.0)


@dataclass(frozen=True)
class Degrade:
    """What to change after an out-of-memory failure, before the next attempt.

    ``param`` is a dotted path into the payload's arguments (``"batch_size"``,
    ``"data.batch_size"``) scaled by ``factor`` (rounded down for integers, never below
    ``minimum``); ``memory_factor`` multiplies the memory request instead or as well.
    """

    param: str | None = None
    factor: float = 0.5
    minimum: float = 1
    memory_factor: float | None = None

    def __post_init__(self) -> None:
        if self.param is None and self.memory_factor is None:
            raise TaskDefinitionError(
                "Degrade needs param=... (a value to scale) or memory_factor=... (or both)")
        if self.param is not None and not 0 < self.factor < 1:
            raise TaskDefinitionError(
                f"Degrade.factor must be within (0, 1) to shrink {self.param!r}, "
                f"got {self.factor}")
        if self.memory_factor is not None and self.memory_factor <= 1:
            raise TaskDefinitionError(
                f"Degrade.memory_factor must be > 1, got {self.memory_factor}")


@dataclass
class Task:
    """One named unit of work in an experiment.

    ``payload`` is a :class:`~steadyrun.Partial`, a :class:`~steadyrun.Config`, a
    :class:`~steadyrun.Script` or a plain callable. ``timeout`` takes seconds or ``"2h"``;
    ``depends_on`` names tasks that must succeed first (names, or the tasks
    ``Experiment.add`` returned); ``executor`` overrides the
    experiment's executor for this task.

    ``checkpoint_on_timeout=True`` (with a ``timeout``): at the time limit the attempt is
    not killed but preempted: it gets the preemption signal (:func:`steadyrun.should_stop`
    turns true, :func:`steadyrun.on_preempt` callbacks and a class payload's
    ``checkpoint()`` run), the executor's grace period to save, and ends as
    ``preempted``; the next attempt starts at once from the checkpoint, with a fresh time
    limit, not counted against ``Retry.max_attempts`` (``Retry.max_preemptions`` bounds
    it). It needs an executor that can deliver the signal (``LocalExecutor`` with the
    ``subprocess`` strategy); the experiment refuses to start otherwise.

    Raises :class:`TaskDefinitionError` for a bad name, payload or value.
    """

    name: str
    payload: Any
    resources: Resources = field(default_factory=Resources)
    retry: Retry | None = None
    degrade: Degrade | None = None
    timeout: float | str | None = None
    depends_on: Sequence[str] = ()
    executor: Any = None
    checkpoint_on_timeout: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise TaskDefinitionError(
                f"task name {self.name!r} is not usable: give a non-empty string without "
                "slashes that does not start with a space")
        if self.payload is None or not (callable(self.payload) or _is_payload(self.payload)):
            raise TaskDefinitionError(
                f"task {self.name!r}: the payload must be a Partial, Config, Script or "
                f"callable, got {type(self.payload).__name__}")
        if self.resources is None:
            self.resources = Resources()
        if not isinstance(self.resources, Resources):
            raise TaskDefinitionError(
                f"task {self.name!r}: resources must be run.Resources(...), "
                f"got {type(self.resources).__name__}")
        if isinstance(self.depends_on, str | Task):
            self.depends_on = (self.depends_on,)
        self.depends_on = tuple(_dependency_name(self.name, d) for d in self.depends_on)
        self.timeout = parse_duration(self.timeout, what=f"task {self.name!r} timeout")
        if self.checkpoint_on_timeout and not self.timeout:
            raise TaskDefinitionError(
                f"task {self.name!r}: checkpoint_on_timeout=True needs a timeout (the "
                "time at which the attempt is asked to save and stop), e.g. timeout='2h'")

    @property
    def policy(self) -> Retry:
        """The retry policy in force (the task's own, or :data:`DEFAULT_RETRY`)."""
        return self.retry or DEFAULT_RETRY


def _dependency_name(task: str, dep: Any) -> str:
    """A dependency given as a task name or as the :class:`Task` that ``add()`` returned."""
    if isinstance(dep, Task):
        return dep.name
    if isinstance(dep, str):
        return dep
    raise TaskDefinitionError(
        f"task {task!r}: depends_on takes task names or the tasks add() returned, "
        f"got {type(dep).__name__}")


def _is_payload(obj: Any) -> bool:
    from steadyrun import config

    return isinstance(obj, config.Buildable | config.Script)


def validate_graph(tasks: Iterable[Task]) -> list[str]:
    """Check names and dependencies; return the task names in a dependency order.

    Raises :class:`TaskDefinitionError` naming duplicate tasks, unknown dependencies or
    the tasks of a cycle.
    """
    by_name: dict[str, Task] = {}
    for t in tasks:
        if t.name in by_name:
            raise TaskDefinitionError(
                f"two tasks are named {t.name!r}: task names must be unique in an experiment")
        by_name[t.name] = t
    for t in by_name.values():
        for dep in t.depends_on:
            if dep not in by_name:
                raise TaskDefinitionError(
                    f"task {t.name!r} depends on {dep!r}, which is not in the experiment "
                    f"(tasks: {', '.join(sorted(by_name))})")
            if dep == t.name:
                raise TaskDefinitionError(f"task {t.name!r} depends on itself")
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for root in by_name:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            name, i = stack.pop()
            if i == 0:
                state[name] = 1
                path.append(name)
            deps = by_name[name].depends_on
            if i < len(deps):
                stack.append((name, i + 1))
                dep = deps[i]
                if state.get(dep) == 1:
                    cycle = path[path.index(dep):] + [dep]
                    raise TaskDefinitionError(
                        "dependency cycle: " + " -> ".join(cycle)
                        + "; remove one of these depends_on links")
                if not state.get(dep):
                    stack.append((dep, 0))
            else:
                state[name] = 2
                path.pop()
                order.append(name)
    return order


def apply_degrade(task: Task, payload: Any, resources: Resources,
                  capacity_memory: int | None = None) -> tuple[Any, Resources, dict[str, Any]]:
    """The payload and resources for the attempt after an OOM, and what changed.

    Returns ``(payload, resources, changes)``; ``changes`` is empty when nothing could
    be changed any more (the minimum was reached, the memory request is at capacity).
    """
    deg = task.degrade
    changes: dict[str, Any] = {}
    if deg is None:
        return payload, resources, changes
    if deg.param is not None:
        from steadyrun.config import get_path, set_path

        new_payload = copy.deepcopy(payload)
        old = get_path(new_payload, deg.param)
        if isinstance(old, bool) or not isinstance(old, int | float):
            raise TaskDefinitionError(
                f"task {task.name!r}: Degrade(param={deg.param!r}) needs a number there, "
                f"found {old!r}")
        new: float = old * deg.factor
        new = math.floor(new) if isinstance(old, int) else new
        new = max(new, deg.minimum)
        if isinstance(old, int):
            new = int(new)
        if new < old:
            set_path(new_payload, deg.param, new)
            payload = new_payload
            changes[deg.param] = [old, new]
    if deg.memory_factor is not None and resources.memory:
        old_mem = resources.memory_bytes
        new_mem = int(old_mem * deg.memory_factor)
        if capacity_memory is not None:
            new_mem = min(new_mem, capacity_memory)
        if new_mem > old_mem:
            resources = replace(resources, memory=new_mem)
            changes["memory"] = [old_mem, new_mem]
    return payload, resources, changes


def payload_label(payload: Any) -> str:
    """A short human description of a payload (``'train'``, ``'script train.sh'``)."""
    target = getattr(payload, "__fn_or_cls__", None) or payload
    if hasattr(payload, "inline") and hasattr(payload, "entrypoint"):
        return f"script {getattr(payload, 'path', None) or 'inline'}"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    return name or type(payload).__name__


def ensure_task(obj: Any, name: str | None = None, **kwargs: Any) -> Task:
    """A :class:`Task` from a task, or from a payload plus a name and task options.

    ``dependencies=`` is taken as another spelling of ``depends_on=``."""
    if "dependencies" in kwargs:
        if "depends_on" in kwargs:
            raise TaskDefinitionError(
                "give either depends_on= or dependencies=, not both")
        kwargs["depends_on"] = kwargs.pop("dependencies")
    if isinstance(obj, Task):
        if kwargs:
            raise TaskDefinitionError(
                f"add(): task {obj.name!r} is already a Task; set its options on it, "
                "not as keywords of add()")
        return obj
    if name is None:
        name = payload_label(obj).split(".")[-1].replace(" ", "_")
    return Task(name, obj, **kwargs)




def sweep(task_or_payload: Any, grid: dict[str, Sequence[Any]],
          name: str | None = None) -> list[Task]:
    """One task per point of ``grid`` (every combination, in the order given).

    ``grid`` maps dotted parameter paths of the payload (``"lr"``, ``"model.hidden"``)
    to lists of values. Each task is named ``base[k=v,...]`` with the values it got;
    its other options (resources, retry, ...) are the given task's. Raises
    :class:`TaskDefinitionError` for an empty grid or a path that does not exist.
    """
    import itertools

    from steadyrun.config import set_path
    from steadyrun.errors import ConfigError

    base = ensure_task(task_or_payload, name)
    if name is not None:
        base = replace(base, name=name)
    if not isinstance(grid, dict) or not grid:
        raise TaskDefinitionError("sweep needs a grid: a dict of parameter -> list of values")
    for key, values in grid.items():
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise TaskDefinitionError(
                f"sweep: grid[{key!r}] must be a non-empty list of values, got {values!r}")
    tasks = []
    for point in itertools.product(*grid.values()):
        payload = copy.deepcopy(base.payload)
        for key, value in zip(grid, point, strict=True):
            try:
                set_path(payload, key, value)
            except ConfigError as exc:
                raise TaskDefinitionError(f"sweep over {key!r}: {exc}") from exc
        label = ",".join(f"{k}={_show(v)}" for k, v in zip(grid, point, strict=True))
        tasks.append(replace(base, name=f"{base.name}[{label}]", payload=payload))
    return tasks


def _show(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return str(value).replace("/", "_")
