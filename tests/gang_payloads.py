"""Payloads of the gang observation tests: ranks that print and use some memory."""

from __future__ import annotations

import os
import sys
import time


def chatty_rank(seconds: float = 2.0) -> int:
    """Print a line naming this rank on stdout and one on stderr, hold 20 MiB for
    ``seconds`` (so the node agent samples it), and return the rank."""
    rank = int(os.environ["RANK"])
    print(f"rank {rank} says hi", flush=True)
    print(f"rank {rank} warns", file=sys.stderr, flush=True)
    block = bytearray(20 << 20)
    block[:: 4096] = b"x" * len(block[:: 4096])
    time.sleep(seconds)
    print(f"rank {rank} done", flush=True)
    return rank
