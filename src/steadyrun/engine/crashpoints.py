"""Named points where a test can kill the controller for real (``kill -9`` of itself).

Crash-recovery tests set ``STEADYRUN_CRASH_AT=NAME`` (or ``NAME:N`` for the N-th time the
point is reached) in the controller's environment; the engine calls :func:`crash_point`
at the moments that matter for exactly-once execution. Unset, a call costs one dict
look-up.

Points: ``attempt-recorded`` (the attempt row is committed, nothing launched yet),
``launched`` (the executor started the attempt, its pid is not committed yet),
``outcome-received`` (an attempt ended, its outcome is not committed yet).
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "STEADYRUN_CRASH_AT"

_spec = os.environ.get(CRASH_ENV, "")
_name, _, _count = _spec.partition(":")
_remaining = [int(_count) if _count.isdigit() else 1]


def crash_point(name: str) -> None:
    """SIGKILL this process when ``name`` is the point the environment asks for."""
    if not _name or name != _name:
        return
    _remaining[0] -= 1
    if _remaining[0] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
