"""What watching running attempts costs: the AttemptMonitor's own CPU time.

    python bench/monitor_overhead.py [--tasks 8] [--seconds 10]

Starts ``--tasks`` real tasks (a Python root that is lightly busy, about 5% of a core,
with a ``sleep`` child each: 2 processes per task), then runs an AttemptMonitor over all
of them at a 1 s and a 0.1 s interval for ``--seconds`` each. The sampler thread's CPU
time is measured with ``time.thread_time()`` around every tick (``monitor.cpu_time``;
the first tick, taken in ``start()``, is reported apart);
the bench process's own CPU time over the same window (its main thread only sleeps) is
shown beside it as a cross-check. Both are fractions of one core. Target: under 1% at 1 s.

Last, what the engine adds while attempts hold an enforced memory request that no
memory cgroup holds: their trees sampled every 0.1 s (RSS only, no GPU, nothing stored),
for ``--seconds`` over all the tasks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from steadyrun.attempt.proctree import kill_tree  # noqa: E402
from steadyrun.engine.watch import ENFORCE_INTERVAL  # noqa: E402
from steadyrun.observe.monitor import AttemptMonitor, ProcessTreeSampler  # noqa: E402

# lightly busy: ~5 ms of work every 100 ms, with a sleeping child
TASK = """
import subprocess, time
child = subprocess.Popen(["sleep", "3600"])
while True:
    end = time.perf_counter() + 0.005
    while time.perf_counter() < end:
        pass
    time.sleep(0.095)
"""


def measure(pids: dict[str, int], interval: float, seconds: float) -> dict[str, float]:
    records = []
    mon = AttemptMonitor(lambda: pids, interval=interval, sink=records.extend)
    mon.start()  # the first tick runs here: it imports NVML and creates the Process objects
    first = mon.cpu_time
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    mon.stop()
    wall = time.monotonic() - wall0
    process_cpu = time.process_time() - cpu0
    cpu = mon.cpu_time - first
    ticks = mon.ticks - 1
    procs = max((r.processes for r in records if r.key == "t0"), default=0)
    return {"interval": interval, "wall": wall, "ticks": ticks, "records": len(records),
            "first_ms": 1000 * first, "tick_ms": 1000 * cpu / max(1, ticks), "cpu": cpu,
            "core": 100 * cpu / wall, "process_core": 100 * process_cpu / wall,
            "per_task": procs}


def measure_enforcement(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """The engine's sampling of enforced trees (see ``Watch.over_memory``), alone."""
    sampler = ProcessTreeSampler(gpu=False)
    sampler.sample(pids)  # the first sample creates the Process objects
    cpu, ticks, wall0 = 0.0, 0, time.monotonic()
    next_tick = wall0
    while time.monotonic() - wall0 < seconds:
        next_tick += ENFORCE_INTERVAL
        time.sleep(max(0.0, next_tick - time.monotonic()))
        started = time.thread_time()
        sampler.sample(pids)
        cpu += time.thread_time() - started
        ticks += 1
    sampler.close()
    wall = time.monotonic() - wall0
    return {"ticks": ticks, "tick_ms": 1000 * cpu / max(1, ticks), "core": 100 * cpu / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    tasks = [subprocess.Popen([sys.executable, "-c", TASK], start_new_session=True)
             for _ in range(args.tasks)]
    try:
        time.sleep(1.0)  # let every root start its child
        pids = {f"t{i}": p.pid for i, p in enumerate(tasks)}
        rows = [measure(pids, interval, args.seconds) for interval in (1.0, 0.1)]
        enforcing = measure_enforcement(pids, args.seconds)
    finally:
        for p in tasks:
            kill_tree(p.pid, grace=0.5)
            p.wait()

    machine = sum(1 for n in os.listdir("/proc") if n.isdigit()) if os.path.isdir("/proc") else 0
    print(f"AttemptMonitor over {args.tasks} tasks ({rows[0]['per_task']} processes each), "
          f"{machine} processes on this machine, {os.cpu_count()} CPUs")
    header = (f"{'interval':>8}  {'wall s':>6}  {'ticks':>5}  {'records':>7}  "
              f"{'1st tick ms':>11}  {'ms/tick':>7}  {'sampler CPU s':>13}  "
              f"{'% of a core':>11}  {'process % core':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['interval']:>7g}s  {r['wall']:>6.1f}  {r['ticks']:>5}  {r['records']:>7}  "
              f"{r['first_ms']:>11.1f}  {r['tick_ms']:>7.2f}  {r['cpu']:>13.3f}  "
              f"{r['core']:>10.2f}%  {r['process_core']:>13.2f}%")
    print("(the first tick, at start(), is shown apart: it imports NVML and creates the\n"
          " Process objects once; the other columns cover the ticks after it)")
    print(f"memory enforcement by sampling ({ENFORCE_INTERVAL:g} s, all {args.tasks} tasks "
          f"enforcing): {enforcing['ticks']} ticks, {enforcing['tick_ms']:.2f} ms/tick, "
          f"{enforcing['core']:.2f}% of a core")
    verdict = "met" if rows[0]["core"] < 1.0 else "MISSED"
    print(f"target: under 1% of a core at 1 s -> {verdict} ({rows[0]['core']:.2f}%)")


if __name__ == "__main__":
    main()
