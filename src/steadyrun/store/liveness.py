"""Is an experiment's controller alive, and is an experiment left without one?

One rule for every reader (``status``, ``list``, ``monitor``, ``Experiment.status()``):
an experiment that says ``running`` while no live controller drives it is *dead* (its
controller was killed, or crashed before it could record the end), and
``steadyrun resume ID`` is what picks it up.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from steadyrun.attempt.liveness import process_start_time

#: A controller on another host counts as alive while its heartbeat is this recent.
HEARTBEAT_STALE_AFTER = 30.0

#: An experiment still ``created`` this long after it was made, with no controller, was
#: left by a launcher that died before its controller started.
CREATED_GRACE = 30.0


def controller_alive(row: Any) -> bool | None:
    """Whether the controller recorded on an experiment row still runs (None: no
    controller is recorded).

    On this host the process must exist with the recorded start time (a reused pid does
    not count); on another host the heartbeat must be recent."""
    pid = row.controller_pid
    if pid is None:
        return None
    if row.controller_host != socket.gethostname():
        return row.heartbeat is not None and time.time() - row.heartbeat < HEARTBEAT_STALE_AFTER
    started = process_start_time(pid)
    if started is None:
        return False
    return row.controller_started is None or abs(started - row.controller_started) < 1.0


def controller_dead(row: Any, now: float | None = None) -> bool:
    """True when the experiment on ``row`` is unfinished but no live controller drives it:
    ``running`` with a dead controller or none recorded at all, or ``created`` and
    abandoned (its controller died, or never started within :data:`CREATED_GRACE`).
    ``steadyrun resume ID`` is the fix."""
    if row.state == "running":
        return not controller_alive(row)
    if row.state == "created":
        alive = controller_alive(row)
        if alive is None:
            return (now if now is not None else time.time()) - row.created_at > CREATED_GRACE
        return not alive
    return False


def resume_hint(exp_id: str) -> str:
    """The command that picks up an experiment whose controller is dead."""
    return f"steadyrun resume {exp_id}"
