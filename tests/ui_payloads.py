"""Payloads of the dashboard tests: a sweep trial that takes a moment."""

from __future__ import annotations

import time


def slow_trial(lr: float, seconds: float = 2.0) -> dict[str, float]:
    """``loss`` grows with ``lr`` after ``seconds``; a negative ``lr`` fails."""
    time.sleep(seconds)
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    return {"loss": round(lr * 10, 6), "acc": round(1 - lr, 6)}
