"""Makespan of CPU-bound tasks against the ideal of total work / cores.

    python bench/makespan.py [--tasks 20] [--seconds 1.0] [--strategy subprocess]

Each task burns ``--seconds`` of CPU time (measured with ``time.process_time``, so the
work is known exactly). Target: makespan within 10% of tasks * seconds / cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from work import burn  # noqa: E402

import steadyrun as run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--strategy", default="subprocess")
    args = ap.parse_args()
    os.environ.setdefault("STEADYRUN_HOME", tempfile.mkdtemp(prefix="steadyrun-bench-"))
    executor = run.LocalExecutor(strategy=args.strategy)
    cores = executor.capacity().cpus
    tasks = [run.Task(f"burn{i}", run.Partial(burn, seconds=args.seconds),
                      resources=run.Resources(cpus=1)) for i in range(args.tasks)]
    start = time.perf_counter()
    run.Experiment(tasks, title="makespan", executor=executor, progress=False).run()
    makespan = time.perf_counter() - start
    ideal = args.tasks * args.seconds / cores
    print(f"tasks={args.tasks} work={args.seconds}s each cores={cores:g} "
          f"strategy={args.strategy}")
    print(f"makespan {makespan:.2f}s  ideal {ideal:.2f}s  overhead "
          f"{(makespan / ideal - 1) * 100:+.1f}% (target: within +10%)")


if __name__ == "__main__":
    main()
