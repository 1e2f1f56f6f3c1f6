"""Train a small MLP as an experiment: a learning-rate sweep under a time budget, and a
large-batch run whose memory request forces one degradation of its batch size.

    bash scripts/demo.sh examples/train_mlp.py     (or: python examples/train_mlp.py)

What it shows: ``run.sweep`` names one task per learning rate; every task stops before
an epoch that would overrun its ``TimeBudget``; the ``big_batch`` task asks for less
memory than its batch needs with ``enforce=True``, so the monitor stops its first
attempt as ``oom`` and ``Degrade`` halves ``batch_size`` for the second, which fits.
``steadyrun status ID`` shows both attempts and the change afterwards.
"""

from __future__ import annotations

from mlp import MLPConfig, train

import steadyrun as run


def main() -> None:
    model = run.Config(MLPConfig, features=256, hidden=64)
    base = run.Task("train", run.Partial(train, model=model, batch_size=512, epochs=15,
                                         time_budget="6s"),
                    resources=run.Resources(cpus=1, memory="1GiB"))
    sweep = run.sweep(base, {"lr": [3e-2, 1e-2]})
    wide = run.Config(MLPConfig, features=512, hidden=64)
    big = run.Task(
        "big_batch",
        run.Partial(train, model=wide, lr=1e-2, batch_size=131072, epochs=3,
                    steps_per_epoch=4, time_budget="30s"),
        # ~1.5 GiB at this batch size, ~1.1 GiB at half of it
        resources=run.Resources(cpus=1, memory="1300MiB", enforce=True),
        degrade=run.Degrade(param="batch_size", factor=0.5, minimum=1024),
        retry=run.Retry(max_attempts=3, initial_delay=0.5))
    exp = run.Experiment([*sweep, big], title="train-mlp", monitor_interval=0.25)
    result = exp.run(raise_on_failure=False)

    print(f"\n{'task':<22}{'state':<11}{'attempts':>9}{'loss':>9}{'epochs':>8}"
          f"{'batch':>8}{'peak RSS':>11}")
    for name, r in result.items():
        value = r.value if r.ok else {}
        peak = f"{r.peak_rss / 2**20:.0f} MiB" if r.peak_rss else "-"
        print(f"{name:<22}{r.state:<11}{r.attempts:>9}{value.get('loss', float('nan')):>9.4f}"
              f"{value.get('epochs', 0):>8}{value.get('batch_size', 0):>8}{peak:>11}")
    for change in result["big_batch"].changes:
        print(f"big_batch degraded before attempt {change['before']}: "
              + ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in change.items() if k != "before"))
    print(f"experiment {result.id}: {result.state}")


if __name__ == "__main__":
    main()
