"""One rank of a gang: ``python -m steadyrun.launchers.rank ATTEMPT_DIR``.

Started by a node agent (plain ranks) or by torchrun, with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and the rendezvous variables already set. It runs the attempt's payload
exactly as a plain worker does (:func:`steadyrun.attempt.worker.execute`'s rules), but
into its own folder ``ranks/<RANK>/``: ``rank.json`` first (pid, host, node), then the
capped ``stdout.log``/``stderr.log``, and ``result.pkl`` or ``error.json``.
:func:`steadyrun.run.task_dir` is the task's folder, the same for every rank.

Exit status as the worker's: 0 success, 1 the payload raised, 3 out of memory, 2 the
attempt folder or payload is missing, 76 preempted (SIGUSR1, forwarded by the node
agent: :mod:`steadyrun.attempt.preempt`; rank 0 saves a class payload's checkpoint).
Stopped with SIGTERM, it ends the processes its
payload started, then dies of the signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time

from steadyrun.attempt import fsio, guard, logcap, preempt, worker
from steadyrun.attempt.context import TASK_DIR_ENV, task_dir_for
from steadyrun.launchers import NODE_RANK_ENV, RANK_INFO_FILE, rank_dir


def main(argv: list[str] | None = None) -> int:
    """Run one rank of the attempt in ``argv[0]``; return its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or not os.path.isdir(args[0]):
        print(f"steadyrun.launchers.rank: no attempt folder in {args!r}", file=sys.stderr)
        return worker.EXIT_BAD_ATTEMPT_DIR
    directory = args[0]
    try:
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        print("steadyrun.launchers.rank: RANK is not set; a rank is started by its node "
              "agent or by torchrun", file=sys.stderr)
        return worker.EXIT_BAD_ATTEMPT_DIR
    parent = os.getppid()  # its node agent, or torchrun's: the rank dies with it, even
    guard.die_with_parent(signal.SIGKILL)  # when that is killed with no chance to stop it
    if os.getppid() != parent:
        return worker.EXIT_CONTROLLER_GONE
    here = rank_dir(directory, rank)
    os.makedirs(here, mode=0o700, exist_ok=True)
    for stale in (worker.RESULT_FILE, worker.ERROR_FILE):  # of a run torchrun restarted
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(here, stale))
    os.environ.setdefault(TASK_DIR_ENV, task_dir_for(directory))
    guard.keep_descendants()
    worker._take_handed_env()
    _write_info(here, rank)
    worker._install_stop_handler()
    preempt.install(here, directory, save=rank == 0)  # SIGUSR1: stop early and save
    capture = logcap.capture_fds(here)
    from steadyrun.attempt.streams import line_buffered

    line_buffered()
    worker._extend_sys_path()
    try:
        try:
            payload = worker.read_payload(directory)
        except BaseException as e:  # a payload this rank cannot load is its error
            result = worker._failure(e, exit_code=worker.EXIT_BAD_ATTEMPT_DIR
                                     if isinstance(e, FileNotFoundError) else None)
            worker._write_error(here, result)
            worker._print_traceback(result)
            return result.process_exit_code
        result = worker._execute(preempt.resume(payload, directory), here, "none")
        if not result.ok:
            worker._print_traceback(result)
        worker.end_leftovers(worker.LEFTOVER_GRACE)
        return result.process_exit_code
    finally:
        capture.finish(worker.LEFTOVER_GRACE)


def _write_info(here: str, rank: int) -> None:
    env = os.environ
    info = {"rank": rank, "local_rank": _int(env.get("LOCAL_RANK")),
            "node_rank": _int(env.get(NODE_RANK_ENV) or env.get("GROUP_RANK")),
            "world_size": _int(env.get("WORLD_SIZE")), "host": socket.gethostname(),
            "node": env.get("SLURMD_NODENAME") or socket.gethostname(), "pid": os.getpid(),
            "started": time.time(), "restart": _int(env.get("TORCHELASTIC_RESTART_COUNT"))}
    fsio.atomic_write(os.path.join(here, RANK_INFO_FILE),
                         json.dumps(info).encode("utf-8"))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
