"""Code the quickstart experiment runs: a tiny model config and a training function.

Payloads live in an importable module (not in the script being run) so their configs
can be written to YAML, overridden and fingerprinted; steadyrun passes the script's
``sys.path`` to its worker processes so they import this module too.
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass
class Model:
    hidden: int = 64
    layers: int = 2
    activation: str = "relu"


def make_data(n: int, seed: int = 0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(x, 3.0 * x + rng.gauss(0, 0.1)) for x in (rng.random() for _ in range(n))]


def train(model: Model, lr: float, epochs: int, n: int = 200) -> dict[str, float]:
    """Fit y = w*x by gradient descent; the model config only labels the run."""
    data = make_data(n)
    w = 0.0
    for _ in range(epochs):
        grad = sum(2 * (w * x - y) * x for x, y in data) / len(data)
        w -= lr * grad
    loss = sum((w * x - y) ** 2 for x, y in data) / len(data)
    print(f"trained {model} lr={lr}: w={w:.3f} loss={loss:.4f}")
    return {"w": w, "loss": loss}


def evaluate(model: Model, n: int = 50) -> float:
    """Runs only once both trainings succeeded (depends_on)."""
    data = make_data(n, seed=1)
    return sum(y / x for x, y in data if x > 0.05) / n
