"""Submitting many tasks to Slurm: one job array against one sbatch per task.

    python bench/slurm_submit.py [--tasks 50]

Starts a one-node Slurm cluster on 127.0.0.1 with scripts/slurm-up.sh (as the tests do;
root, Debian's packages) unless SLURM_CONF already names a running one, runs ``--tasks``
no-op tasks through SlurmExecutor twice, as one array and as one job each, and prints
the time from the first submission to the last result, and the sbatch calls made.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from work import noop  # noqa: E402

import steadyrun as run  # noqa: E402
from steadyrun.executors.slurm.tunnel import LocalTunnel  # noqa: E402


class CountingTunnel(LocalTunnel):
    def __init__(self) -> None:
        super().__init__()
        self.sbatch = 0
        self.sbatch_seconds = 0.0

    def run(self, cmd, timeout=60.0):  # noqa: ANN001, ANN201
        if cmd[0] != "sbatch":
            return super().run(cmd, timeout)
        start = time.perf_counter()
        try:
            return super().run(cmd, timeout)
        finally:
            self.sbatch += 1
            self.sbatch_seconds += time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(n: int, array: bool) -> tuple[float, int, float]:
    tunnel = CountingTunnel()
    ex = run.SlurmExecutor(tunnel=tunnel, array=array, poll_interval=0.2,
                           time="00:05:00", oversubscribe=n)
    tasks = [run.Task(f"t{i}", run.Partial(noop, i=i), resources=run.Resources(cpus=1))
             for i in range(n)]
    start = time.perf_counter()
    result = run.Experiment(tasks, title=f"submit-{'array' if array else 'jobs'}",
                            executor=ex, progress=False, monitor_interval=None).run()
    elapsed = time.perf_counter() - start
    assert result[f"t{n - 1}"].value == n - 1
    return elapsed, tunnel.sbatch, tunnel.sbatch_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=50)
    args = ap.parse_args()
    os.environ.setdefault("STEADYRUN_HOME", tempfile.mkdtemp(prefix="steadyrun-bench-"))
    scratch = None
    if not os.environ.get("SLURM_CONF"):
        scratch = Path(tempfile.mkdtemp(prefix="steadyrun-slurm-bench-"))
        env = dict(os.environ, STEADYRUN_SLURMCTLD_PORT=str(free_port()),
                   STEADYRUN_SLURMD_PORT=str(free_port()))
        subprocess.run([str(ROOT / "scripts" / "slurm-up.sh"), str(scratch)], env=env,
                       check=True, capture_output=True, timeout=300)
        os.environ["SLURM_CONF"] = str(scratch / "slurm.conf")
    try:
        rows = [("one array", *measure(args.tasks, True)),
                ("one sbatch per task", *measure(args.tasks, False))]
    finally:
        if scratch is not None:
            subprocess.run([str(ROOT / "scripts" / "slurm-down.sh"), str(scratch)],
                           timeout=60)
    print(f"{args.tasks} no-op tasks on a one-node Slurm cluster (127.0.0.1)")
    print(f"{'submission':<22}{'to finish s':>12}{'sbatch calls':>14}{'in sbatch s':>13}")
    for name, seconds, calls, in_sbatch in rows:
        print(f"{name:<22}{seconds:>12.2f}{calls:>14}{in_sbatch:>13.2f}")
    print("(the node runs 2 one-CPU jobs at a time: finishing is bound by the node)")


if __name__ == "__main__":
    main()
