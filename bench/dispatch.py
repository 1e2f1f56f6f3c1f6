"""Per-task overhead of the engine and each local strategy, next to concurrent.futures.

    python bench/dispatch.py [--tasks 500] [--subprocess-tasks 100]

Every figure is wall time for the whole batch divided by the number of tasks: for
steadyrun that includes creating the experiment in the store, admission, recording every
state change, and the attempt folders; for concurrent.futures it includes the pool's start.
Targets: ``thread`` and ``process`` within 2x of the matching pool; ``subprocess`` under
30 ms per task.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from work import noop  # noqa: E402

import steadyrun as run  # noqa: E402


def time_pool(kind: str, n: int, workers: int) -> float:
    pool_cls = cf.ThreadPoolExecutor if kind == "thread" else cf.ProcessPoolExecutor
    start = time.perf_counter()
    with pool_cls(max_workers=workers) as pool:
        list(pool.map(noop, range(n)))
    return time.perf_counter() - start


def time_steadyrun(strategy: str, n: int, workers: int) -> float:
    tasks = [run.Task(f"t{i}", run.Partial(noop, i=i)) for i in range(n)]
    exp = run.Experiment(tasks, title=f"dispatch-{strategy}", progress=False,
                         executor=run.LocalExecutor(strategy=strategy, max_workers=workers))
    start = time.perf_counter()
    result = exp.run()
    elapsed = time.perf_counter() - start
    assert result["t7"].value == 7
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--subprocess-tasks", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    os.environ.setdefault("STEADYRUN_HOME", tempfile.mkdtemp(prefix="steadyrun-bench-"))
    n, w = args.tasks, args.workers
    rows = []
    for strategy, baseline in (("sequential", None), ("thread", "thread"),
                               ("process", "process"), ("subprocess", None)):
        count = args.subprocess_tasks if strategy == "subprocess" else n
        ours = time_steadyrun(strategy, count, w) / count
        base = time_pool(baseline, count, w) / count if baseline else None
        rows.append((strategy, count, ours, base))
    print(f"{'strategy':<12}{'tasks':>7}{'steadyrun ms/task':>20}"
          f"{'concurrent.futures':>20}{'ratio':>8}")
    for strategy, count, ours, base in rows:
        base_txt = f"{base * 1e3:.3f}" if base else "-"
        ratio = f"{ours / base:.2f}x" if base else "-"
        print(f"{strategy:<12}{count:>7}{ours * 1e3:>20.3f}{base_txt:>20}{ratio:>8}")
    print(f"(workers={w}, STEADYRUN_HOME={os.environ['STEADYRUN_HOME']})")


if __name__ == "__main__":
    main()
