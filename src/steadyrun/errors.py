"""Every error steadyrun raises on purpose, all under :class:`SteadyrunError`.

Each message says what happened, where (a dotted path into a config, a task name, a
file) and what to do about it. Catch ``SteadyrunError`` to catch them all.
"""

from __future__ import annotations

TYPE_CHECKING = False  # avoids importing typing (~10 ms) in every worker process
if TYPE_CHECKING:
    from typing import Any


class SteadyrunError(Exception):
    """Base of every error steadyrun raises on purpose."""


# --- configuration ---------------------------------------------------------------------


class ConfigError(SteadyrunError):
    """A configuration is malformed: a bad argument, target or value."""


class UnknownParameterError(ConfigError, AttributeError):
    """A config was given an argument name its target does not accept.

    Also an ``AttributeError`` so that ``getattr(cfg, "x", default)`` keeps working.
    """


class BuildError(ConfigError):
    """Building a config failed; the message names the dotted path that failed."""


class SerializationError(ConfigError):
    """A value cannot be written to (or read from) YAML, e.g. a lambda or a closure."""


class OverrideError(ConfigError):
    """A ``key=value`` override is malformed or names a parameter that does not exist."""


# --- tasks and experiments -------------------------------------------------------------


class TaskDefinitionError(SteadyrunError):
    """A task or experiment is ill-formed: duplicate names, unknown dependencies, cycles,
    bad resources, sizes or durations."""


class InsufficientResources(SteadyrunError):
    """What was asked for is more than there is (a task's request, or a resource check)."""


class PlotUnavailable(SteadyrunError):
    """A report's PNG needs matplotlib, which is not installed
    (``pip install 'steadyrun[plot]'``)."""


class InvalidTransition(SteadyrunError):
    """An internal state change that the attempt state machine does not allow."""


class ExecutorError(SteadyrunError):
    """An executor could not start, launch, poll or cancel an attempt."""


class StoreError(SteadyrunError):
    """The experiment store is unreadable, locked by a live controller, or inconsistent."""


class ExperimentNotFound(StoreError, LookupError):
    """No experiment has the id or title that was asked for (or a prefix is ambiguous)."""


class ExperimentLocked(StoreError):
    """Another live controller is driving this experiment; only one may at a time."""


class TaskFailed(SteadyrunError):
    """One task failed for good (after its retries).

    Attributes carry what a user needs to act: ``task``, ``kind`` (``error``, ``oom``,
    ``timeout``, ``lost``, ``cancelled``), ``exit_code``, ``remote_traceback`` and
    ``log_tail`` (the last lines of its output).
    """

    def __init__(
        self,
        task: str,
        kind: str | None,
        message: str,
        *,
        exit_code: int | None = None,
        remote_traceback: str | None = None,
        log_tail: str | None = None,
        attempts: int = 0,
    ) -> None:
        self.task = task
        self.kind = kind
        self.exit_code = exit_code
        self.remote_traceback = remote_traceback
        self.log_tail = log_tail
        self.attempts = attempts
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"task {self.task!r} failed ({self.kind or 'error'}"
        if self.exit_code is not None:
            head += f", exit code {self.exit_code}"
        head += f", {self.attempts} attempt{'s' if self.attempts != 1 else ''}): {self.message}"
        parts = [head]
        if self.remote_traceback:
            parts.append("remote traceback:\n" + _indent(self.remote_traceback.rstrip()))
        if self.log_tail:
            parts.append("last lines of its log:\n" + _indent(self.log_tail.rstrip()))
        return "\n".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_task_failed,
            (self.task, self.kind, self.message, self.exit_code, self.remote_traceback,
             self.log_tail, self.attempts),
        )


class ExperimentFailed(SteadyrunError):
    """An experiment ended with at least one failed task.

    ``failures`` holds one :class:`TaskFailed` per failed task; ``result`` the whole
    result mapping (succeeded tasks' values are still there).
    """

    def __init__(self, experiment_id: str, failures: list[TaskFailed], result: Any = None):
        self.experiment_id = experiment_id
        self.failures = failures
        self.result = result
        names = ", ".join(f.task for f in failures)
        body = "\n\n".join(str(f) for f in failures)
        super().__init__(
            f"experiment {experiment_id} failed: {len(failures)} task(s) failed ({names})\n\n"
            f"{body}\n\nSee `steadyrun status {experiment_id}`; "
            f"`steadyrun resume {experiment_id}` reruns what did not succeed."
        )


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _rebuild_task_failed(task, kind, message, exit_code, tb, tail, attempts):  # noqa: ANN001
    return TaskFailed(task, kind, message, exit_code=exit_code, remote_traceback=tb,
                      log_tail=tail, attempts=attempts)
