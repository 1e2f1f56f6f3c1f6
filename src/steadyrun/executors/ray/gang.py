"""Gang attempts on Ray: ``RayExecutor(nodes=N, ntasks_per_node=M, launcher=...)``.

One attempt of a task becomes ``N x M`` ranks (:mod:`steadyrun.launchers`):

1. At launch a placement group of ``N`` bundles is created, each bundle ``M`` times the
   task's per-rank :class:`~steadyrun.Resources`, with the strategy ``STRICT_SPREAD``:
   every bundle on another Ray node, as ``nodes`` means on Slurm. A gang that the alive
   nodes cannot hold that way (fewer than ``N`` nodes with room for ``M`` ranks each) is
   refused before submission with :class:`~steadyrun.errors.InsufficientResources`; ask
   for ``nodes=1, ntasks_per_node=N*M`` to run every rank on one node. ``launch``
   returns at once: the gang starts when Ray has reserved the group (a busy cluster
   keeps it waiting, as it would keep a plain task).
2. A first small task on bundle 0 reports that node's address and a free port there:
   the rendezvous (``MASTER_ADDR``/``MASTER_PORT``, torchrun's endpoint) is fixed
   before any rank starts, so every node agent gets the same one (a ``Torchrun``'s own
   ``rdzv_port`` wins over the free port). It also proves that the node sees the
   attempt folder.
3. One Ray task per bundle ``k`` runs the node agent (:mod:`steadyrun.launchers.node`)
   with ``STEADYRUN_NODE_RANK=k``, below a small keeper process. The keeper dies with
   the Ray worker (a parent-death signal, or Ray killing the worker's children), the
   agent gets SIGTERM when the keeper dies and ends its ranks: a force-cancelled Ray
   task leaves no rank behind.
4. When one node fails, the other nodes' tasks are force-cancelled at once; when all
   have ended, the ranks' ends are gathered into the attempt's files
   (:func:`steadyrun.launchers.collect.finish`) and the outcome is read from them as for
   a plain attempt. The placement group is removed when the attempt ends, however it
   ends (``stop()`` included).

The ranks write into the attempt folder directly, so every node must see it (one
machine, or a shared filesystem). A node that does not see it fails the attempt with
:class:`GangNeedsSharedFolder` (``shared_fs=False`` is refused at launch): nothing of
the ranks' folders is copied back.

This module imports only the standard library at the top: Ray workers import it to run
a node's task.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds a stopped gang waits for Ray to confirm its tasks' end before it is settled.
STOP_REPORT_AFTER = 30.0
#: The node agent: SIGTERM from the kernel (it then ends its ranks) when its parent, the
#: keeper, dies; argv: the keeper's pid, the attempt folder.
_AGENT = """
import os, signal, sys
from steadyrun.attempt import guard
guard.die_with_parent(signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(75)
from steadyrun.launchers.node import main
sys.exit(main(sys.argv[2:]))
"""
#: The keeper between the Ray worker and the agent: Ray SIGKILLs a worker's direct
#: children when it force-cancels a task, which would leave the agent no time to end its
#: ranks; the keeper dies instead (and with the worker, by SIGKILL from the kernel), and
#: its death makes the kernel send the agent SIGTERM. argv: the worker's pid, the folder.
_KEEPER = """
import os, signal, subprocess, sys
from steadyrun.attempt import guard
guard.die_with_parent(signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit(75)
from steadyrun.attempt.names import CONTROLLER_PID_ENV
from steadyrun.executors.ray.gang import _AGENT
agent = subprocess.Popen([sys.executable, "-c", _AGENT, str(os.getpid()), sys.argv[2]],
                         stdin=subprocess.DEVNULL,
                         env={**os.environ, CONTROLLER_PID_ENV: str(os.getpid())})
signal.signal(signal.SIGTERM, lambda *_: agent.send_signal(signal.SIGTERM))
rc = agent.wait()
sys.exit(128 - rc if rc < 0 else rc)
"""


class GangNeedsSharedFolder(Exception):
    """A Ray node of a gang cannot see the attempt folder (no shared filesystem)."""


# --- on the Ray nodes -------------------------------------------------------------------


def probe_node(info: dict[str, Any]) -> dict[str, Any]:
    """Bundle 0's node: its address, a free port there, and whether it sees the attempt
    folder (a Ray task)."""
    import socket

    from steadyrun.executors.ray.task import _node_ip, _shared_dir

    ip = _node_ip() or "127.0.0.1"
    with socket.socket() as s:
        s.bind((ip, 0))
        port = int(s.getsockname()[1])
    return {"ip": ip, "port": port, "shared": _shared_dir(info) is not None,
            "host": socket.gethostname()}


def run_node(info: dict[str, Any]) -> dict[str, Any]:
    """Run node ``info["node_rank"]``'s agent to its end (a Ray task); return how it
    ended: ``{exit_code, shared, host, node_ip, node_id, pid, started, ended}``."""
    import signal
    import socket
    import subprocess

    from steadyrun.attempt.folder import STDERR_LOG, STDOUT_LOG
    from steadyrun.attempt.names import CONTROLLER_PID_ENV
    from steadyrun.executors.ray.task import _extend_sys_path, _node_ip, _shared_dir
    from steadyrun.launchers import (
        MASTER_ADDR_ENV,
        MASTER_PORT_ENV,
        NODE_RANK_ENV,
        SAMPLE_INTERVAL_ENV,
    )

    started = time.time()
    out: dict[str, Any] = {"host": socket.gethostname(), "node_ip": _node_ip(),
                           "node_id": _node_id(), "started": started, "pid": None}
    directory = _shared_dir(info)
    if directory is None:
        return {**out, "shared": False, "exit_code": None, "ended": time.time()}
    _extend_sys_path(info.get("sys_path") or ())
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (info.get("env") or {}).items()})
    env.update({NODE_RANK_ENV: str(info["node_rank"]), MASTER_ADDR_ENV: str(info["addr"]),
                MASTER_PORT_ENV: str(info["port"]), CONTROLLER_PID_ENV: str(os.getpid()),
                SAMPLE_INTERVAL_ENV: str(info.get("sample_interval") or 0),
                "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))})
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    fds = [os.open(os.path.join(directory, name), flags, 0o600)
           for name in (STDOUT_LOG, STDERR_LOG)]
    try:
        proc = subprocess.Popen([sys.executable, "-c", _KEEPER, str(os.getpid()), directory],
                                env=env, stdin=subprocess.DEVNULL, stdout=fds[0],
                                stderr=fds[1])
    finally:
        for fd in fds:
            os.close(fd)
    out["pid"] = proc.pid
    try:
        rc = proc.wait()
    finally:  # a cancelled task (not forced) is interrupted here: end the agent's tree
        if proc.poll() is None:
            from steadyrun.attempt.proctree import kill_tree

            with contextlib.suppress(Exception):
                proc.send_signal(signal.SIGTERM)
            kill_tree(proc.pid, 10.0)
            proc.wait()
    return {**out, "shared": True, "exit_code": 128 - rc if rc < 0 else rc,
            "ended": time.time()}


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return None


# --- in the controller ------------------------------------------------------------------


@dataclass
class GangRun:
    """One gang attempt in flight."""

    spec: Any
    info: dict[str, Any]
    pg: Any
    probe: Any
    submitted: float
    nodes: list[Any] = field(default_factory=list)  # one ref per node, once started
    ends: dict[int, Any] = field(default_factory=dict)  # node rank -> dict or exception
    master: tuple[str, int] | None = None
    failure: str | None = None  # why the gang is being ended early
    stop_kind: str | None = None
    stop_at: float | None = None

    def pending(self) -> list[Any]:
        if not self.nodes:
            return [self.probe]
        return [ref for k, ref in enumerate(self.nodes) if k not in self.ends]


class Gangs:
    """The gang attempts of one :class:`~steadyrun.executors.ray.executor.RayExecutor`."""

    def __init__(self, executor: Any) -> None:
        self.ex = executor
        self.runs: dict[str, GangRun] = {}
        self._probe: Any = None
        self._node: Any = None

    # -- admission -----------------------------------------------------------------------

    def check(self, resources: Any, task: str | None) -> None:
        """Refuse a gang that the alive nodes cannot hold, one bundle per node."""
        from steadyrun.executors.ray.nodes import RequestUnsatisfiable, describe_node, fits

        gang = self.ex.gang
        per_node = gang.per_node(resources)
        nodes = self.ex._alive_nodes(refresh=False)
        if sum(1 for n in nodes if fits(n, per_node)) >= gang.nodes:
            return
        nodes = self.ex._alive_nodes(refresh=True)  # a node may have joined since
        able = [n for n in nodes if fits(n, per_node)]
        if len(able) >= gang.nodes:
            return
        who = f"task {task!r}" if task else "the task"
        largest = max(nodes, key=lambda n: (float(n.get("GPU", 0)), float(n.get("CPU", 0)),
                                            float(n.get("memory", 0))), default=None)
        raise RequestUnsatisfiable(
            f"{who} runs as a gang of {gang.nodes} node(s) x {gang.ntasks_per_node} rank(s) "
            f"of {resources.describe()} and needs {gang.nodes} Ray nodes with "
            f"{per_node.describe()} each, but {len(able)} of the {len(nodes)} alive "
            f"node(s) have that" + (f" (the largest: {describe_node(largest)})"
                                    if largest else "")
            + "; lower the request, add nodes, or run the ranks on one node with "
            f"nodes=1, ntasks_per_node={gang.size}")

    # -- launch --------------------------------------------------------------------------

    def launch(self, spec: Any, info: dict[str, Any]) -> None:
        """Write the gang's files into the attempt folder, reserve the placement group
        and submit the probe of bundle 0 (which waits for the group)."""
        from steadyrun.attempt import worker
        from steadyrun.config import secrets as env_secrets
        from steadyrun.errors import ExecutorError
        from steadyrun.launchers import write_gang

        ray = self.ex._ray
        gang = self.ex.gang
        if self.ex.shared_fs is False:
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: a gang on Ray needs the "
                "attempt folder on every node (a shared filesystem); RayExecutor("
                "shared_fs=False) cannot run nodes/ntasks_per_node/launcher")
        directory = os.fspath(spec.attempt_dir)
        payload, handed = env_secrets.handoff(spec.payload, f"task {spec.task!r}")
        try:
            worker.write_payload(payload, directory)
        except Exception as e:
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: its payload cannot be "
                f"written to {directory} ({type(e).__name__}: {e}); use module-level "
                "functions and picklable arguments") from e
        write_gang(directory, gang)
        if handed is not None:
            info["env"][worker.HANDED_ENV] = handed
        if self._probe is None:
            self._probe = ray.remote(probe_node)
            self._node = ray.remote(run_node)
        bundle = _bundle(gang.per_node(spec.resources))
        from ray.util import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        try:
            pg = placement_group([dict(bundle) for _ in range(gang.nodes)],
                                 strategy="STRICT_SPREAD", name=f"steadyrun:{spec.attempt_id}")
            probe = self._probe.options(
                num_cpus=0, max_retries=0, retry_exceptions=False,
                name=f"steadyrun:{spec.attempt_id}:probe",
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0),
                **self._runtime_env()).remote(info)
        except Exception as e:
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: Ray refused the gang "
                f"({type(e).__name__}: {e})") from e
        info["bundle"] = bundle
        self.runs[spec.attempt_id] = GangRun(spec, info, pg, probe, time.time())

    def _runtime_env(self) -> dict[str, Any]:
        env = self.ex._task_runtime_env
        return {"runtime_env": env} if env else {}

    def _start_nodes(self, run: GangRun, addr: str, port: int) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gang = self.ex.gang
        tr = gang.launcher
        if tr is not None and tr.rdzv_port:
            port = int(tr.rdzv_port)
        run.master = (addr, port)
        bundle = run.info["bundle"]
        opts: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "max_retries": 0,
                                "retry_exceptions": False, **self._runtime_env()}
        if bundle.get("GPU"):
            opts["num_gpus"] = bundle["GPU"]
        if bundle.get("memory"):
            opts["memory"] = bundle["memory"]
        aid = run.spec.attempt_id
        for k in range(gang.nodes):
            info = {**run.info, "node_rank": k, "addr": addr, "port": port}
            run.nodes.append(self._node.options(
                name=f"steadyrun:{aid}:node{k}",
                scheduling_strategy=PlacementGroupSchedulingStrategy(run.pg, k),
                **opts).remote(info))

    # -- progress ------------------------------------------------------------------------

    def refs(self) -> list[Any]:
        """What :meth:`RayExecutor.wait` waits on for the gangs."""
        return [ref for run in self.runs.values() for ref in run.pending()]

    def advance(self, ready: set[int]) -> list[Any]:
        """Move every gang on with the refs that are ready; return the ended ones'
        outcomes."""
        outs = []
        now = time.time()
        for run in list(self.runs.values()):
            out = self._advance(run, ready)
            if out is None and run.stop_at is not None and now - run.stop_at > STOP_REPORT_AFTER:
                out = self._end(run, confirmed=False)
            if out is not None:
                outs.append(out)
        return outs

    def _advance(self, run: GangRun, ready: set[int]) -> Any:
        ray = self.ex._ray
        if not run.nodes:
            if id(run.probe) not in ready:
                return None
            try:
                probe = ray.get(run.probe)
            except Exception as exc:
                if run.stop_kind is None:
                    run.failure = _ray_failure(exc, "the placement group's first node")
                return self._end(run)
            if run.stop_kind is not None:
                return self._end(run)
            if not probe.get("shared"):
                run.failure = "unshared"
                run.ends[0] = probe
                return self._end(run)
            try:
                self._start_nodes(run, str(probe["ip"]), int(probe["port"]))
            except Exception as exc:  # Ray refused a node's task: end what did start
                run.failure = _ray_failure(exc, "submitting the nodes' tasks")
                self._cancel(run)
                if len(run.ends) >= len(run.nodes):
                    return self._end(run)
            return None
        for k, ref in enumerate(run.nodes):
            if k in run.ends or id(ref) not in ready:
                continue
            try:
                end: Any = ray.get(ref)
            except Exception as exc:
                end = exc
            run.ends[k] = end
            if run.failure is None and run.stop_kind is None:
                if isinstance(end, Exception):
                    run.failure = _ray_failure(end, f"node {k}'s Ray task")
                elif not end.get("shared"):
                    run.failure = "unshared"
                elif end.get("exit_code"):
                    run.failure = f"node {k} failed"
                if run.failure is not None:
                    self._cancel(run)
        if len(run.ends) < len(run.nodes):
            return None
        return self._end(run)

    def stop(self, attempt_id: str, kind: str) -> bool:
        """Force-cancel a gang's tasks; False when ``attempt_id`` is not a gang here."""
        run = self.runs.get(attempt_id)
        if run is None:
            return False
        if run.stop_kind is None:
            run.stop_kind, run.stop_at = kind, time.time()
            self._cancel(run)
        return True

    def task_ids(self) -> dict[str, str]:
        from steadyrun.executors.ray.nodes import task_id

        return {aid: task_id(run.nodes[0] if run.nodes else run.probe)
                for aid, run in self.runs.items()}

    def close(self) -> None:
        for run in list(self.runs.values()):
            self._cancel(run)
            self._remove_group(run)
        self.runs.clear()

    # -- the end -------------------------------------------------------------------------

    def _cancel(self, run: GangRun) -> None:
        ray = self.ex._ray
        for ref in run.pending():
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def _remove_group(self, run: GangRun) -> None:
        from ray.util import remove_placement_group

        with contextlib.suppress(Exception):
            remove_placement_group(run.pg)

    def _end(self, run: GangRun, confirmed: bool = True) -> Any:
        """Remove the group, gather the ranks' ends and make the attempt's outcome."""
        from steadyrun.attempt import folder
        from steadyrun.attempt.outcome import outcome_of
        from steadyrun.executors.base import ErrorInfo, Outcome
        from steadyrun.launchers.collect import finish

        self._remove_group(run)
        self.runs.pop(run.spec.attempt_id, None)
        aid = run.spec.attempt_id
        directory = Path(run.spec.attempt_dir)
        code: int | None = None
        if run.nodes and run.failure != "unshared":
            try:
                code = finish(directory)
            except Exception as e:  # the folder is unusable: say so, keep the outcome
                print(f"steadyrun: could not gather the ranks of {aid} in {directory}: {e}",
                      file=sys.stderr)
        self._write_info(run)
        host = next((e.get("host") for k, e in sorted(run.ends.items())
                     if isinstance(e, dict)), None)
        if run.stop_kind is not None:
            detail = f"Ray gang of {len(run.nodes) or self.ex.gang.nodes} node(s) force-cancelled"
            if not confirmed:
                detail += (f"; Ray did not confirm the end of its tasks within "
                           f"{STOP_REPORT_AFTER:.0f}s")
            return outcome_of(aid, stopped=run.stop_kind, detail=detail, host=host)
        if run.failure == "unshared":
            message = (f"the Ray node {host or '?'} of this gang does not see the attempt "
                       f"folder {directory}: a gang's ranks write into it, so every node "
                       "needs it on a shared filesystem")
            return Outcome(aid, "error", message=f"GangNeedsSharedFolder: {message}",
                           error=ErrorInfo(GangNeedsSharedFolder.__name__, message), host=host)
        err = folder.read_error(directory)
        if code == 0 and folder.has_result(directory):
            return outcome_of(aid, exit_code=0, host=host)
        lost = run.failure if run.failure and run.failure.startswith(("lost:", "oom:")) \
            else None
        if lost is not None and (err is None or err.get("type") == "RankLost"):
            from steadyrun.executors.ray.preempted import node_loss

            kind, _, message = lost.partition(":")
            kind, message = node_loss(kind, message.strip(), directory, run.submitted)
            if kind == "preempted":
                return Outcome(aid, kind, message=message, host=host)
            return Outcome(aid, kind, message=message.strip(), host=host,
                           error=ErrorInfo("RayGangLost", message.strip(), oom=kind == "oom"))
        return outcome_of(aid, exit_code=code if code is not None else 1, error=err,
                          has_result=folder.has_result(directory), host=host,
                          process="the gang")

    def _write_info(self, run: GangRun) -> None:
        """Complete ``ray.json``: where each node ran (Ray node id, address, pid)."""
        from steadyrun.executors.ray.nodes import task_id
        from steadyrun.executors.ray.task import RAY_INFO_FILE, write_json

        nodes = []
        for k, ref in enumerate(run.nodes):
            end = run.ends.get(k)
            entry: dict[str, Any] = {"node_rank": k, "task_id": task_id(ref)}
            if isinstance(end, dict):
                entry.update({n: end.get(n) for n in ("node_id", "node_ip", "host", "pid",
                                                      "exit_code", "started", "ended")})
            elif end is not None:
                entry["error"] = f"{type(end).__name__}: {end}"[:2000]
            nodes.append(entry)
        with contextlib.suppress(OSError):
            write_json(Path(run.spec.attempt_dir) / RAY_INFO_FILE, {
                "attempt_id": run.spec.attempt_id, "nonce": run.info.get("nonce"),
                "address": self.ex.address, "namespace": self.ex.namespace,
                "submitted_at": run.submitted, "state": "ended",
                "stop_kind": run.stop_kind, "failure": run.failure,
                "master_addr": run.master[0] if run.master else None,
                "master_port": run.master[1] if run.master else None,
                "gang": self.ex.gang.to_dict(), "nodes": nodes, "ended_at": time.time()})


def _bundle(per_node: Any) -> dict[str, float]:
    """One node's share as a placement group bundle (Ray wants no zero entries)."""
    bundle: dict[str, float] = {"CPU": float(per_node.cpus)}
    if per_node.gpus:
        bundle["GPU"] = float(per_node.gpus)
    if per_node.memory_bytes:
        bundle["memory"] = float(per_node.memory_bytes)
    return {k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.01}


def _ray_failure(exc: BaseException, what: str) -> str:
    """``"kind: message"`` for a Ray exception that ended a gang's task."""
    from steadyrun.executors.ray.nodes import classify

    kind, message = classify(exc)
    return f"{kind}: {what}: {message}"
