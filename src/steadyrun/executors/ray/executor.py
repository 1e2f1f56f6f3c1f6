"""Run attempts as Ray tasks, on a local Ray instance or on an existing Ray cluster.

``RayExecutor()`` starts a private Ray instance on this machine (every listener on
127.0.0.1) and stops it in ``close()``; ``RayExecutor(address="auto" | "HOST:PORT" |
"ray://HOST:PORT")`` connects to a running cluster and leaves it running. ``import
steadyrun`` never imports Ray: it loads when the executor opens.

What a Ray attempt does, as rules:

1. Every payload (Partial, Config, callable, Script) runs through
   :func:`steadyrun.attempt.worker.execute` inside one Ray task (a Script as a child process of
   it), so a task behaves as it does locally. The task's :class:`~steadyrun.Resources`
   become ``num_cpus``, ``num_gpus`` and ``memory``; Ray sets ``CUDA_VISIBLE_DEVICES``.
2. Ray's own retries are off (``max_retries=0``, ``retry_exceptions=False``): steadyrun's
   engine retries, so each attempt is counted once.
3. A request that no alive node can hold is refused before submission (Ray would leave
   it pending forever): :meth:`RayExecutor.check` raises
   :class:`RequestUnsatisfiable` naming the task, the request and the largest node.
4. Failure kinds: the payload's exception is ``error`` (``oom`` for MemoryError and CUDA
   out-of-memory, as the worker decides); a dead worker, node or raylet is ``lost``, or
   ``preempted`` when the attempt had saved a checkpoint
   (:mod:`steadyrun.executors.ray.preempted`; SIGUSR1 and drained nodes:
   :mod:`steadyrun.executors.ray.drain`); Ray's out-of-memory killer is ``oom``; a
   stopped task (``ray.cancel(force=True)``) carries the kind it was stopped with
   (``timeout``, ``cancelled``).
5. Logs and results come home: the attempt runs in a temporary folder on its node and
   the task returns the tails of stdout/stderr (``log_limit`` bytes each), the pickled
   value or the error through the object store; the executor writes ``stdout.log``,
   ``stderr.log``, ``result.pkl`` / ``error.json`` and ``samples.json`` into the local
   attempt folder (only what exists: :mod:`steadyrun.executors.ray.settle`). When the
   node sees the attempt folder itself (same machine or a shared filesystem, detected
   with a nonce in the experiment folder's ``ray-probe.json``), the worker writes there
   directly, so logs are live and survive a killed attempt. A stopped or lost attempt
   on a node without that view loses its output (its stderr.log says so).
6. ``pids()`` is empty (the processes are remote); each attempt folder's ``ray.json``
   names its Ray task id, node and worker pid, and :meth:`RayExecutor.task_ids` lists
   the running ones.

7. ``nodes``/``ntasks_per_node``/``launcher`` run each attempt as a gang of ranks, one
   placement group bundle per Ray node (:mod:`steadyrun.executors.ray.gang`).
8. Cost per task: the attempts admitted in one pass are submitted one after another
   without waiting; one ``ray.wait`` covers every running task and one ``ray.get``
   fetches all that ended; on the node, one thread per worker process samples every
   attempt it runs (none is started per attempt).

steadyrun (and the modules the payloads import) must be importable on every node:
install them there, or pass ``runtime_env={"py_modules": [...], "pip": [...]}``.
The controller's ``sys.path`` entries that exist on a node are appended to the task's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steadyrun.config import secrets as env_secrets
from steadyrun.errors import ExecutorError
from steadyrun.executors.base import (
    AttemptSpec,
    Capacity,
    Executor,
    Outcome,
    pickle_payload,
)
from steadyrun.executors.ray import package
from steadyrun.executors.ray.address import (
    _is_loopback,
    _loopback_only,
    _norm,
    _probe,
    _ray_env_address,
)
from steadyrun.executors.ray.nodes import LOST_ERRORS, RequestUnsatisfiable  # noqa: F401
from steadyrun.executors.ray.nodes import classify as _classify  # noqa: F401
from steadyrun.executors.ray.nodes import describe_node as _describe_node
from steadyrun.executors.ray.nodes import fits as _fits
from steadyrun.executors.ray.nodes import task_id as _task_id
from steadyrun.executors.ray.settle import fetch, settle
from steadyrun.executors.ray.task import (
    RAY_INFO_FILE,
    experiment_dir_of,
    run_attempt,
    write_json,
    write_probe,
)
from steadyrun.task import Resources
from steadyrun.units import parse_size

_NODES_TTL = 5.0  # seconds a node listing is reused for checks
_STOP_REPORT_AFTER = 30.0  # a stopped task whose end Ray never reports is settled anyway


@dataclass
class _Running:
    spec: AttemptSpec
    ref: Any
    task_id: str
    nonce: str
    submitted: float
    stop_kind: str | None = None
    stop_at: float | None = None


class RayExecutor(Executor):
    """Runs attempts as Ray tasks (see the module docs for the rules).

    ``address``: ``None`` starts a local Ray instance bound to 127.0.0.1 (unless
    ``RAY_ADDRESS`` or ``STEADYRUN_RAY_ADDRESS`` names a cluster) with ``num_cpus``/
    ``num_gpus``/``object_store_memory``; ``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``
    connects to a running cluster. ``runtime_env`` and ``namespace`` go to ``ray.init``
    (or, when this process was already connected by someone else, to each task); the
    values of ``runtime_env["env_vars"]`` may be ``run.Secret("NAME")``, read from this
    process's environment when it connects, and the store keeps their names only.
    ``log_limit`` is how much of each log comes back (the tail, default 1 MiB);
    ``sample_interval`` the seconds between resource samples of a task's process tree (0:
    none); ``shared_fs`` ``None`` detects whether nodes see the attempt folders, ``False``
    always copies back; ``check_nodes=False`` skips the per-node check (an autoscaling
    cluster may grow a node later); ``oversubscribe`` multiplies the capacity the engine
    admits against, so more tasks wait in Ray's own queue (Ray still honours every
    request). ``nodes``, ``ntasks_per_node`` and ``launcher`` (None, ``"torchrun"`` or
    :class:`~steadyrun.Torchrun`) run each attempt as ``nodes x ntasks_per_node`` ranks
    on ``nodes`` distinct Ray nodes, the task's resources per rank
    (:mod:`steadyrun.executors.ray.gang`). ``packager``: the experiment's code as each
    task's ``working_dir`` (:mod:`steadyrun.executors.ray.package`). Raises
    :class:`~steadyrun.errors.ExecutorError` for a bad option, when Ray is not installed,
    or when the cluster cannot be reached.
    """

    name = "ray"
    samples_remotely = True  # sampled on the node; samples.json comes back

    def __init__(self, address: str | None = None, *, runtime_env: dict[str, Any] | None = None,
                 namespace: str | None = None, num_cpus: float | None = None,
                 num_gpus: int | None = None, object_store_memory: int | str | None = None,
                 log_limit: int | str = "1MiB", sample_interval: float = 1.0,
                 oversubscribe: float = 1.0,
                 shared_fs: bool | None = None, check_nodes: bool = True, nodes: int = 1,
                 ntasks_per_node: int = 1, launcher: Any = None, packager: Any = None) -> None:
        from steadyrun.executors.ray.gang import Gangs
        from steadyrun.launchers import resolve_gang

        self.gang = resolve_gang(nodes, ntasks_per_node, launcher, "RayExecutor")
        if address is not None and not (isinstance(address, str) and address.strip()):
            raise ExecutorError(
                f"RayExecutor(address={address!r}): give None (a local Ray), 'auto', "
                "'HOST:PORT' or 'ray://HOST:PORT'")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise ExecutorError(f"RayExecutor(runtime_env={runtime_env!r}): give a dict")
        if num_cpus is not None and (isinstance(num_cpus, bool) or num_cpus < 0):
            raise ExecutorError(f"RayExecutor(num_cpus={num_cpus!r}): give a number >= 0")
        if not isinstance(sample_interval, int | float) or sample_interval < 0:
            raise ExecutorError(
                f"RayExecutor(sample_interval={sample_interval!r}): give seconds >= 0")
        if shared_fs is True:
            raise ExecutorError(
                "RayExecutor(shared_fs=True) is not an option: None detects a shared "
                "filesystem per attempt, False always copies logs and results back")
        self.address = address
        if runtime_env and runtime_env.get("env_vars"):  # values may be run.Secret(...)
            runtime_env = {**runtime_env, "env_vars": env_secrets.check_env(
                runtime_env["env_vars"], "RayExecutor(runtime_env={'env_vars': ...})")}
        self.runtime_env = runtime_env
        self.packager = package.checked(packager, runtime_env, self.gang)
        self.namespace = namespace
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.object_store_memory = object_store_memory
        self.log_limit = int(parse_size(log_limit, what="RayExecutor.log_limit") or 0)
        self._log_limit_option = log_limit
        self.sample_interval = float(sample_interval)
        if isinstance(oversubscribe, bool) or not isinstance(oversubscribe, int | float) \
                or oversubscribe < 1:
            raise ExecutorError(f"RayExecutor(oversubscribe={oversubscribe!r}): give a "
                                "factor >= 1")
        self.oversubscribe = float(oversubscribe)
        self.shared_fs = shared_fs
        self.check_nodes = check_nodes
        self._ray: Any = None
        self._remote: Any = None
        self._owns_connection = False
        self._task_runtime_env: dict[str, Any] | None = None
        self._running: dict[str, _Running] = {}
        self._done: list[Outcome] = []
        self._nodes: list[dict[str, Any]] | None = None
        self._nodes_at = 0.0
        self._lock = threading.Lock()
        self._probes: dict[str, tuple[str, str]] = {}  # experiment folder -> (file, nonce)
        self._gangs = Gangs(self)

    # -- the contract ------------------------------------------------------------------

    def open(self) -> None:
        """Connect to the cluster, or start the local Ray instance. Idempotent."""
        if self._remote is not None:
            return
        ray = self._connect()
        self._ray = ray
        self._remote = ray.remote(run_attempt)

    def close(self) -> None:
        """Force-cancel every running task, then disconnect; a Ray instance this
        executor started is shut down. Idempotent."""
        if self._remote is None:
            return
        ray = self._ray
        for run in list(self._running.values()):
            with contextlib.suppress(Exception):
                ray.cancel(run.ref, force=True)
        self._running.clear()
        self._gangs.close()
        self._done.clear()
        self._remote = None
        self._nodes = None
        if self._owns_connection:
            self._owns_connection = False
            with contextlib.suppress(Exception):
                ray.shutdown()

    def capacity(self) -> Capacity:
        """The sum over alive nodes (CPUs, the ``memory`` resource, GPUs). Before the
        executor is open, a local instance reports this machine's capacity (with
        ``num_cpus``/``num_gpus`` applied) without starting Ray; a cluster is connected
        to."""
        if self._remote is None and self.address is None and not _ray_env_address():
            from steadyrun.observe.resources import local_capacity

            return local_capacity(self.num_cpus, None, self.num_gpus)
        self.open()
        nodes = self._alive_nodes(refresh=True)
        f = self.oversubscribe  # > 1: the engine submits more, Ray's own queue holds them
        cpus = sum(float(n.get("CPU", 0)) for n in nodes) * f
        memory = int(sum(float(n.get("memory", 0)) for n in nodes) * f)
        gpus = int(sum(float(n.get("GPU", 0)) for n in nodes) * f)
        return Capacity(cpus=cpus, memory=memory, gpus=list(range(gpus)))

    def check(self, resources: Resources, task: str | None = None) -> None:
        """Raise :class:`RequestUnsatisfiable` when no alive node could ever run a task
        asking for ``resources`` (all of it on one node, as a Ray task needs). The
        message names the task, the request and the largest node. Does nothing when
        ``check_nodes`` is False."""
        if not self.check_nodes:
            super().check(resources, task)  # the cluster's totals at least
            return
        self.open()
        if self.gang is not None:
            self._gangs.check(resources, task)
            return
        nodes = self._alive_nodes(refresh=False)
        if any(_fits(n, resources) for n in nodes):
            return
        nodes = self._alive_nodes(refresh=True)  # a node may have joined since
        if any(_fits(n, resources) for n in nodes):
            return
        who = f"task {task!r}" if task else "the task"
        if not nodes:
            raise RequestUnsatisfiable(
                f"{who} asks for {resources.describe()} but the Ray cluster has no alive "
                "node; start the cluster's nodes, or pass check_nodes=False")
        dims = ("GPU", "CPU", "memory") if resources.gpus else ("CPU", "memory", "GPU")
        largest = max(nodes, key=lambda n: tuple(float(n.get(d, 0)) for d in dims))
        raise RequestUnsatisfiable(
            f"{who} asks for {resources.describe()} but no node of the Ray cluster can "
            f"ever hold it (Ray would leave it pending forever); the largest of "
            f"{len(nodes)} alive node(s) is {_describe_node(largest)}; lower the request, "
            "add a larger node, or pass check_nodes=False if the cluster autoscales")

    def launch(self, spec: AttemptSpec) -> None:
        """Submit one attempt as a Ray task. Raises :class:`RequestUnsatisfiable` (an
        ExecutorError) when no node can hold its request, ExecutorError when its folder
        is missing or its payload cannot be pickled."""
        if not os.path.isdir(spec.attempt_dir):
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: its folder "
                f"{os.fspath(spec.attempt_dir)!r} does not exist")
        self.open()
        self.check(spec.resources, spec.task)
        # secrets are read here, in the launching process; values travel in memory only
        payload = env_secrets.resolve(spec.payload, f"task {spec.task!r}")
        payload = payload if self.packager is None else package.InPackage(payload)
        blob = pickle_payload(replace(spec, payload=payload), "a Ray task")
        probe, nonce = self._probe_for(spec)
        info = {"attempt_id": spec.attempt_id, "attempt_dir": os.fspath(spec.attempt_dir),
                "nonce": nonce, "probe": probe,
                "env": {str(k): str(v) for k, v in spec.env.items()},
                "sys_path": [p for p in sys.path if p], "shared_fs": self.shared_fs,
                "log_limit": self.log_limit, "sample_interval": self.sample_interval}
        # steadyrun's engine retries: Ray must not, or attempts would be counted twice
        options: dict[str, Any] = {"num_cpus": float(spec.resources.cpus), "max_retries": 0,
                                   "retry_exceptions": False,
                                   "name": f"steadyrun:{spec.attempt_id}"}
        if spec.resources.gpus:
            options["num_gpus"] = spec.resources.gpus
        if spec.resources.memory_bytes:
            options["memory"] = spec.resources.memory_bytes
        if self._task_runtime_env:
            options["runtime_env"] = self._task_runtime_env
        if self.packager is not None:  # the package: the task's working folder, on its path
            options["runtime_env"] = package.runtime_env(self, spec.attempt_dir, options)
        if self.gang is not None:
            return self._gangs.launch(spec, info)
        try:
            ref = self._remote.options(**options).remote(blob, info)
        except Exception as e:
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: Ray refused the task "
                f"({type(e).__name__}: {e})") from e
        task_id = _task_id(ref)
        with self._lock:
            self._running[spec.attempt_id] = _Running(spec, ref, task_id, nonce, time.time())

    def launch_many(self, specs: list[AttemptSpec]) -> dict[str, Exception]:
        """Submit the attempts admitted in one pass, one after another without waiting
        (Ray queues them); return the ones that could not start."""
        if specs:
            self.open()
        return super().launch_many(specs)

    def _probe_for(self, spec: AttemptSpec) -> tuple[str, str]:
        """The file and nonce a node reads to tell whether it sees the attempt's folder:
        one ``ray-probe.json`` per experiment folder (written once, owner-only), or for a
        folder outside the store's layout the attempt's own ``ray.json``."""
        exp = experiment_dir_of(os.fspath(spec.attempt_dir))
        if exp is None:
            nonce = secrets.token_hex(8)
            path = Path(spec.attempt_dir) / RAY_INFO_FILE
            write_json(path, {"attempt_id": spec.attempt_id, "nonce": nonce,
                              "state": "submitted", "address": self.address,
                              "namespace": self.namespace, "submitted_at": time.time()})
            return os.fspath(path), nonce
        known = self._probes.get(exp)
        if known is None:
            known = self._probes[exp] = write_probe(exp)
        return known

    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes of the tasks that ended: one batched ``ray.wait`` for all of them
        (``fetch_local=False``), then the ready results are fetched and written into
        their attempt folders."""
        timeout = max(0.0, float(timeout))
        with self._lock:
            outs, self._done = self._done, []
            runs = list(self._running.values())
        gang_refs = self._gangs.refs()
        if not runs and not gang_refs:
            if not outs and timeout:
                time.sleep(timeout)
            return outs
        ray = self._ray
        refs = [r.ref for r in runs] + gang_refs
        try:
            ready, _ = ray.wait(refs, num_returns=1, timeout=0 if outs else timeout,
                                fetch_local=False)
            if ready and len(refs) > 1:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0,
                                    fetch_local=False)
        except Exception as e:  # the cluster went away: every running attempt is lost
            with self._lock:
                self._running.clear()
            gone = [r.spec for r in runs] + [g.spec for g in self._gangs.runs.values()]
            self._gangs.runs.clear()
            return outs + [Outcome(spec.attempt_id, "lost",
                                   message=f"the Ray cluster could not be polled "
                                           f"({type(e).__name__}: {e})") for spec in gone]
        ready_ids = {id(ref) for ref in ready}
        outs += self._gangs.advance(ready_ids)
        ended = [run for run in runs if id(run.ref) in ready_ids]
        for run in ended:
            self._forget(run, None)
        outs += [settle(self, *got) for got in fetch(ray, ended)]  # one ray.get for all
        now = time.time()
        for run in runs:
            if id(run.ref) in ready_ids:
                continue
            if run.stop_at is not None and now - run.stop_at > _STOP_REPORT_AFTER:
                outs.append(self._forget(run, Outcome(
                    run.spec.attempt_id, run.stop_kind,
                    message=f"stopped by the executor ({run.stop_kind}); Ray did not "
                            f"confirm the end of task {run.task_id} within "
                            f"{_STOP_REPORT_AFTER:.0f}s")))
        return outs

    def stop(self, attempt_id: str, kind: str) -> None:
        """Force-cancel the attempt's Ray task (its worker process and children are
        killed; a gang's node agents end their ranks); its outcome, with ``kind``, arrives
        through :meth:`wait`."""
        if self._gangs.stop(attempt_id, kind):
            return
        with self._lock:
            run = self._running.get(attempt_id)
            if run is None or run.stop_kind is not None:
                return
            run.stop_kind, run.stop_at = kind, time.time()
        try:
            self._ray.cancel(run.ref, force=True)
        except Exception as e:  # already ended, or the cluster is gone: report it now
            self._forget(run, None)
            with self._lock:
                self._done.append(Outcome(
                    attempt_id, kind,
                    message=f"stopped by the executor ({kind}); ray.cancel said "
                            f"{type(e).__name__}: {e}"))

    def pids(self) -> dict[str, int]:
        """Empty: attempts run in Ray workers, possibly on other machines (see
        :meth:`task_ids` and each attempt folder's ``ray.json``)."""
        return {}

    def task_ids(self) -> dict[str, str]:
        """The Ray task id (hex) of each running attempt."""
        with self._lock:
            return {**{aid: run.task_id for aid, run in self._running.items()},
                    **self._gangs.task_ids()}

    def to_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this executor in another process (a detached
        controller reconnects to the same cluster and namespace)."""
        return {"type": "RayExecutor", "address": self.address,
                "runtime_env": self._stored_runtime_env(), "namespace": self.namespace,
                "num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                "object_store_memory": self.object_store_memory,
                "log_limit": self._log_limit_option, "sample_interval": self.sample_interval,
                "shared_fs": self.shared_fs, "check_nodes": self.check_nodes,
                "oversubscribe": self.oversubscribe, **self._gang_config(),
                **package.config(self.packager)}

    def _gang_config(self) -> dict[str, Any]:
        from steadyrun.launchers import launcher_config

        if self.gang is None:
            return {}
        return {"nodes": self.gang.nodes, "ntasks_per_node": self.gang.ntasks_per_node,
                "launcher": launcher_config(self.gang.launcher)}

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, namespace={self.namespace!r})"

    def _resolved_runtime_env(self) -> dict[str, Any] | None:
        """``runtime_env`` with its ``env_vars`` as plain values (secrets read now)."""
        env = (self.runtime_env or {}).get("env_vars")
        if not env:
            return self.runtime_env
        return {**(self.runtime_env or {}), "env_vars": env_secrets.resolve_env(
            env, "RayExecutor(runtime_env={'env_vars': ...})")}

    def _stored_runtime_env(self) -> dict[str, Any] | None:
        """``runtime_env`` as the store keeps it: ``env_vars`` by name only."""
        env = (self.runtime_env or {}).get("env_vars")
        if not env:
            return self.runtime_env
        return {**(self.runtime_env or {}), "env_vars": env_secrets.env_to_config(env)}

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> Any:
        local = self.address is None and not _ray_env_address()
        if not local:
            _probe(self.address or _ray_env_address() or "")
        # Ray rewrites 127.0.0.1 into this machine's public address unless told not to
        restore = (_loopback_only() if local or _is_loopback(self.address or _ray_env_address())
                   else None)
        try:
            import ray
        except ImportError as e:
            if restore:
                restore()
            raise ExecutorError(
                "RayExecutor needs Ray: pip install 'steadyrun[ray]' (or 'ray[default]')"
            ) from e
        try:
            if ray.is_initialized():
                self._check_same_cluster(ray)
                self._owns_connection = False
                self._task_runtime_env = self._resolved_runtime_env()
                return ray
            kwargs: dict[str, Any] = {"namespace": self.namespace,
                                      "runtime_env": self._resolved_runtime_env(),
                                      "log_to_driver": False}
            if local:
                kwargs.update(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                              include_dashboard=False, _node_ip_address="127.0.0.1")
                if self.object_store_memory is not None:
                    kwargs["object_store_memory"] = int(parse_size(
                        self.object_store_memory, what="RayExecutor.object_store_memory")
                        or 0)
            else:
                kwargs["address"] = self.address or _ray_env_address()
            try:
                ray.init(**{k: v for k, v in kwargs.items() if v is not None})
            except Exception as e:
                where = ("start a local Ray instance" if local
                         else f"connect to the Ray cluster at {self.address!r}")
                raise ExecutorError(
                    f"RayExecutor could not {where}: {type(e).__name__}: {e}") from e
            self._owns_connection = True
            self._task_runtime_env = None
            return ray
        finally:
            if restore:
                restore()

    def _check_same_cluster(self, ray: Any) -> None:
        """This process is already connected: refuse a different explicit HOST:PORT."""
        address = self.address
        if not address or address == "auto" or address.startswith("ray://"):
            return
        try:
            current = ray.get_runtime_context().gcs_address
        except Exception:
            return
        if current and _norm(current) != _norm(address):
            raise ExecutorError(
                f"RayExecutor(address={address!r}): this process is already connected to "
                f"the Ray cluster at {current}; one process talks to one cluster "
                "(call ray.shutdown() first, or use that address)")

    def _alive_nodes(self, refresh: bool) -> list[dict[str, Any]]:
        """The ``Resources`` of every alive node, plus its address and id."""
        now = time.monotonic()
        if refresh or self._nodes is None or now - self._nodes_at > _NODES_TTL:
            nodes = []
            for n in self._ray.nodes():
                if n.get("Alive") or n.get("alive"):
                    res = dict(n.get("Resources") or {})
                    res["_address"] = n.get("NodeManagerAddress")
                    res["_id"] = n.get("NodeID")
                    nodes.append(res)
            self._nodes, self._nodes_at = nodes, now
        return list(self._nodes or [])

    # -- outcomes ------------------------------------------------------------------------

    def _forget(self, run: _Running, outcome: Outcome | None) -> Any:
        with self._lock:
            self._running.pop(run.spec.attempt_id, None)
        return outcome
