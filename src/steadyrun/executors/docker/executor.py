"""Run each attempt in a Docker container of its own, through the Docker Engine API.

``DockerExecutor(container_image, ...)`` starts one container per attempt on the daemon
named by ``docker_host`` (else ``$DOCKER_HOST``, else the local socket), with the
``docker`` SDK (``pip install 'steadyrun[docker]'``). What the container is made of
(mounts, user, labels) is in :mod:`steadyrun.executors.docker.containers`.

- Resources: ``cpus`` becomes the container's CPU quota (``--cpus``), ``memory`` its
  hard memory limit (``--memory``, no swap beyond it), GPUs a device request (the
  indices the engine assigned, else ``num_gpus``; ``runtime="nvidia"`` where the daemon
  needs it). A container the kernel stopped at its limit (``OOMKilled``) is ``oom``.
- Admission knows the daemon's CPUs and memory (``docker info``), unless ``cpus`` /
  ``memory`` / ``gpus`` replace them.
- Timeouts and cancel send SIGTERM to the container, then SIGKILL after
  ``grace_period`` seconds; the worker inside ends its payload's processes first.
- Logs: the worker writes ``stdout.log``/``stderr.log`` into the attempt folder (bind
  mounted) as it runs, so ``steadyrun logs --follow`` works as for local attempts;
  when the worker could not start at all, the container's own output is kept in
  ``stderr.log``.
- Ended attempts are seen through the daemon's event stream (one connection), with one
  listing of ended containers every :data:`POLL_INTERVAL` seconds as a safety net.
- After a controller crash, ``resume`` finds an attempt's container by its label and
  stops it before the attempt runs again: an attempt never runs twice.
- :meth:`DockerExecutor.close` stops and removes every container this executor made.

The image needs Python 3.10 or newer as ``python3`` (or ``python=``); nothing is
installed in it. Payloads are written as YAML where possible (readable by any Python),
as a cloudpickle otherwise (then the image's Python should match the controller's).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from steadyrun.attempt import folder, worker
from steadyrun.attempt.outcome import outcome_of
from steadyrun.config import secrets
from steadyrun.errors import ExecutorError
from steadyrun.executors.base import AttemptSpec, Capacity, ErrorInfo, Executor, Outcome
from steadyrun.executors.docker import containers as ct

#: Seconds between listings of ended containers (the event stream is the fast path).
POLL_INTERVAL = 2.0


class DockerExecutor(Executor):
    """One Docker container per attempt, in ``container_image``.

    ``volumes``: extra bind mounts, ``"HOST:CONTAINER[:ro|rw]"``. ``env_vars``: variables
    of every container (values or ``run.Secret``; the store keeps names only).
    ``num_gpus``: GPUs of every container when the task asked for none (``-1``: all).
    ``shm_size`` (``"8g"``), ``ipc_mode`` (``"host"``), ``network`` (a network name,
    ``"host"``, ``"none"``; default: the daemon's), ``runtime`` (``"nvidia"``):
    passed to the daemon as they are. ``packager``: the experiment's code, mounted
    read-only, first on the import path and the working folder. ``cpus``/``memory``/
    ``gpus`` replace the capacity the daemon reports. ``max_workers`` bounds the
    containers running at once. ``grace_period``: seconds between SIGTERM and SIGKILL.
    ``docker_host``: the daemon (``unix:///path``, ``tcp://host:port``). ``python``:
    the interpreter inside the image.

    Raises :class:`~steadyrun.errors.ExecutorError` for a bad option now, and when the
    daemon cannot be reached or the image is missing at the first launch.
    """

    name = "docker"

    def __init__(self, container_image: str, volumes: Sequence[str] = (),
                 env_vars: Mapping[str, Any] | None = None, num_gpus: int = 0,
                 shm_size: str | int | None = None, ipc_mode: str | None = None,
                 network: str | None = None, packager: Any = None, runtime: str | None = None,
                 cpus: float | None = None, memory: int | str | None = None,
                 gpus: int | list[int] | None = None, max_workers: int | None = None,
                 grace_period: float = 5.0, docker_host: str | None = None,
                 python: str = "python3") -> None:
        if not isinstance(container_image, str) or not container_image.strip():
            raise ExecutorError(
                f"DockerExecutor(container_image={container_image!r}): give an image name "
                "such as 'python:3.11-slim'")
        if isinstance(volumes, str):
            volumes = [volumes]
        try:
            parsed = [ct.parse_volume(v) for v in volumes]
        except ValueError as e:
            raise ExecutorError(f"DockerExecutor(volumes=...): {e}") from None
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < -1:
            raise ExecutorError(
                f"DockerExecutor(num_gpus={num_gpus!r}): give a whole number >= 0, or -1 "
                "for every GPU")
        if max_workers is not None and (isinstance(max_workers, bool)
                                        or not isinstance(max_workers, int) or max_workers < 1):
            raise ExecutorError(
                f"DockerExecutor(max_workers={max_workers!r}): give a whole number >= 1 or None")
        if isinstance(grace_period, bool) or not isinstance(grace_period, int | float) or (
                grace_period < 0):
            raise ExecutorError(f"DockerExecutor(grace_period={grace_period!r}): give seconds >= 0")
        from steadyrun.packaging.base import PackagingError, packager_from_config

        try:
            self.packager = packager_from_config(packager, "DockerExecutor(packager=...)")
        except PackagingError as e:
            raise ExecutorError(str(e)) from None
        self.container_image = container_image
        self.volumes = [f"{h}:{c}:{m}" for h, c, m in parsed]
        self.env = secrets.check_env(env_vars, "DockerExecutor")
        self.num_gpus = num_gpus
        self.shm_size, self.ipc_mode, self.network, self.runtime = (
            shm_size, ipc_mode, network, runtime)
        self.cpus, self.memory, self.gpus = cpus, memory, gpus
        self.max_workers = max_workers
        self.grace_period = float(grace_period)
        self.docker_host = docker_host
        self.python = python
        self._token = uuid.uuid4().hex[:12]
        self._api: Any = None
        self._events: Any = None
        self._events_thread: threading.Thread | None = None
        self._events_ok = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running: dict[str, _Attempt] = {}  # attempt id -> its container
        self._by_container: dict[str, str] = {}  # container id -> attempt id
        self._died: set[str] = set()
        self._done: deque[Outcome] = deque()
        self._pending: deque[AttemptSpec] = deque()
        self._killers: list[threading.Thread] = []
        self._last_poll = 0.0
        self._capacity: Capacity | None = None
        self._pool: Any = None  # starts and removals: a few hundred milliseconds each
        self._image_checked = False

    @property
    def env_vars(self) -> dict[str, Any]:
        """The variables every container gets (secrets as :class:`~steadyrun.Secret`)."""
        return dict(self.env)

    # -- the contract ------------------------------------------------------------------

    def open(self) -> None:
        """Connect to the daemon and start listening for containers that end."""
        if self._api is not None:
            return
        self._api = self._client()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="steadyrun-docker")
        try:
            self._events = self._client().events(decode=True, filters={
                "type": "container", "event": ["die"],
                "label": [f"{ct.LABEL_EXECUTOR}={self._token}"]})
        except Exception:  # no event stream: every wait() lists ended containers instead
            self._events = None
        else:
            self._events_ok = True
            self._events_thread = threading.Thread(target=self._watch_events, daemon=True,
                                                   name="steadyrun-docker-events")
            self._events_thread.start()

    def close(self) -> None:
        """Stop (SIGTERM, grace, SIGKILL) and remove every container this executor made.
        Idempotent."""
        api, self._api = self._api, None
        if api is None:
            return
        self._pending.clear()
        with self._lock:
            running = list(self._running.values())
            for att in running:
                att.stop_kind = att.stop_kind or "cancelled"
        for att in running:  # a container being started is stopped once it runs
            if att.started is not None:
                with contextlib.suppress(Exception):
                    att.started.result()
        threads = [threading.Thread(target=ct.stop_container,
                                    args=(api, a.container, self.grace_period), daemon=True)
                   for a in running if a.container]
        for t in threads:
            t.start()
        for t in [*threads, *self._killers]:
            t.join(self.grace_period + 35)
        self._pool.shutdown(wait=True)
        with contextlib.suppress(Exception):
            for c in api.containers(all=True, filters={
                    "label": f"{ct.LABEL_EXECUTOR}={self._token}"}):
                with contextlib.suppress(Exception):
                    api.remove_container(c["Id"], force=True)
        events, self._events = self._events, None
        if events is not None:
            with contextlib.suppress(Exception):
                events.close()
        if self._events_thread is not None:
            self._events_thread.join(5)
        with self._lock:
            self._running.clear()
            self._by_container.clear()
        with contextlib.suppress(Exception):
            api.close()

    def capacity(self) -> Capacity:
        """The daemon's CPUs and memory (``docker info``), with ``cpus``/``memory``/
        ``gpus`` applied; GPUs are this machine's when the daemon is local."""
        if self._capacity is None:
            from steadyrun.units import parse_size

            cpus: float | None = self.cpus
            memory = parse_size(self.memory, what="DockerExecutor(memory=...)")
            if cpus is None or memory is None:
                info = self._info()
                cpus = float(info.get("NCPU") or 1) if cpus is None else cpus
                memory = int(info.get("MemTotal") or 0) if memory is None else memory
            self._capacity = Capacity(cpus=float(cpus), memory=int(memory), gpus=self._gpus())
        return self._capacity

    def launch(self, spec: AttemptSpec) -> None:
        """Start the attempt's container (or queue it past ``max_workers``). Raises
        ExecutorError when it cannot: its folder is missing, its payload cannot be
        written, the daemon refuses (no such image, a bad option)."""
        if not os.path.isdir(spec.attempt_dir):
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: its folder "
                f"{os.fspath(spec.attempt_dir)!r} does not exist")
        self.open()
        if self.free_slots() == 0:  # the engine admits no more than free_slots(): defensive
            self._pending.append(spec)
        else:
            self._start(spec)

    def wait(self, timeout: float) -> list[Outcome]:
        outs: list[Outcome] = []
        deadline = time.monotonic() + max(0.0, float(timeout))
        while True:
            self._wake.clear()
            with self._lock:
                while self._done:
                    outs.append(self._done.popleft())
                died, self._died = self._died, set()
            now = time.monotonic()
            if self._api is not None and (not self._events_ok
                                          or now - self._last_poll >= POLL_INTERVAL):
                died |= self._list_ended()
                self._last_poll = now
            for cid in died:
                out = self._finish(cid)
                if out is not None:
                    outs.append(out)
            outs.extend(self._start_pending())
            remaining = deadline - time.monotonic()
            if outs or remaining <= 0:
                return outs
            self._wake.wait(min(remaining, POLL_INTERVAL if self._events_ok else 0.2))

    def stop(self, attempt_id: str, kind: str) -> None:
        """SIGTERM to the attempt's container, SIGKILL after ``grace_period``; its
        outcome then arrives with ``kind``. Does nothing for an attempt that ended."""
        for spec in self._pending:
            if spec.attempt_id == attempt_id:
                self._pending.remove(spec)
                with self._lock:
                    self._done.append(outcome_of(attempt_id, stopped=kind,
                                                 detail="before it started"))
                self._wake.set()
                return
        with self._lock:
            att = self._running.get(attempt_id)
            if att is None or att.stop_kind is not None:
                return
            att.stop_kind = kind
        t = threading.Thread(target=self._kill, args=(att,), daemon=True, name="steadyrun-stop")
        t.start()
        self._killers = [k for k in self._killers if k.is_alive()] + [t]

    def pids(self) -> dict[str, int]:
        """The host pid of each running container's worker (for monitoring)."""
        with self._lock:
            return {aid: a.pid for aid, a in self._running.items() if a.pid}

    def free_slots(self) -> int | None:
        if self.max_workers is None:
            return None
        with self._lock:
            running = len(self._running)
        return max(0, self.max_workers - running - len(self._pending))

    def describe_attempt(self, attempt_id: str) -> str | None:
        att = self._running.get(attempt_id)
        return None if att is None else f"container {att.container[:12]}"

    def to_config(self) -> dict[str, Any]:
        from steadyrun.packaging.base import packager_config

        return {"type": "DockerExecutor", "container_image": self.container_image,
                "volumes": list(self.volumes), "env_vars": secrets.env_to_config(self.env),
                "num_gpus": self.num_gpus, "shm_size": self.shm_size,
                "ipc_mode": self.ipc_mode, "network": self.network,
                "packager": packager_config(self.packager), "runtime": self.runtime,
                "cpus": self.cpus, "memory": self.memory, "gpus": self.gpus,
                "max_workers": self.max_workers, "grace_period": self.grace_period,
                "docker_host": self.docker_host, "python": self.python}

    @classmethod
    def reclaim(cls, attempt_dir: Path) -> str | None:
        """Stop and remove the container an attempt of a dead controller still has
        (found by its label on the daemon its folder records); waits until it exited."""
        return ct.reclaim(attempt_dir)  # a local worker of it is LocalExecutor's to stop

    # -- what a container is made of ---------------------------------------------------

    def container_options(self, spec: AttemptSpec, package_dir: str | None = None, *,
                          resolve: bool = False) -> dict[str, Any]:
        """The container :meth:`launch` would create for ``spec``, as plain data:
        ``image``, ``command``, ``user``, ``environment`` (secrets withheld), ``labels``,
        ``name``, ``working_dir``, ``mounts`` (``(source, target, read_only)``) and the
        ``host`` options (``nano_cpus``, ``mem_limit``, ``device_requests``...).
        ``resolve=True`` reads the secrets of ``env_vars`` now (what :meth:`launch`
        gives the container); raises :class:`~steadyrun.errors.MissingSecret`."""
        directory = os.path.abspath(os.fspath(spec.attempt_dir))
        mounts = [(directory, directory, False)]
        mounts += [(src, dst, True) for src, dst in ct.worker_mounts().items()]
        if package_dir is not None:
            mounts.append((package_dir, ct.CODE_DIR, True))
        for volume in self.volumes:
            src, dst, mode = ct.parse_volume(volume)
            mounts.append((os.path.abspath(src), dst, mode == "ro"))
        env: dict[str, str] = (
            secrets.resolve_env(self.env, "DockerExecutor(env_vars=...)") if resolve else
            {k: "" if isinstance(v, secrets.Secret) else v for k, v in self.env.items()})
        env.update({str(k): str(v) for k, v in spec.env.items()})
        user_path = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (ct.CODE_DIR if package_dir else "", ct.LIB_DIR, user_path) if p)
        env[folder.ATTEMPT_ID_ENV] = spec.attempt_id
        env[worker.GRACE_ENV] = str(self.grace_period)
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        env.setdefault("HOME", "/tmp")
        host: dict[str, Any] = {"shm_size": self.shm_size, "ipc_mode": self.ipc_mode,
                                "network_mode": self.network, "runtime": self.runtime}
        req = spec.resources
        if req.cpus:
            host["nano_cpus"] = int(round(req.cpus * 1e9))
        if req.memory_bytes:
            host["mem_limit"] = host["memswap_limit"] = req.memory_bytes
        if spec.gpus:
            host["device_requests"] = [{"Driver": "", "Count": 0, "Capabilities": [["gpu"]],
                                        "DeviceIDs": [str(g) for g in spec.gpus]}]
        elif self.num_gpus:
            host["device_requests"] = [{"Driver": "", "Count": self.num_gpus,
                                        "Capabilities": [["gpu"]], "DeviceIDs": None}]
        return {"image": self.container_image,
                "command": [self.python, "-m", "steadyrun.attempt.worker", directory],
                "user": f"{os.getuid()}:{os.getgid()}", "environment": env,
                "labels": ct.labels(spec.attempt_id, spec.task, spec.number, self._token),
                "name": ct.container_name(spec.attempt_id, self._token),
                "working_dir": ct.CODE_DIR if package_dir else None, "mounts": mounts,
                "host": {k: v for k, v in host.items() if v is not None}}

    # -- internals ---------------------------------------------------------------------

    def _client(self) -> Any:
        try:
            import docker
        except ImportError as e:
            raise ExecutorError(
                "DockerExecutor needs the docker package: pip install 'steadyrun[docker]'"
            ) from e
        host = ct.resolve_host(self.docker_host)
        try:
            api = docker.APIClient(base_url=host, version="auto", timeout=60)
        except Exception as e:
            raise ExecutorError(
                f"DockerExecutor: cannot reach the Docker daemon at {host} "
                f"({type(e).__name__}: {e}); start it, or give docker_host= / DOCKER_HOST"
            ) from e
        return api

    def _info(self) -> dict[str, Any]:
        api = self._api or self._client()
        try:
            return dict(api.info())
        except Exception as e:
            raise ExecutorError(
                f"DockerExecutor: `docker info` failed on {ct.resolve_host(self.docker_host)}: "
                f"{e}") from e
        finally:
            if api is not self._api:
                api.close()

    def _gpus(self) -> list[int]:
        if isinstance(self.gpus, list):
            return list(self.gpus)
        if isinstance(self.gpus, int):
            return list(range(self.gpus))
        if not ct.resolve_host(self.docker_host).startswith("unix://"):
            return []  # a remote daemon's GPUs are not known here: give gpus=
        from steadyrun.observe.resources import local_capacity

        return local_capacity(cpus=1, memory=1).gpus

    def _start(self, spec: AttemptSpec) -> None:
        directory = os.fspath(spec.attempt_dir)
        # the file keeps env names only; a Script's values reach the worker in its env
        payload, handed = secrets.handoff(spec.payload, f"task {spec.task!r}")
        try:
            worker.write_payload(payload, directory)  # YAML when it can: any Python reads it
        except Exception as e:
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: its payload cannot be "
                f"written to {directory} ({type(e).__name__}: {e}); use module-level "
                "functions and picklable arguments") from e
        opts = self.container_options(spec, self._package_dir(spec), resolve=True)
        env = dict(opts["environment"])
        if handed is not None:
            env[worker.HANDED_ENV] = handed
        self._check_image()
        # found by its label after a crash, on the daemon this names
        ct.write_record(directory, {
            "attempt_id": spec.attempt_id, "name": opts["name"],
            "docker_host": ct.resolve_host(self.docker_host),
            "grace_period": self.grace_period})
        att = _Attempt(spec, "")
        with self._lock:
            self._running[spec.attempt_id] = att
        # making and starting a container takes a few hundred milliseconds: other
        # launches and outcomes go on meanwhile
        att.started = self._pool.submit(self._begin, att, opts, env)

    def _begin(self, att: _Attempt, opts: dict[str, Any], env: dict[str, str]) -> None:
        """Create and start the attempt's container (in the pool); a failure is the
        attempt's error, reported by :meth:`wait`."""
        spec = att.spec
        try:
            if att.stop_kind is None:
                att.container = ct.create(self._api, opts, env)
                with self._lock:
                    self._by_container[att.container] = spec.attempt_id
            if att.stop_kind is None:
                self._api.start(att.container)
                att.pid = int(self._api.inspect_container(att.container)["State"].get("Pid")
                              or 0)
        except Exception as e:
            message = (f"attempt {spec.attempt_id} of task {spec.task!r}: Docker could not "
                       f"run its container from {opts['image']!r}: {_api_message(e)}")
            with self._lock:
                if self._running.pop(spec.attempt_id, None) is None or att.stop_kind:
                    return
                self._by_container.pop(att.container, None)
                self._done.append(Outcome(spec.attempt_id, "error", message=message,
                                          error=ErrorInfo("ExecutorError", message)))
            if att.container:
                self._remove(att.container)
            self._wake.set()

    def _check_image(self) -> None:
        """An ExecutorError naming the image when the daemon does not have it (once)."""
        if self._image_checked:
            return
        try:
            self._api.inspect_image(self.container_image)
        except Exception as e:
            raise ExecutorError(
                f"DockerExecutor: the daemon at {ct.resolve_host(self.docker_host)} has no "
                f"image {self.container_image!r} ({_api_message(e)}); pull, build or "
                "import it there first") from e
        self._image_checked = True

    def _package_dir(self, spec: AttemptSpec) -> str | None:
        """The experiment's package unpacked on this machine (mounted read-only)."""
        if self.packager is None:
            return None
        from steadyrun.packaging.stored import local_folder

        return os.fspath(local_folder(self.packager, spec.attempt_dir))

    def _start_pending(self) -> list[Outcome]:
        outs = []
        while self._pending and (self.max_workers is None
                                 or len(self._running) < self.max_workers):
            spec = self._pending.popleft()
            try:
                self._start(spec)
            except ExecutorError as e:  # a queued attempt that cannot start fails
                outs.append(Outcome(spec.attempt_id, "error", message=str(e),
                                    error=ErrorInfo("ExecutorError", str(e))))
        return outs

    def _watch_events(self) -> None:
        events = self._events
        try:
            for event in events:
                cid = event.get("id") if isinstance(event, dict) else None
                if cid:
                    with self._lock:
                        self._died.add(cid)
                    self._wake.set()
        except Exception:  # closed, or the daemon went away: listings take over
            pass
        self._events_ok = False
        self._wake.set()

    def _list_ended(self) -> set[str]:
        """Ended containers of this executor, in one call."""
        try:
            found = self._api.containers(all=True, filters={
                "label": f"{ct.LABEL_EXECUTOR}={self._token}", "status": ["exited", "dead"]})
        except Exception:  # the daemon is unreachable for now: the next pass looks again
            return set()
        return {c["Id"] for c in found}

    def _finish(self, cid: str) -> Outcome | None:
        """The outcome of a container that ended on its own (not stopped by us)."""
        with self._lock:
            aid = self._by_container.get(cid, "")
            att = self._running.get(aid)
            if att is None or att.stop_kind is not None:
                return None
        try:
            state = self._api.inspect_container(cid)["State"]
        except Exception as e:
            state = {"Status": "gone", "ExitCode": None, "Error": str(e)}
        if state.get("Running"):
            return None
        with self._lock:
            if self._running.get(aid) is not att or att.stop_kind is not None:
                return None
            del self._running[aid]
            self._by_container.pop(cid, None)
        return self._outcome(att, state)

    def _outcome(self, att: _Attempt, state: dict[str, Any]) -> Outcome:
        directory = os.fspath(att.spec.attempt_dir)
        if state.get("ExitCode") != 0:  # the worker may have failed before its logs
            ct.keep_output(self._api, att.container, directory)
        self._remove(att.container)
        return ct.outcome(att.spec.attempt_id, state, directory, att.container,
                          att.spec.resources.memory_bytes, att.pid or None)

    def _kill(self, att: _Attempt) -> None:
        if att.started is not None:  # a container being started is stopped once it runs
            with contextlib.suppress(Exception):
                att.started.result()
        code = None
        if att.container:
            ct.stop_container(self._api, att.container, self.grace_period)
            with contextlib.suppress(Exception):  # gone: its exit code is unknown
                code = self._api.inspect_container(att.container)["State"].get("ExitCode")
            self._remove(att.container)
        aid = att.spec.attempt_id
        out = outcome_of(aid, exit_code=code, stopped=att.stop_kind or "cancelled",
                         pid=att.pid or None)
        with self._lock:
            self._running.pop(aid, None)
            self._by_container.pop(att.container, None)
            self._done.append(out)
        self._wake.set()

    def _remove(self, container: str) -> None:
        """Remove a container, in the pool (it takes tens of milliseconds)."""
        api = self._api

        def remove() -> None:
            with contextlib.suppress(Exception):  # gone already, or the daemon is
                api.remove_container(container, force=True)

        try:
            self._pool.submit(remove)
        except RuntimeError:  # the pool is shut down: closing
            remove()

    def __repr__(self) -> str:
        return f"DockerExecutor(container_image={self.container_image!r})"


class _Attempt:
    __slots__ = ("spec", "container", "pid", "stop_kind", "started")

    def __init__(self, spec: AttemptSpec, container: str) -> None:
        self.spec, self.container = spec, container
        self.pid = 0
        self.stop_kind: str | None = None
        self.started: Future[None] | None = None


def _api_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
