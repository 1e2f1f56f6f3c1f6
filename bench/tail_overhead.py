"""Controller CPU time of a foreground run with and without its tasks' output shown.

    python bench/tail_overhead.py [--tasks 20] [--seconds 10] [--lines-per-second 10]

Each task sleeps ``--seconds`` while printing ``--lines-per-second`` lines (0: silent).
The same experiment runs with ``tail_logs=False`` and ``tail_logs=True`` (the output
going to /dev/null); the figure is this process's own CPU time (user + system, children
excluded), which is what the controller spends watching the tasks.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from work import chatter  # noqa: E402

import steadyrun as run  # noqa: E402


def measure(tasks: int, seconds: float, rate: float, strategy: str, tail: bool
            ) -> tuple[float, float]:
    """(controller CPU seconds, wall seconds) of one run."""
    executor = run.LocalExecutor(strategy=strategy)
    todo = [run.Task(f"task{i:02d}", run.Partial(chatter, seconds=seconds, rate=rate),
                     resources=run.Resources(cpus=0)) for i in range(tasks)]
    saved = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - what the tail shows costs nothing here
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        run.Experiment(todo, title="tail", executor=executor, progress=False,
                       tail_logs=tail).run()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        sys.stdout.close()
        sys.stdout = saved
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--lines-per-second", type=float, default=10.0)
    ap.add_argument("--strategy", default="subprocess")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("STEADYRUN_HOME", tempfile.mkdtemp(prefix="steadyrun-bench-"))
    measure(2, 0.2, 1, args.strategy, True)  # imports and first-use costs, not counted
    print(f"tasks={args.tasks} seconds={args.seconds:g} "
          f"lines/s per task={args.lines_per_second:g} strategy={args.strategy}")
    for tail in (False, True, False, True)[: 2 * args.repeat]:
        cpu, wall = measure(args.tasks, args.seconds, args.lines_per_second, args.strategy,
                            tail)
        print(f"tail_logs={str(tail):5}  controller CPU {cpu:6.2f}s  wall {wall:6.2f}s  "
              f"({cpu / wall * 100:5.1f}% of one core)")


if __name__ == "__main__":
    main()
