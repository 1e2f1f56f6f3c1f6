"""The reusable worker process of the ``process`` strategy
(``python -m steadyrun.attempt.worker --pool FD``).

It serves attempts one at a time over a socket. For each it records its identity in the
attempt folder (as a pool worker), refuses to start when its controller is gone, runs the
payload through the same code as every worker, and ends what the payload left running
before it answers. It ends with its controller: a parent-death signal where Linux offers
it, and a thread that notices its parent changed, both of which end the attempt's whole
tree before the process exits.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from steadyrun.attempt import memcg
from steadyrun.attempt.worker import (
    EXIT_CONTROLLER_GONE,
    EXIT_OK,
    IDENTITY_FILE,
    LEFTOVER_GRACE,
    _execute,
    _extend_sys_path,
    _failure,
    _install_stop_handler,
    _on_stop,
    _stop_grace,
    _write_error,
    end_leftovers,
)

__all__ = ["pool_loop", "pool_main"]

#: Largest value sent back over the socket; larger ones are read from ``result.pkl``.
_INLINE_VALUE_LIMIT = 1 << 20
#: How often the watchdog looks at its parent (seconds).
_WATCH_INTERVAL = 0.25


def pool_main(fd: int, controller: int | None) -> int:
    """``--pool FD``: serve attempts over the socket ``fd`` until told to stop; end with
    the controller when it goes away."""
    import signal

    from steadyrun.attempt import guard

    guard.keep_descendants()
    guard.die_with_parent(signal.SIGTERM)
    os.register_at_fork(before=_before_fork)
    if guard.controller_gone(controller):  # it died before the parent-death signal was set
        return EXIT_CONTROLLER_GONE
    _install_stop_handler()
    if controller is not None:
        threading.Thread(target=_watch_controller, args=(controller,), daemon=True,
                         name="steadyrun-watch-controller").start()
    from multiprocessing.connection import Connection

    _extend_sys_path()
    os.set_inheritable(fd, False)
    pool_loop(Connection(fd), controller)
    return EXIT_OK


def _watch_controller(controller: int) -> None:
    """Backs up the parent-death signal (not offered everywhere, and delivered only
    between two bytecodes of the main thread): once the controller is gone, end the
    attempt's tree and exit."""
    import time

    from steadyrun.attempt import guard

    while not guard.controller_gone(controller):
        time.sleep(_WATCH_INTERVAL)
    try:
        end_leftovers(min(_stop_grace(), LEFTOVER_GRACE))
        _leave_cgroup()
    finally:
        os._exit(EXIT_CONTROLLER_GONE)


#: The attempt running now, and the cgroup this process entered for it ("" when none
#: could be made). Read by the fork hook, which may run in any thread.
_forking_attempt: list[str | None] = [None]
_entered: list[str | None] = [None]


def _before_fork() -> None:
    """Before the payload forks through Python (``os.fork``, multiprocessing's fork):
    enter the attempt's cgroup, so the child can be found even if it detaches and this
    worker is killed (the child keeps our environment, which carries no attempt tag)."""
    attempt_id = _forking_attempt[0]
    if attempt_id and _entered[0] is None:
        from steadyrun.attempt import cgroup

        _entered[0] = cgroup.enter(attempt_id) or ""


def _leave_cgroup() -> None:
    path, _entered[0] = _entered[0], None
    if path:
        from steadyrun.attempt import cgroup

        cgroup.leave(path)


def pool_loop(conn: Any, controller: int | None = None) -> None:
    """Body of a reusable pool process: receive ``(attempt_id, payload_pickle, dir,
    env)``, record its identity, run it with ``env`` set in ``os.environ`` (restored
    afterwards), end what it left running, send back ``(attempt_id, kind, value_bytes,
    error, exit_code)``; stop on ``None``. ``value_bytes`` is ``None`` when the value is
    large (the caller reads ``result.pkl`` instead). Exits (status 75, nothing run)
    when ``controller`` is known and no longer its parent."""
    import pickle
    import signal

    from steadyrun.attempt import guard

    recv, send = conn.recv, conn.send
    while True:
        try:
            msg = recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        attempt_id, blob, directory, env = msg
        with contextlib.suppress(OSError):  # an unusable folder is reported by _execute
            guard.record_identity(directory, attempt_id, IDENTITY_FILE, pool=True,
                                  controller_pid=controller)
        if guard.controller_gone(controller):
            os._exit(EXIT_CONTROLLER_GONE)
        saved_env = _set_env(env)
        _forking_attempt[0] = attempt_id
        memory_home: str | None = None
        try:
            memory_home = _join_memory_cgroup(env)  # before the payload allocates anything
            payload = pickle.loads(blob)
        except BaseException as e:
            result = _failure(e)
            _write_error(directory, result)
        else:
            result = _execute(payload, directory, "fd")
            del payload
        finally:
            _set_env(saved_env)
        end_leftovers(LEFTOVER_GRACE)
        _forking_attempt[0] = None
        _leave_cgroup()
        if memory_home is not None:  # out before answering: the controller removes it
            memcg.leave(memory_home)
        if signal.getsignal(signal.SIGTERM) is not _on_stop:  # the payload replaced it
            _install_stop_handler()
        vb = result.value_bytes
        if vb is not None and len(vb) > _INLINE_VALUE_LIMIT:
            vb = None
        send((attempt_id, result.kind, vb, result.error, result.exit_code))
        del result, vb


def _join_memory_cgroup(env: dict[str, str | None] | None) -> str | None:
    """Join the attempt's memory cgroup when the controller made one (its hard limit
    is the attempt's enforced memory request); return the cgroup to go back to.
    Raises OSError when it cannot: the attempt then fails rather than run unlimited."""
    path = (env or {}).get(memcg.PATH_ENV)
    if not path:
        return None
    return memcg.join(path) or ""


def _set_env(env: dict[str, str | None] | None) -> dict[str, str | None] | None:
    """Apply ``env`` (``None`` values delete); return what restores the previous state."""
    if not env:
        return None
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return saved
