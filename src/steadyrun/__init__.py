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
    PlotUnavailable,
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
    "find_executable_batch_size": "steadyrun.adapt",
    "adaptive_batch_size": "steadyrun.adapt",
    "measure_per_item_bytes": "steadyrun.adapt",
    "TimeBudget": "steadyrun.adapt",
    "BatchSizeError": "steadyrun.adapt",
    "AdaptError": "steadyrun.adapt",
    "batched": "steadyrun.batching",
    "map_batches": "steadyrun.batching",
    "BatchFailed": "steadyrun.batching",
    "BatchOutOfMemory": "steadyrun.batching",
    "BatchingError": "steadyrun.batching",
    "retry": "steadyrun.retrying",
    "Monitor": "steadyrun.monitor",
    "SlurmExecutor": "steadyrun.executors.slurm",
    "RayExecutor": "steadyrun.executors.ray",
    "LocalTunnel": "steadyrun.tunnel",
    "SSHTunnel": "steadyrun.tunnel",
    "MemoryGrowthError": "steadyrun.memory",
    "MemoryGrowthWarning": "steadyrun.memory",
    "InvalidRetry": "steadyrun.retrying",
    "list_experiments": "steadyrun.manage",
}
_SUBMODULES = {"resources", "config", "task", "engine", "store", "worker", "executors",
               "experiment", "errors", "units", "adapt", "batching", "retrying", "manage",
               "memory", "monitor", "tunnel", "live", "report"}

__all__ = [
    "AdaptError",
    "BatchFailed",
    "BatchOutOfMemory",
    "BatchSizeError",
    "BatchingError",
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
    "InvalidRetry",
    "LocalExecutor",
    "LocalTunnel",
    "MemoryGrowthError",
    "MemoryGrowthWarning",
    "Monitor",
    "OverrideError",
    "Partial",
    "PlotUnavailable",
    "RayExecutor",
    "Resources",
    "Retry",
    "SSHTunnel",
    "Script",
    "SerializationError",
    "SlurmExecutor",
    "SteadyrunError",
    "StoreError",
    "Task",
    "TaskDefinitionError",
    "TaskFailed",
    "TaskResult",
    "TimeBudget",
    "UnknownParameterError",
    "adaptive_batch_size",
    "apply_overrides",
    "batched",
    "build",
    "find_executable_batch_size",
    "fingerprint",
    "from_yaml",
    "list_experiments",
    "map_batches",
    "measure_per_item_bytes",
    "memory",
    "monitor",
    "resources",
    "retry",
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
    from steadyrun import memory, monitor, resources
    from steadyrun.adapt import (
        AdaptError,
        BatchSizeError,
        TimeBudget,
        adaptive_batch_size,
        find_executable_batch_size,
        measure_per_item_bytes,
    )
    from steadyrun.batching import (
        BatchFailed,
        BatchingError,
        BatchOutOfMemory,
        batched,
        map_batches,
    )
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
    from steadyrun.executors.ray import RayExecutor
    from steadyrun.executors.slurm import SlurmExecutor
    from steadyrun.experiment import Experiment, ExperimentResult, TaskResult, run
    from steadyrun.manage import list_experiments
    from steadyrun.memory import MemoryGrowthError, MemoryGrowthWarning
    from steadyrun.monitor import Monitor
    from steadyrun.retrying import InvalidRetry, retry
    from steadyrun.task import Degrade, Resources, Retry, Task, sweep
    from steadyrun.tunnel import LocalTunnel, SSHTunnel
