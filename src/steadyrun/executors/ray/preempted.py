"""What the loss of a Ray node (or of the worker on it) means for the attempt it ran.

Ray reports a task whose node died as ``NodeDiedError`` (its raylet was killed or the
machine went away: about 2 s after a raylet's death on one machine; after the GCS health
check gives up, about 15 s by default, when the machine stops answering), a task whose
worker process died as ``WorkerCrashedError``, and an actor or owner that went away
as ``ActorDiedError``/``OwnerDiedError``: :func:`steadyrun.executors.ray.nodes.classify`
makes all of them ``lost``. :func:`node_loss` then decides, in one place for plain and
gang attempts:

- ``preempted`` when the attempt's node died (``NodeDiedError``; any loss of a gang's
  node) and it had saved a checkpoint the next attempt can resume from:
  ``checkpoint.pkl`` (a class payload's ``checkpoint()``) in the task's folder, or any
  file of the task's folder (:func:`steadyrun.task_dir`) written after the attempt was
  submitted; or, whatever was lost, when the worker itself recorded in ``error.json``
  that it was preempted (it saved on SIGUSR1, for example when its node was drained);
- ``lost`` otherwise (retried as ``Retry.on`` says, counted as a lost attempt).

The task folder looked at is the controller's (``<experiment>/tasks/<task>/work``): it is
the folder a Ray task writes into when its node sees the attempt folders (the same
machine, or a shared filesystem). A node without that view keeps the task's folder on
its own disk (``<tmp>/steadyrun-work-<uid>/...``), which dies with the node and which
the next attempt, on another node, could not read: such a loss stays ``lost``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from steadyrun.attempt.names import CHECKPOINT_FILE, ERROR_FILE

#: Entries of a task folder looked at for a file written during the attempt, at most:
#: a folder with more (a dataset's shards) is judged by what was seen within the bound.
SCAN_LIMIT = 5000


def node_loss(kind: str, message: str, attempt_dir: str | os.PathLike[str],
              since: float, node_died: bool = True) -> tuple[str, str]:
    """``(kind, message)`` of an attempt that Ray reported as ``kind``: a ``lost`` one
    becomes ``preempted`` when it had saved a checkpoint (see the module docs).
    ``since``: when the attempt was submitted (seconds since the epoch, this
    machine's clock). ``node_died=False`` (its worker crashed on a node that lives on,
    a segfault for example): only the worker's own record of a preemption counts, so a
    payload that keeps crashing is held to ``Retry.max_attempts``."""
    if kind != "lost":
        return kind, message
    evidence = checkpoint_evidence(attempt_dir, since, files=node_died)
    if evidence is None:
        return kind, message
    return "preempted", f"{message}; the attempt had saved a checkpoint ({evidence}), " \
                        "so the next attempt resumes from it"


def checkpoint_evidence(attempt_dir: str | os.PathLike[str], since: float,
                        files: bool = True) -> str | None:
    """What shows that the attempt in ``attempt_dir`` saved a checkpoint, in words, or
    None when nothing does (``files=False``: only the worker's own record counts)."""
    folder = Path(attempt_dir)
    recorded = _recorded_preemption(folder / ERROR_FILE)
    if recorded:
        return f"its worker recorded: {recorded}"
    if not files:
        return None
    from steadyrun.attempt.context import task_dir_for

    try:
        work = Path(task_dir_for(os.fspath(folder)))
    except OSError:
        return None
    if (work / CHECKPOINT_FILE).is_file():
        return f"{CHECKPOINT_FILE} in {work}"
    newest = _written_since(work, since)
    return None if newest is None else f"{newest} written in {work} during the attempt"


def _recorded_preemption(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("kind") == "preempted":
        return str(record.get("message") or "preempted")
    return None


def _written_since(root: Path, since: float) -> str | None:
    """The path (relative to ``root``) of a file modified at or after ``since``, found
    within :data:`SCAN_LIMIT` entries; None when there is none."""
    pending = [str(root)]
    seen = 0
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > SCAN_LIMIT:
                        return None
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False) and \
                                entry.stat(follow_symlinks=False).st_mtime >= since:
                            return os.path.relpath(entry.path, root)
                    except OSError:
                        continue
        except OSError:
            continue
    return None
