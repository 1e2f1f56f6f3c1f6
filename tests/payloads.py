"""Module-level payloads for tests that run real tasks (importable by worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def add(a: int, b: int = 0) -> int:
    return a + b


def record(path: str, name: str, seconds: float = 0.0) -> str:
    """Append 'start name t' and 'end name t' lines to ``path`` around a sleep."""
    with open(path, "a") as f:
        f.write(f"start {name} {time.time()}\n")
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"end {name} {time.time()}\n")
    return name


def fail_until(marker: str, succeed_on: int) -> int:
    """Raise until called for the ``succeed_on``-th time (counted in a file)."""
    path = Path(marker)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    with open(marker + ".times", "a") as f:
        f.write(f"{time.time()}\n")
    if n < succeed_on:
        raise ValueError(f"attempt {n} fails on purpose")
    return n


def boom(message: str = "boom") -> None:
    print("about to fail", flush=True)
    raise RuntimeError(message)


def exit_with(code: int) -> None:
    print(f"exiting with {code}", file=sys.stderr, flush=True)
    sys.exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), 9)


def out_of_memory() -> None:
    raise MemoryError("simulated allocation failure")


def spawn_children_and_sleep(pidfile: str, seconds: float = 60.0) -> None:
    """Start a bash grandchild tree and a python child, write all pids, then sleep."""
    bash = subprocess.Popen(["bash", "-c", "sleep 1000 & sleep 1000 & wait"])
    py = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    time.sleep(0.3)
    import psutil

    me = psutil.Process()
    pids = [me.pid] + [c.pid for c in me.children(recursive=True)]
    Path(pidfile).write_text(" ".join(map(str, pids)))
    assert bash.pid in pids and py.pid in pids
    time.sleep(seconds)


def visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def side_effect(path: str, name: str, seconds: float = 0.0) -> str:
    """Sleep, then append ``name`` to ``path`` as the very last step."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(name + "\n")
    return name


def chatty(lines: int, pause: float = 0.0) -> int:
    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    print("to stderr", file=sys.stderr, flush=True)
    return lines


def allocate(batch_size: int, per_item_mib: int = 1, hold: float = 1.5,
             then_kill: bool = False) -> int:
    """Touch ``batch_size * per_item_mib`` MiB, hold it, return the batch size (or die by
    SIGKILL while holding it when ``then_kill``)."""
    block = bytearray(b"\x01") * (batch_size * per_item_mib * 2**20)
    time.sleep(hold)
    if then_kill:
        os.kill(os.getpid(), 9)
    del block
    return batch_size


def torch_allocate(nbytes: int) -> int:
    """Ask torch's CPU allocator for ``nbytes`` (a real torch call; huge sizes fail)."""
    import torch

    return int(torch.empty(nbytes, dtype=torch.uint8).numel())
