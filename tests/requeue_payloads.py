"""Payloads for the Slurm preemption tests (module-level, so the jobs' workers import
them): they count in steps, keep their step in the task's folder and resume from it."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import steadyrun as run


def _starts(step: int) -> list[dict[str, Any]]:
    """Note this attempt's start (number, previous kind, first step, time, job)."""
    info = run.attempt()
    path = run.task_dir() / "starts.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    starts.append({"number": info.number, "previous": info.previous_kind, "step": step,
                   "at": time.time(), "job": os.environ.get("SLURM_JOB_ID")})
    path.write_text(json.dumps(starts))
    return starts


def count_saving_each_step(steps: int, dt: float) -> dict[str, Any]:
    """Counts to ``steps``, writing the step reached into the task folder after each one
    (atomically), and resumes from it."""
    state = run.task_dir() / "step.json"
    step = json.loads(state.read_text()) if state.exists() else 0
    _starts(step)
    while step < steps:
        time.sleep(dt)
        step += 1
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(step))
        os.replace(tmp, state)
    return {"value": step, "starts": json.loads((run.task_dir() / "starts.json").read_text())}


def count_saving_on_preempt(steps: int, dt: float) -> dict[str, Any]:
    """Counts to ``steps``; only ``run.on_preempt`` saves the step reached."""
    state = run.task_dir() / "step.json"
    box = {"step": json.loads(state.read_text()) if state.exists() else 0}
    _starts(box["step"])
    run.on_preempt(lambda: state.write_text(json.dumps(box["step"])))
    while box["step"] < steps:
        time.sleep(dt)
        box["step"] += 1
    return {"value": box["step"], "starts": json.loads(
        (run.task_dir() / "starts.json").read_text())}


class Counter:
    """A class payload in submitit's ``Checkpointable`` shape: ``checkpoint()`` returns
    the payload to run next (itself, with the step it reached)."""

    def __init__(self, steps: int, dt: float) -> None:
        self.steps, self.dt = steps, dt
        self.step = 0
        self.starts: list[int] = []
        self.checkpoints = 0

    def __call__(self) -> dict[str, Any]:
        self.starts.append(self.step)
        (run.task_dir() / "progress").write_text(str(self.step))
        while self.step < self.steps:
            time.sleep(self.dt)
            self.step += 1
            (run.task_dir() / "progress").write_text(str(self.step))
        return {"value": self.step, "starts": self.starts, "checkpoints": self.checkpoints}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Counter:
        self.checkpoints += 1
        return self
