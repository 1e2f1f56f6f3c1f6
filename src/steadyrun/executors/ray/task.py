"""The body of one steadyrun attempt inside a Ray task, on whichever node Ray chose.

:func:`run_attempt` is what :class:`~steadyrun.executors.ray.executor.RayExecutor` submits. It
runs the payload through :func:`steadyrun.attempt.worker.execute` (the same worker every
executor uses) and returns a plain dict through the object store: how the attempt
ended, the pickled value or the error dict, the tails of stdout and stderr, and the
resource samples of the task's process tree. The controller's store may not be
reachable from the node, so nothing here writes to it, except in one case: when the
attempt folder is visible from the node (same machine or a shared filesystem, proved by
a nonce the executor wrote there at launch) the worker writes into it directly, so that
``steadyrun logs --follow`` sees output live and a killed attempt keeps its logs.

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

#: File the executor writes into the attempt folder at launch (Ray task id, nonce).
RAY_INFO_FILE = "ray.json"
_TMP_PREFIX = "steadyrun-ray-"
_MAX_SAMPLES = 3600  # about an hour at one a second; older ones are thinned out


def run_attempt(blob: bytes, info: dict[str, Any]) -> dict[str, Any]:
    """Run the pickled payload ``blob`` once; return what the controller needs.

    ``info`` holds ``attempt_id``, ``attempt_dir`` (a path on the controller's machine),
    ``nonce``, ``env`` (variables set for the duration), ``sys_path`` (the controller's,
    entries that exist here are appended), ``shared_fs`` (None: detect, False: never),
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
    sampler = _Sampler(float(info.get("sample_interval") or 0))
    try:
        sampler.start()
        try:
            import pickle

            payload = pickle.loads(blob)
        except BaseException as exc:  # a payload this node cannot load is the attempt's error
            result = worker.execute(_Reraise(exc), directory)
        else:
            result = worker.execute(payload, directory)
            del payload
        samples, peaks = sampler.stop()
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


def _shared_dir(info: dict[str, Any]) -> str | None:
    """The attempt folder when this node sees the controller's copy of it, else None."""
    if info.get("shared_fs") is False:
        return None
    directory = str(info.get("attempt_dir") or "")
    try:
        with open(os.path.join(directory, RAY_INFO_FILE), encoding="utf-8") as f:
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


def _sweep_stale_dirs() -> None:
    """Remove temporary folders of attempts whose Ray worker died (killed, cancelled)."""
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


class _Sampler:
    """Samples this process's tree every ``interval`` seconds in a thread, when
    :class:`steadyrun.observe.monitor.ProcessTreeSampler` is available."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.peaks: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: tuple[list[dict[str, Any]], dict[str, Any] | None] | None = None

    def start(self) -> None:
        if self.interval <= 0:
            return
        try:
            from steadyrun.observe.monitor import Peaks, ProcessTreeSampler
        except ImportError:
            return
        self.peaks = Peaks()
        self._thread = threading.Thread(target=self._run, args=(ProcessTreeSampler,),
                                        name="steadyrun-ray-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if self._result is None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5.0)
            peaks = self.peaks.to_dict() if self.peaks is not None and self.peaks.samples \
                else None
            self._result = (self.samples, peaks)
        return self._result

    def _run(self, sampler_cls: Any) -> None:
        sampler = sampler_cls()
        roots = {"attempt": os.getpid()}
        try:
            while True:
                try:
                    for s in sampler.sample(roots).values():
                        self.peaks.add(s)
                        self.samples.append(s.to_dict())
                except Exception:  # sampling is best effort; the attempt goes on
                    return
                if len(self.samples) > _MAX_SAMPLES:
                    del self.samples[1::2]  # keep the span, halve the density
                if self._stop.wait(self.interval):
                    break
            with contextlib.suppress(Exception):  # one last look at the end
                for s in sampler.sample(roots).values():
                    self.peaks.add(s)
                    self.samples.append(s.to_dict())
        finally:
            with contextlib.suppress(Exception):
                sampler.close()


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

