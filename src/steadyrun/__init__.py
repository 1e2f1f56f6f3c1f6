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
    MissingSecret,
    NotInAttempt,
    OverrideError,
    PlotUnavailable,
    ResultUnavailable,
    SerializationError,
    SteadyrunError,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnsafe,
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
    "Secret": "steadyrun.config",
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
    "LocalExecutor": "steadyrun.executors.local.executor",
    "Executor": "steadyrun.executors.base",
    "sweep": "steadyrun.task",
    "find_executable_batch_size": "steadyrun.practices.adapt",
    "adaptive_batch_size": "steadyrun.practices.adapt",
    "measure_per_item_bytes": "steadyrun.practices.adapt",
    "TimeBudget": "steadyrun.practices.adapt",
    "BatchSizeError": "steadyrun.practices.adapt",
    "AdaptError": "steadyrun.practices.adapt",
    "batched": "steadyrun.practices.batching",
    "map_batches": "steadyrun.practices.batching",
    "BatchFailed": "steadyrun.practices.batching",
    "BatchOutOfMemory": "steadyrun.practices.batching",
    "BatchingError": "steadyrun.practices.batching",
    "retry": "steadyrun.practices.retrying",
    "Monitor": "steadyrun.observe.monitor",
    "SlurmExecutor": "steadyrun.executors.slurm.executor",
    "RayExecutor": "steadyrun.executors.ray.executor",
    "DockerExecutor": "steadyrun.executors.docker.executor",
    "LocalTunnel": "steadyrun.executors.slurm.tunnel",
    "SSHTunnel": "steadyrun.executors.slurm.tunnel",
    "MemoryGrowthError": "steadyrun.observe.memory",
    "MemoryGrowthWarning": "steadyrun.observe.memory",
    "InvalidRetry": "steadyrun.practices.retrying",
    "list_experiments": "steadyrun.manage",
    "task_dir": "steadyrun.attempt.context",
    "on_preempt": "steadyrun.attempt.preempt",
    "should_stop": "steadyrun.attempt.preempt",
    "Torchrun": "steadyrun.launchers",
    "RankOutcome": "steadyrun.store.results",
    "GitArchivePackager": "steadyrun.packaging",
    "PatternPackager": "steadyrun.packaging",
    "HybridPackager": "steadyrun.packaging",
    "PackagingError": "steadyrun.packaging",
}
# attribute -> submodule, for ``run.resources.snapshot()`` and the like
_SUBMODULES = {
    "resources": "steadyrun.observe.resources",
    "memory": "steadyrun.observe.memory",
    "monitor": "steadyrun.observe.monitor",
    "live": "steadyrun.observe.live",
    "report": "steadyrun.observe.report",
    "adapt": "steadyrun.practices.adapt",
    "batching": "steadyrun.practices.batching",
    "retrying": "steadyrun.practices.retrying",
    "tunnel": "steadyrun.executors.slurm.tunnel",
    "config": "steadyrun.config",
    "task": "steadyrun.task",
    "states": "steadyrun.states",
    "engine": "steadyrun.engine",
    "store": "steadyrun.store",
    "attempt": "steadyrun.attempt",
    "executors": "steadyrun.executors",
    "experiment": "steadyrun.experiment",
    "errors": "steadyrun.errors",
    "units": "steadyrun.units",
    "manage": "steadyrun.manage",
    "launchers": "steadyrun.launchers",
    "packaging": "steadyrun.packaging",
}

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
    "DockerExecutor",
    "Executor",
    "ExecutorError",
    "Experiment",
    "ExperimentFailed",
    "ExperimentLocked",
    "ExperimentNotFound",
    "ExperimentResult",
    "GitArchivePackager",
    "HybridPackager",
    "InsufficientResources",
    "InvalidRetry",
    "LocalExecutor",
    "LocalTunnel",
    "MemoryGrowthError",
    "MemoryGrowthWarning",
    "MissingSecret",
    "Monitor",
    "NotInAttempt",
    "OverrideError",
    "PackagingError",
    "Partial",
    "PatternPackager",
    "PlotUnavailable",
    "RankOutcome",
    "RayExecutor",
    "Resources",
    "ResultUnavailable",
    "Retry",
    "SSHTunnel",
    "Script",
    "Secret",
    "SerializationError",
    "SlurmExecutor",
    "SteadyrunError",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnsafe",
    "Task",
    "TaskDefinitionError",
    "TaskFailed",
    "TaskResult",
    "TimeBudget",
    "Torchrun",
    "UnknownParameterError",
    "adaptive_batch_size",
    "apply_overrides",
    "attempt",
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
    "on_preempt",
    "resources",
    "retry",
    "run",
    "should_stop",
    "sweep",
    "task_dir",
    "to_yaml",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    submodule = _SUBMODULES.get(name)
    if submodule is not None:
        return importlib.import_module(submodule)
    raise AttributeError(f"module 'steadyrun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from steadyrun.attempt.context import task_dir
    from steadyrun.attempt.preempt import on_preempt, should_stop
    from steadyrun.config import (
        Config,
        Partial,
        Script,
        Secret,
        apply_overrides,
        build,
        fingerprint,
        from_yaml,
        to_yaml,
    )
    from steadyrun.executors.base import Executor
    from steadyrun.executors.docker.executor import DockerExecutor
    from steadyrun.executors.local.executor import LocalExecutor
    from steadyrun.executors.ray.executor import RayExecutor
    from steadyrun.executors.slurm.executor import SlurmExecutor
    from steadyrun.executors.slurm.tunnel import LocalTunnel, SSHTunnel
    from steadyrun.experiment import Experiment, ExperimentResult, TaskResult, run
    from steadyrun.launchers import Torchrun
    from steadyrun.manage import list_experiments
    from steadyrun.observe import memory, monitor, resources
    from steadyrun.observe.memory import MemoryGrowthError, MemoryGrowthWarning
    from steadyrun.observe.monitor import Monitor
    from steadyrun.packaging import (
        GitArchivePackager,
        HybridPackager,
        PackagingError,
        PatternPackager,
    )
    from steadyrun.practices.adapt import (
        AdaptError,
        BatchSizeError,
        TimeBudget,
        adaptive_batch_size,
        find_executable_batch_size,
        measure_per_item_bytes,
    )
    from steadyrun.practices.batching import (
        BatchFailed,
        BatchingError,
        BatchOutOfMemory,
        batched,
        map_batches,
    )
    from steadyrun.practices.retrying import InvalidRetry, retry
    from steadyrun.store.results import RankOutcome
    from steadyrun.task import Degrade, Resources, Retry, Task, sweep
