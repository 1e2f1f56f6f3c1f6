"""Payloads that report what an attempt knows about its task (module-level, so every
strategy can import them)."""

from __future__ import annotations

import os
import sys

import steadyrun as run


def where() -> dict[str, str | None]:
    """The task folder as the payload sees it, and the variables of its environment."""
    return {"task_dir": str(run.task_dir()),
            "env": os.environ.get("STEADYRUN_TASK_DIR"),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "mkl": os.environ.get("MKL_NUM_THREADS"),
            "openblas": os.environ.get("OPENBLAS_NUM_THREADS")}


def checkpoint_then_fail_once() -> dict[str, str]:
    """Fails on its first attempt after leaving a file in the task folder; the next
    attempt finds it."""
    folder = run.task_dir()
    marker = folder / "checkpoint"
    if not marker.exists():
        marker.write_text(str(folder))
        raise RuntimeError("first attempt fails after its checkpoint")
    return {"task_dir": str(folder), "checkpoint": marker.read_text()}


def leave_checkpoint(flag: str) -> str:
    """Writes a checkpoint; fails while ``flag`` exists (for a resume after fixing it)."""
    folder = run.task_dir()
    (folder / "progress").write_text("half")
    if os.path.exists(flag):
        raise RuntimeError("not yet")
    return (folder / "progress").read_text() + ":" + str(folder)


def torch_threads() -> dict[str, object]:
    """torch's thread count, torch being imported by an earlier attempt in this process."""
    torch = sys.modules["torch"]
    return {"threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


def torch_threads_after_import() -> dict[str, object]:
    """Imports torch (which reads ``OMP_NUM_THREADS``) and says what it chose."""
    import torch

    return {"threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}
