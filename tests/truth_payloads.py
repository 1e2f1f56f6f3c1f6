"""Payloads for tests/test_small_truths.py (module-level: every strategy imports them)."""

from __future__ import annotations

import os


def deep_failure(depth: int = 30) -> None:
    """Raises from ``depth`` frames down: a traceback longer than a log's tail."""
    if depth:
        deep_failure(depth - 1)
    raise RuntimeError("deep down")


def fail_first(marker: str, seconds: float = 0.2) -> str:
    """Fails on its first attempt (creating ``marker``), succeeds on the next."""
    import time

    time.sleep(seconds)
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"
