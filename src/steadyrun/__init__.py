"""steadyrun: configure, launch, watch and manage machine-learning experiments.

``import steadyrun as run`` gives the public names below. They load on first use, so the
import itself stays light: ray, rich, matplotlib, NVML and the CLI are imported only when
something needs them.
"""

from __future__ import annotations

import importlib

from steadyrun.errors import (
    BuildError,
    ConfigError,
    ExecutorError,
    ExperimentFailed,
    ExperimentLocked,
    ExperimentNotFound,
    InsufficientResources,
    OverrideError,
    SerializationError,
    SteadyrunError,
    StoreError,
    TaskDefinitionError,
    TaskFailed,
    UnknownParameterError,
)

__version__ = "0.1.0"

# typing costs ~10 ms at import and every worker process pays it; type checkers still
# see the names imported under this flag at the end.
TYPE_CHECKING = False

# public name -> module that defines it
_LAZY = {
    "Config": "steadyrun.config",
    "Partial": "steadyrun.config",
    "Script": "steadyrun.config",
    "to_yaml": "steadyrun.config",
    "from_yaml": "steadyrun.config",
    "apply_overrides": "steadyrun.config",
    "fingerprint": "steadyrun.config",
    "build": "steadyrun.config",
    "Task": "steadyrun.task",
    "Resources": "steadyrun.task",
    "Retry": "steadyrun.task",
    "Degrade": "steadyrun.task",
    "Experiment": "steadyrun.experiment",
    "ExperimentResult": "steadyrun.experiment",
    "TaskResult": "steadyrun.experiment",
    "run": "steadyrun.experiment",
    "LocalExecutor": "steadyrun.executors.local",
    "Executor": "steadyrun.executors.base",
    "sweep": "steadyrun.task",
    "list_experiments": "steadyrun.manage",
}
_SUBMODULES = {"resources", "config", "task", "engine", "store", "worker", "executors",
               "experiment", "errors", "units"}

__all__ = [
    "BuildError",
    "Config",
    "ConfigError",
    "Degrade",
    "Executor",
    "ExecutorError",
    "Experiment",
    "ExperimentFailed",
    "ExperimentLocked",
    "ExperimentNotFound",
    "ExperimentResult",
    "InsufficientResources",
    "LocalExecutor",
    "OverrideError",
    "Partial",
    "Resources",
    "Retry",
    "Script",
    "SerializationError",
    "SteadyrunError",
    "StoreError",
    "Task",
    "TaskDefinitionError",
    "TaskFailed",
    "TaskResult",
    "UnknownParameterError",
    "apply_overrides",
    "build",
    "fingerprint",
    "list_experiments",
    "from_yaml",
    "resources",
    "run",
    "sweep",
    "to_yaml",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"steadyrun.{name}")
    raise AttributeError(f"module 'steadyrun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from steadyrun import resources
    from steadyrun.config import (
        Config,
        Partial,
        Script,
        apply_overrides,
        build,
        fingerprint,
        from_yaml,
        to_yaml,
    )
    from steadyrun.executors.base import Executor
    from steadyrun.executors.local import LocalExecutor
    from steadyrun.experiment import Experiment, ExperimentResult, TaskResult, run
    from steadyrun.manage import list_experiments
    from steadyrun.task import Degrade, Resources, Retry, Task, sweep
