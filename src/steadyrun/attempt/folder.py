"""What an attempt leaves behind, read back: its log tail, its error record, and small
formatting helpers the engine uses when it records an outcome."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from steadyrun.executors.base import Executor
from steadyrun.task import Resources

LOG_TAIL_LINES = 20


def log_tail(attempt_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of an attempt's stdout and of its stderr, each under its
    name when both have something."""
    tails = []
    for name in ("stdout", "stderr"):
        try:
            with open(attempt_dir / f"{name}.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if text.strip():
            tails.append((name, "\n".join(text.rstrip().splitlines()[-lines:])))
    if len(tails) == 1:
        return tails[0][1]
    return "\n".join(f"[{name}]\n{text}" for name, text in tails)


def read_error(attempt_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((attempt_dir / "error.json").read_text())
    except (OSError, ValueError):
        return None


def describe_changes(changes: list[dict[str, Any]]) -> str:
    if not changes:
        return "no change could be made"
    steps: dict[str, list[Any]] = {}
    for change in changes:
        for key, value in change.items():
            if key == "before":
                continue
            seq = steps.setdefault(key, [value[0]])
            seq.append(value[1])
    return "; ".join(f"{k}: " + " -> ".join(str(v) for v in seq) for k, seq in steps.items())


def resources_dict(req: Resources, gpus: list[int]) -> dict[str, Any]:
    return {"cpus": req.cpus, "memory": req.memory, "gpus": gpus}


def unique(executors: list[Executor | None]) -> list[Executor]:
    seen: dict[int, Executor] = {}
    for ex in executors:
        if ex is not None and id(ex) not in seen:
            seen[id(ex)] = ex
    return list(seen.values())
