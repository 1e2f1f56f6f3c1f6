"""The background controller: ``python -m steadyrun.controller EXP_ID [--home DIR]``.

``Experiment.run(detach=True)`` and ``resume(detach=True)`` start it in its own session
(it survives the terminal), with ``--take-over PID``: the process that started it holds
the controller lock and hands it over. It takes the lock, rebuilds the experiment from
its definition (each task with its own executor, the launching process's import path,
run from the folder it was launched from) and drives the tasks the store says are
still to run. The env values the launching process held (the store keeps none) come in
through its environment (:data:`steadyrun.config.secrets.HANDED_VALUES_ENV`), which it
empties at start. Exit status: 0 when the experiment succeeded, 1 when it failed or was
cancelled, 2 when it could not start (the reason is in ``controller.log`` in the
experiment's folder, and the experiment is marked ``failed`` if it held the lock).
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadyrun.controller")
    parser.add_argument("experiment")
    parser.add_argument("--home", default=None)
    parser.add_argument("--take-over", type=int, default=None, metavar="PID",
                        help="the process on this host that holds the lock and hands it over")
    args = parser.parse_args(argv)

    import os
    import socket

    from steadyrun.attempt.liveness import process_start_time
    from steadyrun.config.secrets import take_handed_values
    from steadyrun.engine.loop import Engine
    from steadyrun.errors import SteadyrunError
    from steadyrun.manage import prior_runs, release_control
    from steadyrun.store.db import Store
    from steadyrun.store.definition import in_launch_dir, load_definition

    take_handed_values()  # env values the launching process holds; never stored
    store = Store(args.home)
    exp_id = args.experiment
    try:
        pid = os.getpid()
        store.acquire_controller(exp_id, pid, socket.gethostname(),
                                 process_start_time(pid) or 0.0, take_over_from=args.take_over)
    except SteadyrunError as exc:  # another live controller, or no such experiment
        _say(f"steadyrun controller: {exc}")
        store.close()
        return 2
    try:
        definition = load_definition(store, exp_id)
        with in_launch_dir(definition.launch_dir):
            engine = Engine(store, exp_id, definition.tasks, definition.executor,
                            prior=prior_runs(store, exp_id), handle_sigint=True)
            # SIGTERM (a shutdown, `kill`) cancels cleanly like Ctrl-C: trees killed, recorded
            signal.signal(signal.SIGTERM, lambda signum, frame: engine.request_cancel())
            runs = engine.run()
    except SteadyrunError as exc:
        _say(f"steadyrun controller: {exc}")
        return 2
    except KeyboardInterrupt:
        return 1
    finally:
        release_control(store, exp_id)  # only if still held: the engine let go at its end
        store.close()
    return 0 if all(tr.state == "succeeded" for tr in runs.values()) else 1


def _say(message: str) -> None:
    """Write to controller.log, which may sit on the disk that just filled up."""
    import contextlib

    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
