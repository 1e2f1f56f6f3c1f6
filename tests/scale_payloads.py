"""Payloads for the tests of big experiments' storage (importable by workers)."""

from __future__ import annotations

import steadyrun as run


def small(i: int) -> int:
    return i * 2


def big(i: int) -> str:
    return "x" * (8192 + i)


def loud(i: int) -> int:
    print(f"line from {i}")
    return i


def saves(i: int) -> str:
    path = run.task_dir() / "state.txt"
    path.write_text(str(i))
    return str(path)


def fails(i: int) -> int:
    raise ValueError(f"bad {i}")


def plant_link(target: str, task: str) -> None:
    """Put a link where ``task``'s folder will be made (an attacker's move)."""
    import os

    os.symlink(target, run.task_dir().parent.parent / task)
