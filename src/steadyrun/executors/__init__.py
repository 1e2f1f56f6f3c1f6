"""Executors: where attempts run. ``LocalExecutor`` loads on first use (keeps imports light)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "LocalExecutor": "steadyrun.executors.local.executor",
    "SlurmExecutor": "steadyrun.executors.slurm.executor",
    "RayExecutor": "steadyrun.executors.ray.executor",
    "Executor": "steadyrun.executors.base",
    "AttemptSpec": "steadyrun.executors.base",
    "Capacity": "steadyrun.executors.base",
    "ErrorInfo": "steadyrun.executors.base",
    "Outcome": "steadyrun.executors.base",
}

__all__ = sorted([*_LAZY, "executor_from_config"])

# executor type name (as written by ``Executor.to_config``) -> "module:class"
_REGISTRY = {
    "LocalExecutor": "steadyrun.executors.local.executor:LocalExecutor",
    "RayExecutor": "steadyrun.executors.ray.executor:RayExecutor",
    "SlurmExecutor": "steadyrun.executors.slurm.executor:SlurmExecutor",
}


def executor_from_config(config: dict[str, Any]) -> Any:
    """The executor an experiment recorded with ``Executor.to_config()``.

    Raises :class:`~steadyrun.errors.ExecutorError` for a type this version does not know.
    """
    from steadyrun.errors import ExecutorError

    options = dict(config)
    kind = options.pop("type", None)
    target = _REGISTRY.get(str(kind))
    if target is None:
        raise ExecutorError(
            f"the experiment was recorded with executor {kind!r}, which this version of "
            f"steadyrun does not know (known: {', '.join(sorted(_REGISTRY))})")
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(**options)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'steadyrun.executors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from steadyrun.executors.base import (  # noqa: F401
        AttemptSpec,
        Capacity,
        ErrorInfo,
        Executor,
        Outcome,
    )
    from steadyrun.executors.local.executor import LocalExecutor  # noqa: F401
