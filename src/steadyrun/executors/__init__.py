"""Executors: where attempts run, one folder per backend.

Backends are found through Python entry points in the group ``steadyrun.executors``
(name: the class name that :meth:`Executor.to_config` records as ``type``; value:
``"module:Class"``). The built-in ones are listed in ``pyproject.toml`` and also known
without an installed distribution. A plugin that fails to load is reported and skipped,
never fatal: adding a backend touches no core file.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

_LAZY = {
    "LocalExecutor": "steadyrun.executors.local.executor",
    "SlurmExecutor": "steadyrun.executors.slurm.executor",
    "RayExecutor": "steadyrun.executors.ray.executor",
    "DockerExecutor": "steadyrun.executors.docker.executor",
    "Executor": "steadyrun.executors.base",
    "AttemptSpec": "steadyrun.executors.base",
    "Capacity": "steadyrun.executors.base",
    "ErrorInfo": "steadyrun.executors.base",
    "Outcome": "steadyrun.executors.base",
}

__all__ = sorted([*_LAZY, "executor_from_config", "executor_classes", "registered_executors"])

ENTRY_POINT_GROUP = "steadyrun.executors"

# known without an installed distribution (running from a source tree)
_BUILTIN = {
    "LocalExecutor": "steadyrun.executors.local.executor:LocalExecutor",
    "RayExecutor": "steadyrun.executors.ray.executor:RayExecutor",
    "DockerExecutor": "steadyrun.executors.docker.executor:DockerExecutor",
    "SlurmExecutor": "steadyrun.executors.slurm.executor:SlurmExecutor",
}
_REGISTRY: dict[str, str] | None = None
_LOADED: dict[str, Any] = {}


def registered_executors() -> dict[str, str]:
    """Executor type name -> ``"module:Class"``, built-ins first, then plugins."""
    global _REGISTRY
    if _REGISTRY is None:
        from importlib.metadata import entry_points

        found = dict(_BUILTIN)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep.value)
        _REGISTRY = found
    return _REGISTRY


def executor_class(kind: str) -> Any:
    """The executor class registered as ``kind``; ExecutorError when none is, or when it
    cannot be loaded."""
    from steadyrun.errors import ExecutorError

    cls = _LOADED.get(kind)
    if cls is not None:
        return cls
    target = registered_executors().get(kind)
    if target is None:
        raise ExecutorError(
            f"executor {kind!r} is not known to this installation (known: "
            f"{', '.join(sorted(registered_executors()))}); install the package that "
            f"provides it (entry point group {ENTRY_POINT_GROUP!r})")
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception as exc:
        raise ExecutorError(f"executor {kind!r} ({target}) could not be loaded: "
                            f"{type(exc).__name__}: {exc}") from exc
    _LOADED[kind] = cls
    return cls


def executor_classes() -> list[Any]:
    """Every registered executor class that loads; a plugin that fails is skipped with a
    warning."""
    classes = []
    for kind in registered_executors():
        try:
            classes.append(executor_class(kind))
        except Exception as exc:  # a broken plugin must not break the others
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
    return classes


def executor_from_config(config: dict[str, Any]) -> Any:
    """The executor an experiment recorded with ``Executor.to_config()``.

    Raises :class:`~steadyrun.errors.ExecutorError` for a type this installation does
    not know."""
    options = dict(config)
    kind = str(options.pop("type", None))
    return executor_class(kind).from_config(options)


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
    from steadyrun.executors.local import LocalExecutor  # noqa: F401
