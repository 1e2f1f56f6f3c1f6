"""Payloads for the memory cgroup tests: they allocate real memory, page by page."""

from __future__ import annotations

import time

MiB = 2**20

#: A Script body: touch ``$1`` MiB in 10 MiB steps, then hold it.
ALLOCATE_SCRIPT = """
import sys, time
blocks = []
for _ in range(int(sys.argv[1]) // 10):
    blocks.append(bytearray(b"\\x01") * (10 * 2**20))
    time.sleep(0.01)
time.sleep(0.5)
print("allocated", len(blocks) * 10, "MiB")
"""


def allocate_in_steps(total_mib: int, step_mib: int = 10, pause: float = 0.01,
                      hold: float = 0.5) -> int:
    """Touch ``total_mib`` MiB, ``step_mib`` at a time, hold it; return the MiB touched."""
    blocks = []
    for _ in range(total_mib // step_mib):
        blocks.append(bytearray(b"\x01") * (step_mib * MiB))
        time.sleep(pause)
    time.sleep(hold)
    return len(blocks) * step_mib


def allocate_batch(batch_size: int, hold: float = 0.5) -> int:
    """Touch ``batch_size`` MiB at once (one item = 1 MiB); return the batch size."""
    block = bytearray(b"\x01") * (batch_size * MiB)
    time.sleep(hold)
    del block
    return batch_size


def adaptive_batch(requested: int, hold: float = 0.3) -> int:
    """Size a batch (1 MiB per item) with ``adaptive_batch_size`` under 80% of the memory
    this process may use, touch it, return the size chosen."""
    import steadyrun as run

    size = run.adaptive_batch_size(requested, memory_threshold=0.8, per_item_bytes="1MiB")
    return allocate_batch(size, hold=hold)
