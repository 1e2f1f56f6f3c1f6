"""A small experiment on the local executor: configure, override, run, read the results.

Run it with ``bash scripts/demo.sh`` (or ``python examples/quickstart.py``).
"""

from __future__ import annotations

from regression import Model, evaluate, train

import steadyrun as run


def main() -> None:
    # 1. What to run: a lazy config, changed by attribute and by CLI-style overrides.
    cfg = run.Partial(train, model=run.Config(Model, hidden=128), lr=0.5, epochs=20)
    run.apply_overrides(cfg, ["model.hidden=256", "epochs*=2"])
    print("config:\n" + run.to_yaml(cfg))
    print("built model:", cfg.model.build())

    # 2. Where and how: two variants, then a task that needs both.
    fast = run.Partial(train, model=cfg.model, lr=0.8, epochs=cfg.epochs)
    exp = run.Experiment([
        run.Task("train_a", cfg, resources=run.Resources(cpus=1, memory="256MiB")),
        run.Task("train_b", fast, resources=run.Resources(cpus=1, memory="256MiB"),
                 retry=run.Retry(max_attempts=2, initial_delay=0.5)),
        run.Task("evaluate", run.Partial(evaluate, model=cfg.model),
                 depends_on=["train_a", "train_b"]),
    ], title="quickstart")
    result = exp.run(raise_on_failure=False)
    for name, r in result.items():
        print(f"{name:<8} {r.state:<10} attempts={r.attempts} duration={r.duration or 0:.2f}s")
    print("train_a:", result["train_a"].value)
    print(f"experiment {result.id}: {result.state}")


if __name__ == "__main__":
    main()
