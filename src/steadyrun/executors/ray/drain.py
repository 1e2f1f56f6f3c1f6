"""Preemption of an attempt inside a Ray worker: SIGUSR1, a drained node, a checkpoint.

An attempt on Ray runs in a Ray worker process, which runs one task after another. For
the duration of one attempt:

- **SIGUSR1** to the worker process asks the attempt to stop early and save, as it does
  for a local worker (:mod:`steadyrun.attempt.preempt`): ``on_preempt`` callbacks run,
  a class payload's ``checkpoint()`` is saved as ``checkpoint.pkl`` in the task's
  folder, and the worker process exits with status 76. Ray reports the task's end as a
  crashed worker; the executor makes it ``preempted`` from what the attempt saved
  (:mod:`steadyrun.executors.ray.preempted`).
- **A drained node** (``ray drain-node``, or the autoscaler draining it before it takes
  the machine away: the GCS drain API, with or without a deadline) does the same: every
  :data:`DRAIN_POLL` seconds of a running attempt, the worker asks Ray's GCS which
  nodes are being drained (one small request; an attempt shorter than the poll never
  asks) and sends itself SIGUSR1 when its own node is one of them.
- A ``checkpoint.pkl`` that an earlier attempt saved in the task's folder is the
  payload this attempt runs (the safety rules of :func:`steadyrun.attempt.preempt.resume`
  apply).

The handler is installed only when the task runs in the worker's main thread (a plain
Ray task does); the previous handler is put back when the attempt ends, so the next
task of the same worker starts with a clean slate.

Imports only the standard library at the top: Ray workers import it for every task.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

#: Seconds between two questions to Ray about draining nodes, while an attempt runs.
DRAIN_POLL = 5.0


def enter(payload: Any, directory: str) -> tuple[Any, Any]:
    """Make SIGUSR1 a preemption request for the attempt in ``directory`` and return the
    payload to run (a saved checkpoint's, or ``payload``) and what :func:`leave` needs."""
    from steadyrun.attempt import preempt

    _forget(preempt)
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        import signal

        previous = signal.getsignal(signal.SIGUSR1)
        preempt.install(directory)
    return preempt.resume(payload, directory), previous


def leave(previous: Any) -> None:
    """Undo :func:`enter`: the previous SIGUSR1 handler, no request pending."""
    from steadyrun.attempt import preempt

    if previous is not None and threading.current_thread() is threading.main_thread():
        import signal

        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGUSR1, previous)
    _forget(preempt)


def _forget(preempt: Any) -> None:
    """A Ray worker runs many attempts: none inherits the previous one's request, its
    callbacks or its checkpoint path."""
    preempt._stop.clear()
    preempt._callbacks.clear()
    timer = preempt._where.pop("timer", None)
    if timer is not None:
        timer.cancel()
    preempt._where.clear()


class DrainWatch:
    """Sends this process SIGUSR1 once when Ray says its node is being drained.

    :meth:`check` is called by the attempt's sampling thread every :data:`DRAIN_POLL`
    seconds; any failure to ask Ray (an older Ray, no GCS) turns the watch off."""

    def __init__(self, poll: float = DRAIN_POLL) -> None:
        self.poll = poll
        self.fired = False
        self._node: str | None = None

    @property
    def active(self) -> bool:
        return self.poll > 0 and not self.fired

    def check(self) -> bool:
        """Ask once; True when the node is draining (and the signal was sent)."""
        if not self.active:
            return False
        try:
            import ray

            if self._node is None:
                self._node = str(ray.get_runtime_context().get_node_id())
            draining = ray._private.state.state.get_draining_nodes()
        except Exception:  # not inside Ray, or a Ray without the call
            self.poll = 0.0
            return False
        if self._node not in (draining or {}):
            return False
        import signal

        self.fired = True
        from steadyrun.attempt import preempt

        if preempt._where.get("result_dir"):  # the handler is ours: ask it to save
            os.kill(os.getpid(), signal.SIGUSR1)
        return True
