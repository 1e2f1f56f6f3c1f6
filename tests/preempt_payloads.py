"""Payloads that count in steps and survive being preempted (module-level, so the worker
can import them)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import steadyrun as run


def _log_start(step: int) -> None:
    """Append this attempt's start (number, previous kind, first step) to the task folder."""
    info = run.attempt()
    path = run.task_dir() / "starts.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    starts.append({"number": info.number, "preempted": info.preempted,
                   "previous": info.previous_kind, "step": step})
    path.write_text(json.dumps(starts))


def count_saving_on_preempt(steps: int, dt: float) -> dict[str, Any]:
    """Counts to ``steps``; ``on_preempt`` saves the step reached into the task folder and
    the next attempt resumes from it."""
    state = run.task_dir() / "step.json"
    box = {"step": json.loads(state.read_text()) if state.exists() else 0}
    _log_start(box["step"])
    run.on_preempt(lambda: state.write_text(json.dumps(box["step"])))
    while box["step"] < steps:
        time.sleep(dt)
        box["step"] += 1
    return {"value": box["step"], "starts": json.loads(
        (run.task_dir() / "starts.json").read_text())}


def count_polling(steps: int, dt: float) -> dict[str, Any]:
    """Counts to ``steps``, polling ``run.should_stop()``; saves and returns when told."""
    state = run.task_dir() / "step.json"
    step = json.loads(state.read_text()) if state.exists() else 0
    _log_start(step)
    while step < steps:
        if run.should_stop():
            state.write_text(json.dumps(step))
            return {"value": "stopped early: must not count as a result"}
        time.sleep(dt)
        step += 1
    return {"value": step, "starts": json.loads((run.task_dir() / "starts.json").read_text())}


class Counter:
    """A class payload in submitit's ``Checkpointable`` shape: ``checkpoint()`` returns the
    payload to run next (itself, with the step it reached)."""

    def __init__(self, steps: int, dt: float) -> None:
        self.steps, self.dt = steps, dt
        self.step = 0
        self.starts: list[int] = []
        self.checkpoints = 0

    def __call__(self) -> dict[str, Any]:
        self.starts.append(self.step)
        while self.step < self.steps:
            time.sleep(self.dt)
            self.step += 1
        return {"value": self.step, "starts": self.starts, "checkpoints": self.checkpoints,
                "pid": os.getpid()}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Counter:
        self.checkpoints += 1
        return self


def ignore_everything(marker: str) -> None:
    """Never stops by itself and saves nothing; notes that it ran."""
    with open(marker, "a") as f:
        f.write(f"{run.attempt().number}\n")
    while True:
        time.sleep(0.05)


def gang_count(steps: int, dt: float) -> dict[str, Any]:
    """Each rank counts; rank 0 saves its step when preempted and every rank resumes."""
    rank = int(os.environ.get("RANK", "0"))
    state = run.task_dir() / "step.json"
    box = {"step": json.loads(state.read_text()) if state.exists() else 0}
    first = box["step"]
    if rank == 0:
        run.on_preempt(lambda: state.write_text(json.dumps(box["step"])))
    while box["step"] < steps:
        time.sleep(dt)
        box["step"] += 1
    return {"value": box["step"], "first": first}
