"""What one attempt's container is made of, and how a container of a dead controller is
found again.

A container runs ``python3 -m steadyrun.attempt.worker ATTEMPT_DIR`` in the user's image,
as the invoking user (``uid:gid``), with:

- the attempt folder bind-mounted read-write at the same path (the worker writes its
  logs, ``result.pkl`` or ``error.json`` there, owner-only);
- steadyrun's own package and the pure-Python modules the worker needs (cloudpickle,
  PyYAML, psutil) mounted read-only under :data:`LIB_DIR` and put on ``PYTHONPATH``:
  nothing is installed in the image, which only needs Python 3.10 or newer;
- the experiment's package (``packager=``), when there is one, mounted read-only at
  :data:`CODE_DIR`, first on the import path and the working folder.

Every container carries labels naming its experiment, task, attempt number and attempt
id (:data:`LABEL_ATTEMPT`), and the executor that made it; the attempt folder keeps
``docker.json`` (the daemon and container), so :func:`reclaim` finds it after a crash.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

#: Label prefix of every container steadyrun makes.
LABEL_PREFIX = "steadyrun."
LABEL_ATTEMPT = "steadyrun.attempt"
LABEL_EXPERIMENT = "steadyrun.experiment"
LABEL_TASK = "steadyrun.task"
LABEL_NUMBER = "steadyrun.number"
#: The executor instance that made the container (its events and listings filter on it).
LABEL_EXECUTOR = "steadyrun.executor"
#: Where steadyrun and the worker's modules are mounted inside the container.
LIB_DIR = "/opt/steadyrun/lib"
#: Where the experiment's package is mounted inside the container.
CODE_DIR = "/opt/steadyrun/code"
#: The attempt folder's record of its container (for recovery after a crash).
RECORD_FILE = "docker.json"
#: The daemon used when neither ``docker_host`` nor ``DOCKER_HOST`` names one.
DEFAULT_HOST = "unix:///var/run/docker.sock"
#: Modules the worker may import besides the standard library: steadyrun itself,
#: cloudpickle (pickled payloads and values), yaml (YAML payloads), psutil (ending what
#: a payload left running). Each is mounted when it is installed here.
WORKER_MODULES = ("steadyrun", "cloudpickle", "yaml", "psutil")


def resolve_host(docker_host: str | None) -> str:
    """The daemon's address: ``docker_host``, else ``$DOCKER_HOST``, else the default."""
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


@functools.lru_cache(maxsize=1)
def worker_mounts() -> dict[str, str]:
    """Host folder -> path inside the container, for each of :data:`WORKER_MODULES`
    found here (a compiled part built for another Python is skipped by the module
    itself: PyYAML falls back to pure Python). Looked up once per process."""
    import importlib.util

    mounts: dict[str, str] = {}
    for name in WORKER_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = os.path.realpath(next(iter(spec.submodule_search_locations)))
        mounts[folder] = f"{LIB_DIR}/{name}"
    return mounts


def labels(attempt_id: str, task: str, number: int, executor_token: str) -> dict[str, str]:
    """The labels of an attempt's container (attempt ids read ``EXP/TASK/N``)."""
    experiment = attempt_id.split("/", 1)[0] if "/" in attempt_id else ""
    return {LABEL_ATTEMPT: attempt_id, LABEL_EXPERIMENT: experiment, LABEL_TASK: task,
            LABEL_NUMBER: str(number), LABEL_EXECUTOR: executor_token}


def container_name(attempt_id: str, executor_token: str) -> str:
    """A readable, unique container name: ``steadyrun-EXP-TASK-N-TOKEN``."""
    text = re.sub(r"[^a-zA-Z0-9_.-]+", "-", attempt_id.replace("/", "-")).strip("-.")
    return f"steadyrun-{text[:80]}-{executor_token[:8]}"


def parse_volume(volume: str | tuple[str, ...]) -> tuple[str, str, str]:
    """``"HOST:CONTAINER[:ro|rw]"`` (or a tuple of those parts) as ``(host, container,
    mode)``; a ValueError naming the expected form otherwise."""
    parts = volume.split(":") if isinstance(volume, str) else [str(p) for p in volume]
    if len(parts) == 2:
        parts.append("rw")
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in ("ro", "rw"):
        raise ValueError(f"volume {volume!r}: give 'HOST_PATH:CONTAINER_PATH[:ro|rw]'")
    return parts[0], parts[1], parts[2]


def create(api: Any, opts: dict[str, Any], env: dict[str, str]) -> str:
    """Create (not start) the container ``opts`` describes (see
    ``DockerExecutor.container_options``) with environment ``env``; its id."""
    from docker.types import DeviceRequest, Mount

    host = dict(opts["host"])
    if "device_requests" in host:
        host["device_requests"] = [
            DeviceRequest(driver=r["Driver"], count=r["Count"], device_ids=r["DeviceIDs"],
                          capabilities=r["Capabilities"]) for r in host["device_requests"]]
    mounts = [Mount(target=dst, source=src, type="bind", read_only=ro)
              for src, dst, ro in opts["mounts"]]
    created = api.create_container(
        opts["image"], command=opts["command"], user=opts["user"], environment=env,
        labels=opts["labels"], name=opts["name"], working_dir=opts["working_dir"],
        host_config=api.create_host_config(mounts=mounts, **host))
    return str(created["Id"])


def keep_output(api: Any, container: str, directory: str, limit: int = 64 << 10) -> None:
    """When the worker wrote no ``stderr.log`` (it failed before it could: no Python,
    an import error), keep the last ``limit`` bytes of the container's own output there."""
    from steadyrun.attempt.names import STDERR_LOG

    path = os.path.join(directory, STDERR_LOG)
    try:
        if os.path.getsize(path) > 0:
            return
    except OSError:
        pass
    try:
        data = api.logs(container, stdout=True, stderr=True, tail=2000)
    except Exception:  # the container is gone: nothing to keep
        return
    if data:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, bytes(data)[-limit:])
        finally:
            os.close(fd)


def outcome(attempt_id: str, state: dict[str, Any], directory: str, container: str,
            memory_limit: int = 0, pid: int | None = None) -> Any:
    """The :class:`~steadyrun.executors.base.Outcome` of a container that ended on its
    own, from its ``State`` (``docker inspect``) and what the worker left in
    ``directory``: exit codes above 128 without an error record are deaths by signal,
    ``OOMKilled`` is the kernel's OOM killer (``oom``), a container that vanished is
    ``lost``."""
    from steadyrun.attempt import folder
    from steadyrun.attempt.outcome import outcome_of
    from steadyrun.executors.base import Outcome

    code = state.get("ExitCode")
    process = f"the container {container[:12]}"
    if code is None:
        message = f"{process} is gone: {state.get('Error') or 'removed from outside'}"
        return Outcome(attempt_id, "lost", message=message)
    error = folder.read_error(directory) if code != 0 else None
    exit_code, sig = code, None
    if error is None and isinstance(code, int) and code > 128:  # the worker died of a signal
        exit_code, sig = None, code - 128
    oom_kill = None
    if state.get("OOMKilled"):
        from steadyrun.units import format_size

        oom_kill = ("the kernel's OOM killer stopped the container at its memory limit"
                    + (f" of {format_size(memory_limit)}" if memory_limit else ""))
    return outcome_of(attempt_id, exit_code=exit_code, signal=sig, error=error,
                      has_result=folder.has_result(directory), pid=pid, process=process,
                      oom_kill=oom_kill)


def write_record(attempt_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Keep ``record`` (daemon, container id and name, attempt id) in the attempt
    folder, owner-only and atomically."""
    from steadyrun.attempt.folder import atomic_write

    atomic_write(os.path.join(os.fspath(attempt_dir), RECORD_FILE),
                 json.dumps(record, indent=1).encode())


def read_record(attempt_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The attempt folder's container record, or None (not a Docker attempt, unreadable)."""
    try:
        data = json.loads(Path(attempt_dir, RECORD_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("attempt_id") else None


def reclaim(attempt_dir: Path, grace: float | None = None) -> str | None:
    """Stop and remove the container of an attempt whose controller died, found by its
    attempt label on the daemon its record names; wait until it is gone. Returns what
    was done, or None when the attempt ran in no container (or none is left). A daemon
    that cannot be reached is reported in the returned text: the container may still
    run there."""
    record = read_record(attempt_dir)
    if record is None:
        return None
    host = str(record.get("docker_host") or DEFAULT_HOST)
    attempt_id = str(record["attempt_id"])
    if grace is None:
        grace = float(record.get("grace_period", 5.0))
    try:
        import docker
    except ImportError:
        return (f"its container could not be stopped: the docker package is not installed "
                f"(pip install 'steadyrun[docker]'); check the daemon at {host}")
    try:
        api = docker.APIClient(base_url=host, version="auto", timeout=30 + grace)
    except Exception as e:  # a daemon that is gone: nothing of the attempt runs there
        return f"could not reach the Docker daemon at {host} to stop its container: {e}"
    try:
        found = api.containers(all=True, filters={"label": f"{LABEL_ATTEMPT}={attempt_id}"})
        stopped = []
        for c in found:
            cid = c["Id"]
            if c.get("State") == "running":
                stop_container(api, cid, grace)
                stopped.append(cid[:12])
            api.remove_container(cid, force=True)
    except Exception as e:
        return f"could not stop its container on {host}: {type(e).__name__}: {e}"
    finally:
        api.close()
    if stopped:
        return f"stopped its leftover container {', '.join(stopped)}"
    return None


def stop_container(api: Any, container: str, grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds, then SIGKILL; returns once it has exited. A
    container that is already gone or stopped is left as it is."""
    from docker.errors import APIError, NotFound

    try:
        api.kill(container, signal="SIGTERM")
    except NotFound:
        return
    except APIError as e:  # "is not running": it ended meanwhile
        if e.status_code == 409:
            return
        raise
    if _exited_within(api, container, grace):
        return
    try:
        api.kill(container, signal="SIGKILL")
    except (NotFound, APIError):
        return
    _exited_within(api, container, 30.0)


def _exited_within(api: Any, container: str, seconds: float) -> bool:
    import requests
    from docker.errors import NotFound

    try:
        api.wait(container, timeout=max(0.1, seconds))
        return True
    except NotFound:
        return True
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        return False
