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


class MissingSecret(ConfigError):
    """An env value given as ``run.Secret("NAME")`` (or withheld from the store) is read
    from the environment when an attempt is launched, and ``NAME`` is not set there; the
    message names the variable, whose env it is and the ``export`` to run."""


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


class NotInAttempt(SteadyrunError):
    """A call that only makes sense inside a running task (``run.task_dir()``) was made
    outside one."""


class StoreError(SteadyrunError):
    """The experiment store is unreadable, locked by a live controller, or inconsistent.

    Every failure of the store's database is one of these, never a raw ``sqlite3``
    error; the subclasses below name the common ones."""


class StoreUnsafe(StoreError):
    """The store is not private: its folder or database belongs to another user or is
    writable by others, or a path read from it leads outside its folder. Nothing is
    read from it; the message says what to run (``chmod 700``, ``chown``)."""


class StoreFull(StoreError):
    """The disk (or quota) holding the store is full. The message names the folder,
    what fills it and what to do; ``steadyrun resume ID`` goes on once space is free."""


class StoreCorrupt(StoreError):
    """The store's database is damaged. steadyrun no longer writes to it; the message
    gives the command that recovers what is readable."""


class StoreReadOnly(StoreError):
    """A write to a store opened read-only (an archived copy, a read-only mount)."""


class ExperimentNotFound(StoreError, LookupError):
    """No experiment has the id or title that was asked for (or a prefix is ambiguous)."""


class AmbiguousExperimentId(ExperimentNotFound):
    """An abbreviated id matches several experiments; ``candidates`` holds their ids and
    the message lists each with its title, state and start."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


class ExperimentLocked(StoreError):
    """Another live controller is driving this experiment; only one may at a time."""


class ResultUnavailable(SteadyrunError):
    """A succeeded task's return value cannot be read back: its ``result.pkl`` is
    missing (deleted, not copied back) or unreadable (truncated, corrupt, or needing a
    module this process cannot import). Attributes: ``task``, ``experiment_id``,
    ``path`` (the file) and ``reason``; the message says which file and gives the command
    that reruns the task (``steadyrun resume ID --rerun TASK``) to get the value back.
    """

    def __init__(self, task: str, experiment_id: str, path: str, reason: str,
                 rerun_helps: bool = True) -> None:
        self.task = task
        self.experiment_id = experiment_id
        self.path = path
        self.reason = reason
        self.rerun_helps = rerun_helps
        exp = experiment_id or "ID"
        command = (f"`steadyrun resume {exp} --rerun {task}` (or `--rerun all` for every "
                   f"task); in Python `run.Experiment.from_id({exp!r}).resume(rerun="
                   f"[{task!r}])`")
        if rerun_helps:
            text = f"{reason}. Rerun the task to get it back: {command}."
        else:
            text = f"{reason} rerun the task: {command}."
        super().__init__(
            f"the result of task {task!r} (experiment {exp}) cannot be read: {path} {text}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.experiment_id, self.path, self.reason,
                             self.rerun_helps))


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

    def _render(self, output: bool = True) -> str:
        """The message; the traceback appears once (cut from the log's tail, which
        ends with it). ``output=False`` leaves out the traceback and the log (for a
        terminal that has just shown them)."""
        head = f"task {self.task!r} failed ({self.kind or 'error'}"
        if self.exit_code is not None:
            head += f", exit code {self.exit_code}"
        head += f", {self.attempts} attempt{'s' if self.attempts != 1 else ''}): {self.message}"
        parts = [head]
        if not output:
            return head
        if self.remote_traceback:
            parts.append("remote traceback:\n" + _indent(self.remote_traceback.rstrip()))
        tail = _without_traceback(self.log_tail or "", self.remote_traceback or "")
        if tail.strip():
            parts.append("last lines of its log:\n" + _indent(tail.rstrip()))
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
        super().__init__(self.summary())

    def summary(self, output: bool = True) -> str:
        """The message; with ``output=False`` each failure is one line, without its
        traceback and log (for a terminal that streamed the tasks' output)."""
        names = ", ".join(f.task for f in self.failures)
        body = "\n\n".join(f._render(output) for f in self.failures)
        return (f"experiment {self.experiment_id} failed: {len(self.failures)} task(s) "
                f"failed ({names})\n\n{body}\n\nSee `steadyrun status {self.experiment_id}`; "
                f"`steadyrun resume {self.experiment_id}` reruns what did not succeed.")


def _without_traceback(tail: str, traceback: str) -> str:
    """``tail`` with the lines it shares with ``traceback`` (the worker prints the
    traceback last; the tail may begin inside it) replaced by one line."""
    tb = traceback.rstrip().splitlines()
    lines = tail.rstrip().splitlines()
    if len(tb) < 2:
        return tail
    for i in range(len(lines)):
        cut_above = i == 0 or lines[i - 1].startswith("[")  # the tail began inside it
        for j in range(len(tb) if cut_above else 1):
            block = tb[j:]
            if len(block) >= 2 and lines[i:i + len(block)] == block:
                kept = lines[:i] + ["(the traceback shown above)"] + lines[i + len(block):]
                return "\n".join(kept)
    return tail


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _rebuild_task_failed(task, kind, message, exit_code, tb, tail, attempts):  # noqa: ANN001
    return TaskFailed(task, kind, message, exit_code=exit_code, remote_traceback=tb,
                      log_tail=tail, attempts=attempts)
