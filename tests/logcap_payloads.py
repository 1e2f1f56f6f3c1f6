"""Payloads that print a lot, for the log cap tests (importable by worker processes)."""

from __future__ import annotations

import os
import sys
import time

_BLOCK = b"y" * 1023 + b"\n"  # 1 KiB lines


def spew_fd(mib: int) -> int:
    """Write ``FIRST``, ``mib`` MiB of lines and ``LAST`` straight to file descriptor 1
    (as C code or a child process would); return the bytes written."""
    chunk = _BLOCK * 1024
    total = 0
    for data in (b"FIRST\n", *([chunk] * mib), b"LAST\n"):
        view = memoryview(data)
        while view:
            n = os.write(1, view)
            total += n
            view = view[n:]
    os.write(2, b"on stderr\n")
    return total


def spew_print(mib: int) -> int:
    """The same through ``sys.stdout`` (what an in-process attempt's thread prints)."""
    chunk = (_BLOCK * 1024).decode()
    sys.stdout.write("FIRST\n")
    for _ in range(mib):
        sys.stdout.write(chunk)
    sys.stdout.write("LAST\n")
    sys.stdout.flush()
    print("on stderr", file=sys.stderr)
    return 6 + mib * len(chunk) + 5


def spew_then_hang(mib: int) -> None:
    """Print past any small cap, then hang until killed (a timeout)."""
    spew_fd(mib)
    time.sleep(600)


def slow_lines(count: int, pause: float) -> int:
    for i in range(count):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    print("done", flush=True)
    return count
