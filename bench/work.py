"""Payloads the benchmarks run, in a module of their own so that worker processes import
only this (a benchmark script's own imports would be charged to every task)."""

from __future__ import annotations

import time


def noop(i: int = 0) -> int:
    return i


def burn(seconds: float) -> float:
    """Spend ``seconds`` of CPU time (measured with ``time.process_time``)."""
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        for i in range(1000):
            x += i * i
    return seconds


def hold(nbytes: int, seconds: float) -> float:
    """Allocate and touch ``nbytes``, keep them for ``seconds`` in all, then free them."""
    start = time.perf_counter()
    block = bytearray(b"\x01") * nbytes
    time.sleep(max(0.0, seconds - (time.perf_counter() - start)))
    del block
    return time.perf_counter() - start


def chatter(seconds: float, rate: float = 10.0) -> int:
    """Print ``rate`` lines a second for ``seconds`` (sleep only when ``rate`` is 0);
    return the number of lines printed."""
    if rate <= 0:
        time.sleep(seconds)
        return 0
    lines = int(seconds * rate)
    for i in range(lines):
        print(f"step {i} loss {1.0 / (i + 1):.4f}")
        time.sleep(1.0 / rate)
    return lines
