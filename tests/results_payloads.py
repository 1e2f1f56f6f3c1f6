"""Payloads of the results tests: a trial whose scores depend on its parameters."""

from __future__ import annotations

#: A value longer than any terminal column, which must come back whole.
LONG_NOTE = "z" * 150


def trial(lr: float, batch_size: int, hidden: int = 64) -> dict[str, object]:
    """Scores of one sweep point: ``loss`` grows with ``lr`` and shrinks with the batch;
    a negative ``lr`` fails."""
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    return {"loss": round(lr * 1000 / batch_size, 9), "acc": round(1 - lr, 6),
            "metrics": {"f1": round(0.5 + lr, 6), "curve": [1, 2, 3]}, "note": LONG_NOTE}
