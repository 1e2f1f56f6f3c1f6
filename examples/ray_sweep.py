"""A learning-rate sweep on Ray: the quickstart's training function, one Ray task per point.

    python examples/ray_sweep.py                  # starts a private Ray on this machine
    python examples/ray_sweep.py 127.0.0.1:6379   # or uses a running cluster (ray-up.sh)

Each task asks for one CPU and 256 MiB; Ray places it, steadyrun retries it (Ray's own
retries are off), and its logs, result and resource samples land in the local store
(``steadyrun status ID`` / ``steadyrun logs ID TASK``) wherever it ran.
"""

from __future__ import annotations

import sys

from regression import Model, evaluate, train

import steadyrun as run
from steadyrun.executors.ray.executor import RayExecutor


def main(address: str | None = None) -> None:
    base = run.Task("train", run.Partial(train, model=run.Config(Model, hidden=64), lr=0.1,
                                         epochs=20),
                    resources=run.Resources(cpus=1, memory="256MiB"),
                    retry=run.Retry(max_attempts=2, initial_delay=0.5))
    tasks = run.sweep(base, {"lr": [0.05, 0.1, 0.5]})
    tasks.append(run.Task("evaluate", run.Partial(evaluate, model=run.Config(Model, hidden=64)),
                          depends_on=[t.name for t in tasks]))
    executor = RayExecutor(address=address, num_cpus=None if address else 2)
    result = run.Experiment(tasks, title="ray-sweep", executor=executor).run(
        raise_on_failure=False)
    for name, r in result.items():
        value = r.value if r.ok else r.message
        print(f"{name:<16} {r.state:<10} attempts={r.attempts} {value}")
    print(f"experiment {result.id}: {result.state}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
