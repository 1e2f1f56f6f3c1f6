"""Where a Slurm executor's submission folders go: one per submitted job (its
``job.sh``, ``index.json`` and a link, or a copy, per attempt), here and on the
cluster."""

from __future__ import annotations

import os
import posixpath
import time
from pathlib import Path
from typing import Any

from steadyrun.errors import ExecutorError


def local_base(tunnel: Any, attempt_dir: str | os.PathLike[str]) -> Path:
    """Where submission folders go here: the tunnel's ``job_dir`` (local) or ``slurm/``
    in the experiment's folder of ``attempt_dir``."""
    first = Path(os.path.abspath(attempt_dir))
    experiment = first.parents[2] if first.parent.parent.name == "tasks" else first.parent
    if tunnel.local and tunnel.job_dir:
        return Path(tunnel.job_dir) / experiment.name
    return experiment / "slurm"


def remote_base(tunnel: Any, attempt_dir: str | os.PathLike[str]) -> str:
    """Where submission folders go on the cluster (through a tunnel's ``job_dir``)."""
    return posixpath.join(str(tunnel.job_dir), local_base(tunnel, attempt_dir).parent.name)


def new_submission_dir(tunnel: Any, attempt_dir: str | os.PathLike[str]) -> Path:
    """A new owner-only submission folder here, named by the time; raises
    :class:`~steadyrun.errors.ExecutorError` when none can be made."""
    base = local_base(tunnel, attempt_dir)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100000):
        path = base / f"{stamp}-{n}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path
    raise ExecutorError(f"cannot make a submission folder in {base}")


__all__ = ["local_base", "new_submission_dir", "remote_base"]
