"""What a Ray cluster's nodes hold, and what Ray's exceptions mean for an attempt."""

from __future__ import annotations

from typing import Any

from steadyrun.errors import ExecutorError, InsufficientResources
from steadyrun.task import Resources
from steadyrun.units import format_size

#: Ray exceptions that mean the worker, its node or the raylet vanished.
LOST_ERRORS = ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "RayActorError",
               "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError",
               "ObjectFetchTimedOutError", "ReferenceCountingAssertionError",
               "RaySystemError", "ActorUnavailableError")


class RequestUnsatisfiable(ExecutorError, InsufficientResources):
    """A task asks for more than any single node of the Ray cluster has (for a gang:
    more than ``nodes`` nodes can hold, ``ntasks_per_node`` ranks each)."""


def classify(exc: BaseException) -> tuple[str, str]:
    """The failure kind of a Ray exception raised by ``ray.get``, and a message."""
    names = {c.__name__ for c in type(exc).__mro__}
    text = f"{type(exc).__name__}: {exc}".strip()
    if "OutOfMemoryError" in names:
        return "oom", f"Ray's memory monitor killed the task: {text}"
    if "TaskCancelledError" in names:
        return "cancelled", f"the Ray task was cancelled outside steadyrun: {text}"
    if names & set(LOST_ERRORS):
        return "lost", f"the Ray worker or node was lost: {text}"
    if "RuntimeEnvSetupError" in names:
        return "error", f"Ray could not set up the task's runtime_env: {text}"
    if "RayTaskError" in names:  # run_attempt itself failed (not the payload)
        return "error", f"steadyrun's Ray task failed: {text}"
    return "lost", f"the Ray task failed: {text}"


def fits(node: dict[str, Any], req: Resources) -> bool:
    """Whether one node (a ``Resources`` dict of ``ray.nodes()``) can hold ``req``."""
    return (float(node.get("CPU", 0)) + 1e-9 >= req.cpus
            and float(node.get("GPU", 0)) + 1e-9 >= req.gpus
            and float(node.get("memory", 0)) >= req.memory_bytes)


def describe_node(node: dict[str, Any]) -> str:
    return (f"{node.get('_address') or 'a node'} with cpus={float(node.get('CPU', 0)):g}, "
            f"memory={format_size(int(float(node.get('memory', 0))))}, "
            f"gpus={float(node.get('GPU', 0)):g}")


def task_id(ref: Any) -> str:
    """The Ray task id (hex) behind an object ref."""
    try:
        return str(ref.task_id().hex())
    except Exception:
        return str(ref.hex())
