"""Small helpers the engine uses when it records attempts and decisions."""

from __future__ import annotations

import json
from typing import Any

from steadyrun.executors.base import Executor
from steadyrun.task import Resources, Task


def describe_changes(changes: list[dict[str, Any]]) -> str:
    """``"batch_size: 64 -> 32 -> 16"`` for the degradations a task went through."""
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


def resources_dict(req: Resources, gpus: list[int]) -> str:
    """An attempt's ``resources`` column (JSON); the same request gives the same text,
    made once (a sweep's attempts mostly share one shape)."""
    key = (req.cpus, req.memory, tuple(gpus))
    text = _RESOURCES_JSON.get(key)
    if text is None:
        if len(_RESOURCES_JSON) > 1024:
            _RESOURCES_JSON.clear()
        text = _RESOURCES_JSON[key] = json.dumps(
            {"cpus": req.cpus, "memory": req.memory, "gpus": list(gpus)}, default=str)
    return text


_RESOURCES_JSON: dict[tuple[Any, ...], str] = {}


def unique(executors: list[Executor | None]) -> list[Executor]:
    seen: dict[int, Executor] = {}
    for ex in executors:
        if ex is not None and id(ex) not in seen:
            seen[id(ex)] = ex
    return list(seen.values())


def time_limit(task: Task) -> float | None:
    """The task's time limit in seconds, or None when it has none."""
    # Task parses its timeout to seconds when it is made; its field also admits "2h"
    return float(task.timeout) if task.timeout else None
