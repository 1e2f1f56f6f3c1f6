"""The body of one steadyrun attempt inside a Ray task, on whichever node Ray chose.

:func:`run_attempt` is what :class:`~steadyrun.executors.ray.executor.RayExecutor` submits. It
runs the payload through :func:`steadyrun.attempt.worker.execute` (the same worker every
executor uses) and returns a plain dict through the object store: how the attempt
ended, the pickled value or the error dict, the tails of stdout and stderr, and the
resource samples of the task's process tree. The controller's store may not be
reachable from the node, so nothing here writes to it, except in one case: when the
attempt folder is visible from the node (same machine or a shared filesystem, proved by
the nonce the executor wrote into the experiment folder's ``ray-probe.json``) the
worker writes into it directly, so that ``steadyrun logs --follow`` sees output live
and a killed attempt keeps its logs. For the duration of the attempt, SIGUSR1 asks it
to stop early and save (:mod:`steadyrun.executors.ray.drain`).

This module imports nothing heavy at import time: Ray workers import it to run a task.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from steadyrun.attempt.context import TASK_DIR_ENV
from steadyrun.attempt.folder import STDERR_LOG, STDOUT_LOG
from steadyrun.executors.ray import drain
from steadyrun.executors.ray.sampling import AttemptSampler

#: File the executor writes into the attempt folder at launch (Ray task id, nonce).
RAY_INFO_FILE = "ray.json"
#: File in the experiment folder whose nonce tells a node that it sees the folder.
PROBE_FILE = "ray-probe.json"
_TMP_PREFIX = "steadyrun-ray-"


def run_attempt(blob: bytes, info: dict[str, Any]) -> dict[str, Any]:
    """Run the pickled payload ``blob`` once; return what the controller needs.

    ``info`` holds ``attempt_id``, ``attempt_dir`` (a path on the controller's machine),
    ``nonce`` and ``probe`` (the file that holds the nonce), ``env`` (variables set for
    the duration), ``sys_path`` (the controller's, entries that exist here are
    appended), ``shared_fs`` (None: detect, False: never),
    ``log_limit`` (bytes kept of each log, the tail) and ``sample_interval`` (seconds, 0
    for no sampling). Never raises for the payload's own failures.
    """
    from steadyrun.attempt import worker

    started = time.time()
    _extend_sys_path(info.get("sys_path") or ())
    shared = _shared_dir(info)
    directory = shared or tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
    if shared is None:
        _sweep_stale_dirs()
    env = dict(info.get("env") or {})
    if shared is None:  # the store is out of sight: the task's folder is on this node
        env[TASK_DIR_ENV] = _node_task_dir(env)
    saved_env = _set_env(env)
    sampler = AttemptSampler(float(info.get("sample_interval") or 0), drain.DrainWatch())
    previous: Any = None
    try:
        try:
            import pickle

            payload = pickle.loads(blob)
        except BaseException as exc:  # a payload this node cannot load is the attempt's error
            sampler.start()
            result = worker.execute(_Reraise(exc), directory)
        else:
            payload, previous = drain.enter(payload, directory)  # SIGUSR1, checkpoint
            sampler.start()
            result = worker.execute(payload, directory)
            del payload
        samples, peaks = sampler.stop()  # before leave(): no drain signal after it
        drain.leave(previous)
        previous = None
        out: dict[str, Any] = {
            "kind": result.kind, "error": result.error, "exit_code": result.exit_code,
            "value_bytes": result.value_bytes, "shared": shared is not None,
            "host": _hostname(), "node_ip": _node_ip(), "pid": os.getpid(),
            "started": started, "ended": time.time(), "samples": samples, "peaks": peaks}
        if shared is None:
            limit = int(info.get("log_limit") or 0)
            for name, file in (("stdout", STDOUT_LOG), ("stderr", STDERR_LOG)):
                out[name], out[f"{name}_size"] = _tail(os.path.join(directory, file), limit)
        elif result.value_bytes is not None and len(result.value_bytes) > (1 << 20):
            out["value_bytes"] = None  # the controller reads result.pkl in the shared folder
        return out
    finally:
        sampler.stop()
        if previous is not None:
            drain.leave(previous)
        _set_env(saved_env)
        if shared is None:
            shutil.rmtree(directory, ignore_errors=True)


# --- helpers ------------------------------------------------------------------------------


class _Reraise:
    """A payload that raises ``exc``: lets the worker record a load failure as it records
    any other failure (error.json, traceback on stderr)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self) -> None:
        raise self.exc


def experiment_dir_of(attempt_dir: str) -> str | None:
    """The experiment folder of an attempt folder of the store's layout
    (``<experiment>/tasks/<task>/<n>``); None for a folder of another shape."""
    task, number = os.path.split(attempt_dir.rstrip(os.sep))
    tasks = os.path.dirname(task)
    if not number.isdigit() or os.path.basename(tasks) != "tasks":
        return None
    return os.path.dirname(tasks)


def write_probe(experiment_dir: str) -> tuple[str, str]:
    """``(path, nonce)`` of the experiment folder's probe file, which a node reads to
    tell whether it sees the controller's folders: the nonce already there, or a new
    one written (owner-only) when there is none."""
    import secrets

    path = os.path.join(experiment_dir, PROBE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            nonce = json.load(f).get("nonce")
        if isinstance(nonce, str) and len(nonce) >= 16:
            return path, nonce
    except (OSError, ValueError, AttributeError):
        pass
    nonce = secrets.token_hex(8)
    write_json(Path(path), {"nonce": nonce})
    return path, nonce


def _shared_dir(info: dict[str, Any]) -> str | None:
    """The attempt folder when this node sees the controller's copy of it (the probe
    file there holds the nonce the controller gave), else None."""
    if info.get("shared_fs") is False:
        return None
    directory = str(info.get("attempt_dir") or "")
    probe = str(info.get("probe") or os.path.join(directory, RAY_INFO_FILE))
    try:
        with open(probe, encoding="utf-8") as f:
            seen = json.load(f).get("nonce")
    except (OSError, ValueError, AttributeError):
        return None
    return directory if seen and seen == info.get("nonce") else None


def _node_task_dir(env: dict[str, Any]) -> str:
    """A task folder on this node for attempts that cannot see the store: the same for
    every attempt of the task that runs here (another node has its own)."""
    from steadyrun.store.files import task_dir_name

    return os.path.join(tempfile.gettempdir(), f"steadyrun-work-{os.getuid()}",
                        task_dir_name(str(env.get("STEADYRUN_EXPERIMENT") or "experiment")),
                        task_dir_name(str(env.get("STEADYRUN_TASK") or "task")))


_SWEEP_EVERY = 60.0  # seconds between two sweeps of the temporary folder, per worker
_swept_at: list[float] = []


def _sweep_stale_dirs() -> None:
    """Remove temporary folders of attempts whose Ray worker died (killed, cancelled);
    at most once a minute per worker process (it lists the whole temporary folder)."""
    now = time.monotonic()
    if _swept_at and now - _swept_at[0] < _SWEEP_EVERY:
        return
    _swept_at[:] = [now]
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            if not name.startswith(_TMP_PREFIX):
                continue
            pid_text = name[len(_TMP_PREFIX):].split("-", 1)[0]
            if pid_text.isdigit() and not _alive(int(pid_text)):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _extend_sys_path(entries: Any) -> None:
    for entry in entries:
        if entry and entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)


def _set_env(env: dict[str, str | None]) -> dict[str, str | None]:
    """Apply ``env`` (None deletes); return what restores the previous values (a Ray
    worker process runs many tasks one after another)."""
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = str(v)
    return saved


def _tail(path: str, limit: int) -> tuple[bytes, int]:
    """The last ``limit`` bytes of ``path`` (all when ``limit`` is 0) and its full size."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if limit and size > limit:
                f.seek(size - limit)
            return f.read(), size
    except OSError:
        return b"", 0


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _node_ip() -> str | None:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (tests call run_attempt directly)
        return None


# --- files on the controller's side (used by the executor) ----------------------------


def write_log(path: Path, data: bytes, size: int) -> None:
    """Write a log tail; say first how much of the log the node dropped."""
    from steadyrun.units import format_size

    if size > len(data):
        dropped = size - len(data)
        data = (f"[steadyrun] the first {format_size(dropped)} of this log were dropped on "
                f"the Ray node; the last {format_size(len(data))} follow\n").encode() + data
    atomic_write(path, data)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, default=str).encode())  # compact: C encoder

