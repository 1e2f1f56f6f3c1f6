"""The attempt folder and what runs inside it.

One attempt of a task owns one folder. This layer is its only owner: the file names, the
atomic writes, the identity file a worker writes before its payload starts, the payload,
result, error, logs and samples, the function that turns how an attempt ended into an
``Outcome``, and the worker entry point (``python -m steadyrun.attempt.worker DIR``).
Executors and the engine read and write an attempt folder only through it.

Called, this package answers inside a payload which attempt is running:
``run.attempt()`` returns a read-only :class:`~steadyrun.attempt.preempt.AttemptInfo`
(``number``, ``previous_kind``, ``preemptions``, and ``preempted``: whether the previous
attempt was preempted, so there is a checkpoint to resume from). Outside an attempt's
worker process it raises :class:`~steadyrun.errors.NotInAttempt`. See
:mod:`steadyrun.attempt.preempt` for preemption and checkpoints.
"""

import sys as _sys
import types as _types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from steadyrun.attempt.preempt import AttemptInfo


class _CallableModule(_types.ModuleType):
    """This package, callable: ``run.attempt()`` (a name the package itself holds)."""

    def __call__(self) -> "AttemptInfo":
        from steadyrun.attempt.preempt import attempt

        return attempt()


_sys.modules[__name__].__class__ = _CallableModule
