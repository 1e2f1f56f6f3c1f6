"""Per-task overhead of RayExecutor next to raw ``ray.remote`` on the same cluster.

    python bench/ray_overhead.py [--tasks 200]

Starts one local Ray instance (every listener on 127.0.0.1), runs ``--tasks`` no-op
tasks as plain ``ray.remote`` calls, then the same number as a steadyrun experiment on
``RayExecutor`` connected to that instance (store records, attempt folders, logs and
results copied back, failure classification included). Target: within 2x of raw Ray
per task. ``--oversubscribe`` lists the factors measured (default 1 and 8): with 1 the
engine keeps as many tasks in flight as the cluster has CPUs, so each task's round trip
(its end seen, the next one admitted and submitted) is paid in full; with more, Ray's
own queue hides it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from work import noop  # noqa: E402

import steadyrun as run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--oversubscribe", type=float, nargs="+", default=[1.0, 8.0])
    args = ap.parse_args()
    os.environ.setdefault("STEADYRUN_HOME", tempfile.mkdtemp(prefix="steadyrun-bench-"))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False)  # one instance for both
    rows = []
    try:
        remote_noop = ray.remote(num_cpus=1, max_retries=0)(noop)
        ray.get([remote_noop.remote(i) for i in range(10)])  # warm the workers
        start = time.perf_counter()
        values = ray.get([remote_noop.remote(i) for i in range(args.tasks)])
        raw = time.perf_counter() - start
        assert values[-1] == args.tasks - 1
        for oversubscribe in args.oversubscribe:
            ex = run.RayExecutor(address="auto", oversubscribe=oversubscribe)
            tasks = [run.Task(f"t{i}", run.Partial(noop, i=i)) for i in range(args.tasks)]
            start = time.perf_counter()
            result = run.Experiment(tasks, title="ray-overhead", executor=ex,
                                    progress=False, monitor_interval=None).run()
            rows.append((f"RayExecutor x{oversubscribe:g}", time.perf_counter() - start))
            assert result[f"t{args.tasks - 1}"].value == args.tasks - 1
    finally:
        ray.shutdown()
    n = args.tasks
    print(f"{n} no-op tasks on a local Ray instance (2 CPUs); RayExecutor xN admits N times "
          "the cluster's CPUs (oversubscribe=N), the rest waits in Ray's queue")
    print(f"{'':<22}{'seconds':>9}{'ms/task':>9}{'ratio':>8}")
    print(f"{'raw ray.remote':<22}{raw:>9.2f}{raw / n * 1e3:>9.2f}{'1.00x':>8}")
    for name, seconds in rows:
        print(f"{name:<22}{seconds:>9.2f}{seconds / n * 1e3:>9.2f}{seconds / raw:>7.2f}x")
    print("(target: within 2x of raw Ray)")


if __name__ == "__main__":
    main()
