"""Packing tasks by memory: requests that add up to more than the machine has.

    python bench/packing.py [--tasks 12] [--fraction 0.15] [--hold 2.0]

Each task asks for ``--fraction`` of the executor's memory capacity, really allocates and
touches that much, holds it for ``--hold`` seconds and frees it. The sum of requests is
``tasks * fraction`` of the machine (1.8x by default). The engine must run them without
any being killed, in a makespan near the lower bound
``max(ceil(tasks / per_wave) * hold_time, ...)``, where ``per_wave`` is how many requests
fit at once. Target: no task killed; makespan within 20% of the lower bound.

Touching gigabytes takes time of its own (more when several processes fault pages in at
once), so the bound is computed from the durations the tasks really had: no schedule can end
before the longest task, nor before the memory-time the tasks used
(``sum(duration * request) / capacity``) fits in the capacity.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from work import hold  # noqa: E402

import steadyrun as run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--fraction", type=float, default=0.15)
    ap.add_argument("--hold", type=float, default=2.0)
    args = ap.parse_args()
    os.environ.setdefault("STEADYRUN_HOME", tempfile.mkdtemp(prefix="steadyrun-bench-"))
    executor = run.LocalExecutor(strategy="subprocess")
    cap = executor.capacity()
    request = int(cap.memory * args.fraction)
    # Each process needs some memory of its own beyond the block: ask for it.
    ask = request + 64 * 1024**2
    tasks = [run.Task(f"hold{i}", run.Partial(hold, nbytes=request, seconds=args.hold),
                      resources=run.Resources(cpus=0.1, memory=ask))
             for i in range(args.tasks)]
    start = time.perf_counter()
    result = run.Experiment(tasks, title="packing", executor=executor, progress=False).run(
        raise_on_failure=False)
    makespan = time.perf_counter() - start
    killed = [n for n, r in result.items() if r.state != "succeeded"]
    per_wave = min(int(cap.memory // ask), int(cap.cpus // 0.1))
    durations = sorted(r.duration for r in result.values() if r.duration)
    median = durations[len(durations) // 2]
    lower = max(durations[-1], sum(d * ask for d in durations) / cap.memory)
    ideal = math.ceil(args.tasks / per_wave) * args.hold
    gib = 1024**3
    print(f"capacity {cap.memory / gib:.1f} GiB, {args.tasks} tasks x {ask / gib:.2f} GiB "
          f"= {args.tasks * ask / cap.memory:.0%} of capacity; {per_wave} fit at once")
    print(f"task durations: median {median:.2f}s (hold {args.hold}s plus touching the "
          f"memory), min {durations[0]:.2f}s, max {durations[-1]:.2f}s")
    print(f"makespan {makespan:.2f}s  lower bound {lower:.2f}s (from the durations; "
          f"{ideal:.1f}s if touching memory were free)  overhead "
          f"{(makespan / lower - 1) * 100:+.1f}% (target: within +20%)")
    print(f"tasks not succeeded: {killed or 'none'}")


if __name__ == "__main__":
    main()
