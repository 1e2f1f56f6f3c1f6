"""The background controller: ``python -m steadyrun.controller EXP_ID [--home DIR]``.

``Experiment.run(detach=True)`` and ``resume(detach=True)`` start it in its own session
(it survives the terminal). It rebuilds the experiment from the store, takes the
controller lock, and drives the tasks the store says are still to run. Exit status: 0
when the experiment succeeded, 1 when it failed or was cancelled, 2 when it could not
start (the reason is in ``controller.log`` in the experiment's folder).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadyrun.controller")
    parser.add_argument("experiment")
    parser.add_argument("--home", default=None)
    args = parser.parse_args(argv)

    from steadyrun.attempt.worker import PARENT_PATH_ENV

    for entry in os.environ.get(PARENT_PATH_ENV, "").split(os.pathsep):
        if entry and entry not in sys.path:
            sys.path.append(entry)

    from steadyrun.engine.loop import Engine
    from steadyrun.errors import SteadyrunError
    from steadyrun.manage import load_definition, prior_runs
    from steadyrun.store.db import Store

    store = Store(args.home)
    try:
        title, tasks, executor = load_definition(store, args.experiment)
        engine = Engine(store, args.experiment, tasks, executor,
                        prior=prior_runs(store, args.experiment), handle_sigint=True)
        # SIGTERM (a shutdown, `kill`) cancels cleanly like Ctrl-C: trees killed, recorded
        signal.signal(signal.SIGTERM, lambda signum, frame: engine.request_cancel())
        runs = engine.run()
    except SteadyrunError as exc:
        print(f"steadyrun controller: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 1
    finally:
        store.close()
    return 0 if all(tr.state == "succeeded" for tr in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
