"""Executors: where attempts run. ``LocalExecutor`` loads on first use (keeps imports light)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "LocalExecutor": "steadyrun.executors.local",
    "Executor": "steadyrun.executors.base",
    "AttemptSpec": "steadyrun.executors.base",
    "Capacity": "steadyrun.executors.base",
    "ErrorInfo": "steadyrun.executors.base",
    "Outcome": "steadyrun.executors.base",
}

__all__ = sorted(_LAZY)


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
