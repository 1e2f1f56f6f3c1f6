"""Run attempts as Slurm jobs, on this machine's cluster or through SSH.

``SlurmExecutor(partition=..., time="01:00:00", tunnel=LocalTunnel() | SSHTunnel(...))``
writes one batch script per submission that runs the same worker as the local executor
(``python -m steadyrun.attempt.worker ATTEMPT_DIR``), so a task behaves the same here and there.

How it works, as rules:

1. Attempts admitted in one pass (``launch_many``) with the same sbatch options go in ONE
   job array (``--array=0-N``); index ``i`` runs the attempt folder linked (or, through
   SSH, copied) as ``SUBMISSION/i``; ``SUBMISSION/index.json`` says which is which. Tasks
   whose resources differ go in separate jobs. ``array=False`` submits one job each.
2. ``--output``/``--error`` are the attempt's ``stdout.log``/``stderr.log`` (appended to),
   so Slurm's own notes (time limit, memory kill) land in the attempt's log.
3. Status costs ONE ``squeue`` call per poll for all jobs, whatever their number. Jobs
   that left the queue are looked up in ONE ``sacct`` call, or, when the cluster has no
   accounting (detected once, said once), in ONE ``scontrol show job`` call.
4. Final states: COMPLETED -> the worker's result (``result.pkl``/``error.json``);
   FAILED -> ``error`` with the exit code (``oom`` when Slurm killed it for memory);
   OUT_OF_MEMORY -> ``oom``; TIMEOUT/DEADLINE -> ``timeout``; CANCELLED -> ``cancelled``
   (or the kind ``stop`` asked for); PREEMPTED/NODE_FAIL/BOOT_FAIL -> ``lost``.
5. ``stop`` cancels with ``scancel`` (``JOBID_INDEX`` for array elements), batched into
   one call per poll; ``close`` cancels every job still queued or running.
6. Through SSH the results and logs are copied back before an outcome is reported; the
   logs of running jobs are copied back every ``log_sync_interval`` seconds.
7. ``nodes=N``, ``ntasks_per_node=M`` (more than one rank) or a ``launcher`` make each
   attempt a gang of ``N x M`` ranks in one job (:mod:`steadyrun.executors.slurm.gang`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadyrun.attempt import context, folder, worker
from steadyrun.config import secrets
from steadyrun.errors import ExecutorError, MissingSecret
from steadyrun.executors.base import AttemptSpec, Capacity, ErrorInfo, Executor, Outcome
from steadyrun.executors.slurm import gang as sg
from steadyrun.executors.slurm import sbatch as sb
from steadyrun.executors.slurm import shipping
from steadyrun.executors.slurm.records import (  # noqa: F401 - _gres_gpus: imported from here
    INFO_FILE,
    _error_outcome,
    _gres_gpus,
    _read_error,
    _tail,
    cancel_recorded,
)
from steadyrun.executors.slurm.tunnel import LocalTunnel, SSHTunnel, Tunnel, tunnel_from_config
from steadyrun.launchers import launcher_config, launcher_of, resolve_gang, write_gang
from steadyrun.store.files import task_dir_name
from steadyrun.task import Resources

_log = logging.getLogger("steadyrun.executors.slurm.executor")
_FETCHED = (folder.STDOUT_LOG, folder.STDERR_LOG, folder.RESULT_FILE, folder.ERROR_FILE)
_LOGS = (folder.STDOUT_LOG, folder.STDERR_LOG)


@dataclass
class _Attempt:
    spec: AttemptSpec
    key: str  # "ID" or "ARRAYID_INDEX": what squeue prints and scancel takes
    job_id: str
    remote_dir: str
    stop_kind: str | None = None
    state: str = "PENDING"
    unknown_polls: int = 0


class SlurmExecutor(Executor):
    """Runs each attempt as a Slurm job (or an element of a job array).

    Options map to sbatch: ``partition``, ``account``, ``time``, ``gpus_per_node``,
    ``mem`` (``"4G"``, per node), ``cpus_per_task``, ``qos``, ``constraint``,
    ``exclusive``; anything else through ``additional_parameters``
    (``{"mail_type": "END"}``), checked against sbatch's options. A task's ``Resources``
    give ``--cpus-per-task``, ``--mem`` and ``--gpus-per-node`` unless the executor sets
    them. ``nodes``, ``ntasks_per_node`` and ``launcher`` (None, ``"torchrun"`` or
    ``run.Torchrun(...)``) make each attempt a gang of ``nodes x ntasks_per_node`` ranks
    in one job, with ``torch.distributed``'s variables set (plain ranks also see
    ``SLURM_PROCID``/``SLURM_LOCALID``); ``Resources`` and ``cpus_per_task`` are then per
    rank, and a gang that cannot fit the partition's nodes is refused before submission.
    ``setup_lines`` are shell lines run before the worker (``module load ...``);
    ``container_image`` runs the worker with ``srun --container-image`` (pyxis), with
    ``container_mounts`` and ``container_workdir``; ``packager`` ships the experiment's
    code and runs in it (:mod:`steadyrun.executors.slurm.shipping`).
    ``python`` is the interpreter on the compute nodes (default: this one locally,
    ``python3`` through SSH); ``env`` is exported in every job: values are strings or
    ``run.Secret("NAME")`` (read from this process's environment at each submission;
    the store keeps names only, and a plain value is read back from the variable of the
    same name on ``resume``). The batch script itself (``job.sh``, 0700, in the
    submission folder) holds the values while the job exists. ``oversubscribe``
    multiplies the cluster's capacity as the engine sees it, so that more tasks wait in
    Slurm's queue than the cluster runs at once.

    Raises :class:`~steadyrun.errors.ExecutorError` for an unknown sbatch parameter (the
    message lists the valid ones), a value that cannot be written into a batch script,
    or a submission that Slurm refuses (with sbatch's own message).
    """

    name = "slurm"
    #: The executor can hold a dependant job until its dependencies succeed (afterok).
    supports_dependencies = True

    def __init__(self, partition: str | None = None, account: str | None = None,
                 time: str | int | None = "01:00:00", nodes: int = 1,
                 ntasks_per_node: int = 1, gpus_per_node: int | None = None,
                 mem: str | None = None, cpus_per_task: int | None = None,
                 qos: str | None = None, constraint: str | None = None,
                 exclusive: bool = False,
                 additional_parameters: Mapping[str, Any] | None = None,
                 setup_lines: Sequence[str] | None = None, container_image: str | None = None,
                 tunnel: Tunnel | Mapping[str, Any] | None = None, array: bool = True,
                 array_parallelism: int | None = None, poll_interval: float = 1.0,
                 python: str | None = None, env: Mapping[str, Any] | None = None,
                 oversubscribe: float = 1.0, log_sync_interval: float | None = 10.0,
                 launcher: Any = None, container_mounts: Sequence[str] | None = None,
                 container_workdir: str | None = None, packager: Any = None) -> None:
        self.partition, self.account, self.time = partition, account, time
        self.gang = resolve_gang(nodes, ntasks_per_node, launcher, "SlurmExecutor")
        self.nodes, self.ntasks_per_node = nodes, ntasks_per_node
        self.launcher = launcher_of(launcher, "SlurmExecutor")
        self.gpus_per_node, self.mem, self.cpus_per_task = gpus_per_node, mem, cpus_per_task
        self.qos, self.constraint, self.exclusive = qos, constraint, bool(exclusive)
        self.additional_parameters = dict(additional_parameters or {})
        self._extra = sb.normalize_parameters(self.additional_parameters)
        if isinstance(setup_lines, str):
            setup_lines = [setup_lines]
        self.setup_lines = [str(line) for line in (setup_lines or [])]
        self.container_image = container_image
        self._shipper = shipping.Shipper(self, packager, container_mounts, container_workdir)
        self.tunnel = tunnel_from_config(tunnel)
        self.array = bool(array)
        self.array_parallelism = array_parallelism
        if not isinstance(poll_interval, int | float) or poll_interval <= 0:
            raise ExecutorError(f"SlurmExecutor(poll_interval={poll_interval!r}): give "
                                "seconds > 0")
        if not isinstance(oversubscribe, int | float) or oversubscribe < 1:
            raise ExecutorError(f"SlurmExecutor(oversubscribe={oversubscribe!r}): give a "
                                "factor >= 1")
        self.poll_interval = float(poll_interval)
        self.python = python
        self.env = secrets.check_env(env, "SlurmExecutor")
        self.oversubscribe = float(oversubscribe)
        self.log_sync_interval = log_sync_interval
        self._directives(Resources())  # checks every option value now, not at launch
        self._lock = threading.RLock()
        self._attempts: dict[str, _Attempt] = {}
        self._by_key: dict[str, str] = {}
        self._done: deque[Outcome] = deque()
        self._to_cancel: list[str] = []
        self._accounting: bool | None = None
        self._warned: set[str] = set()
        self._next_poll = 0.0
        self._last_log_sync = 0.0
        self._capacity: Capacity | None = None
        self._nodes: dict[str, sg.NodeShape] | None = None
        self._closed = False

    # -- the contract ------------------------------------------------------------------

    def open(self) -> None:
        """Nothing to start: the tunnel connects on its first command."""
        self._closed = False

    def close(self) -> None:
        """Cancel (scancel) every job of this executor still queued or running, and drop
        the tunnel's connection. Idempotent."""
        with self._lock:
            for att in self._attempts.values():
                if att.stop_kind is None:
                    att.stop_kind = "cancelled"
                    self._to_cancel.append(att.key)
            try:
                self._flush_cancels()
            except ExecutorError as e:
                _log.warning("steadyrun: could not cancel Slurm jobs on close: %s", e)
            self._closed = True
            self.tunnel.close()

    def capacity(self) -> Capacity:
        """The cluster (or ``partition``) as ``sinfo`` reports it, summed over nodes and
        multiplied by ``oversubscribe``; very large when sinfo cannot tell."""
        if self._capacity is None:
            self._nodes = sg.query_nodes(self.tunnel, self.partition, self._warn_once)
            self._capacity = sg.capacity_of(self._nodes, self.oversubscribe)
        return self._capacity

    def check(self, resources: Resources, task: str | None = None) -> None:
        """Refuse (InsufficientResources) what could never run: more than all nodes, one
        node's share (``ntasks_per_node`` ranks) larger than any node, too many nodes."""
        self.capacity()  # reads the nodes
        sg.check_nodes(self._nodes, self.gang, sg.share_of(self, resources), resources,
                       self.partition, task)
        super().check(resources, task)

    def launch(self, spec: AttemptSpec) -> None:
        """Submit one attempt as one job. Raises ExecutorError when it cannot be."""
        failed = self.launch_many([spec])
        if failed:
            raise failed[spec.attempt_id]

    def launch_many(self, specs: list[AttemptSpec]) -> dict[str, Exception]:
        """Submit the attempts: one job array per group of equal sbatch options (one job
        each with ``array=False``). Returns the attempts that could not be submitted."""
        failed: dict[str, Exception] = {}
        groups: dict[tuple[str, ...], list[AttemptSpec]] = {}
        for spec in specs:
            try:
                self._prepare(spec)
                key = tuple(self._directives(spec.resources, _depends_on(spec)))
            except (ExecutorError, MissingSecret) as e:
                failed[spec.attempt_id] = e
                continue
            if self.array:
                groups.setdefault(key, []).append(spec)
            else:
                groups[(*key, spec.attempt_id)] = [spec]
        for group in groups.values():
            try:
                self._submit(group)
            except ExecutorError as e:
                failed.update({s.attempt_id: e for s in group})
        return failed

    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes that arrived; polls Slurm at most once per ``poll_interval``."""
        deadline = time.monotonic() + max(0.0, float(timeout))
        while True:
            with self._lock:
                if self._to_cancel:
                    self._flush_cancels_quietly()
                if self._done:
                    out = list(self._done)
                    self._done.clear()
                    return out
                now = time.monotonic()
                if self._attempts and now >= self._next_poll:
                    self._poll()
                    self._next_poll = time.monotonic() + self.poll_interval
                    continue
            now = time.monotonic()
            if now >= deadline:
                return []
            until = min(deadline, self._next_poll) if self._attempts else deadline
            time.sleep(max(0.0, until - now))

    def stop(self, attempt_id: str, kind: str) -> None:
        """Cancel the attempt's job (or array element) with scancel; its outcome then
        arrives with ``kind``. Stopping an attempt that ended does nothing."""
        with self._lock:
            att = self._attempts.get(attempt_id)
            if att is None or att.stop_kind is not None:
                return
            att.stop_kind = kind
            self._to_cancel.append(att.key)

    @classmethod
    def reclaim(cls, attempt_dir: Path) -> str | None:
        """A Slurm job outlives its controller: cancel the one the attempt folder
        records (``scancel``), besides any worker of it still running here."""
        note = super().reclaim(attempt_dir)
        if cancel_recorded(attempt_dir):
            return "cancelled its Slurm job" + (f"; {note}" if note else "")
        return note

    def to_config(self) -> dict[str, Any]:
        return {"type": "SlurmExecutor", "partition": self.partition, "account": self.account,
                "time": self.time, "nodes": self.nodes,
                "ntasks_per_node": self.ntasks_per_node, "gpus_per_node": self.gpus_per_node,
                "mem": self.mem, "cpus_per_task": self.cpus_per_task, "qos": self.qos,
                "constraint": self.constraint, "exclusive": self.exclusive,
                "additional_parameters": dict(self.additional_parameters),
                "setup_lines": list(self.setup_lines),
                "container_image": self.container_image, "tunnel": self.tunnel.to_config(),
                "array": self.array, "array_parallelism": self.array_parallelism,
                "poll_interval": self.poll_interval, "python": self.python,
                "env": secrets.env_to_config(self.env), "oversubscribe": self.oversubscribe,
                "log_sync_interval": self.log_sync_interval,
                "launcher": launcher_config(self.launcher), **self._shipper.config()}

    # -- beyond the contract -------------------------------------------------------------

    def job_key(self, attempt_id: str) -> str | None:
        """The Slurm job of a submitted attempt (``"ID"`` or ``"ARRAYID_INDEX"``), or None.
        This is what ``--dependency=afterok:`` and ``scancel`` take."""
        att = self._attempts.get(attempt_id)
        return None if att is None else att.key

    def dryrun(self, specs: AttemptSpec | Sequence[AttemptSpec]) -> str:
        """The batch script(s) that ``launch_many(specs)`` would submit, without writing
        or submitting anything (it returns the executor's env values as the script exports
        them; it prints nothing). The submission folder's name is chosen at submit time and
        shows here as ``<submission>``; the submitted script is kept beside the attempts
        as ``job.sh``."""
        items = [specs] if isinstance(specs, AttemptSpec) else list(specs)
        groups: dict[tuple[str, ...], list[AttemptSpec]] = {}
        for spec in items:
            key = tuple(self._directives(spec.resources, _depends_on(spec)))
            groups.setdefault(key if self.array else (*key, spec.attempt_id), []).append(spec)
        scripts = []
        for group in groups.values():
            base = self._remote_base(group) if not self.tunnel.local else os.fspath(
                self._local_base(group))
            scripts.append(self._script(group, posixpath.join(base, "<submission>")))
        return "\n".join(scripts)

    # -- submission ------------------------------------------------------------------------

    def _directives(self, res: Resources, depends_on: Sequence[str] = (),
                    count: int | None = None, name: str | None = None) -> list[str]:
        """``#SBATCH`` lines for attempts with ``res``; ``count``/``name`` add the per-job
        lines (array, job name, logs), left out when grouping."""
        opts: list[tuple[str, Any]] = []
        if name is not None:
            index = "%a" if count is not None and count > 1 else "0"
            opts += [("job-name", sb.job_name(name)),
                     ("output", f"{index}/{folder.STDOUT_LOG}"),
                     ("error", f"{index}/{folder.STDERR_LOG}"), ("open-mode", "append")]
            if count is not None and count > 1:
                opts.append(("array", sb.array_spec(count, self.array_parallelism)))
        share = sg.share_of(self, res)  # a gang: one node agent per node, and its ranks
        time_limit = sb.time_option(self.time)
        opts += [("partition", self.partition), ("account", self.account),
                 ("qos", self.qos), ("time", time_limit), ("nodes", share.nodes),
                 ("ntasks-per-node", share.tasks), ("cpus-per-task", share.cpus),
                 ("mem", share.mem), ("gpus-per-node", share.gpus),
                 ("constraint", self.constraint),
                 ("exclusive", self.exclusive or None)]
        opts += list(self._extra.items())
        if depends_on:
            opts += [("dependency", "afterok:" + ":".join(depends_on)),
                     ("kill-on-invalid-dep", "yes")]
        lines = [sb.directive(k, v) for k, v in opts]
        return [line for line in lines if line is not None]

    def _script(self, group: list[AttemptSpec], submit_dir: str) -> str:
        name = f"sr-{group[0].task}" + (f"+{len(group) - 1}" if len(group) > 1 else "")
        directives = self._directives(group[0].resources, _depends_on(group[0]),
                                      count=len(group), name=name)
        # on a remote cluster the worker cannot follow its link to the task's folder
        remote = None if self.tunnel.local else posixpath.dirname(submit_dir)
        entries = [sb.ScriptEntry(i, dict(spec.env) if remote is None else {
            **spec.env, context.TASK_DIR_ENV: posixpath.join(
                remote, "work", task_dir_name(spec.task))}) for i, spec in enumerate(group)]
        env = secrets.resolve_env(self.env, "SlurmExecutor(env=...)")
        if self.tunnel.local:  # modules importable here are importable in the job
            env.setdefault(worker.PARENT_PATH_ENV, os.pathsep.join(p for p in sys.path if p))
        python = self.python or (sys.executable if self.tunnel.local else "python3")
        return sb.render_script(directives=directives, submit_dir=submit_dir, entries=entries,
                                python=python, env=env, container_image=self.container_image,
                                setup_lines=[*self._shipper.lines(group, python),
                                             *self.setup_lines],
                                **self._shipper.container_options(),
                                module=None if self.gang is None else sg.LEADER_MODULE)

    def _prepare(self, spec: AttemptSpec) -> None:
        if not os.path.isdir(spec.attempt_dir):
            raise ExecutorError(f"attempt {spec.attempt_id} of task {spec.task!r}: its folder "
                                f"{os.fspath(spec.attempt_dir)!r} does not exist")
        # the payload file keeps env names only; a Script's values go with the job's
        # own variables (secrets are read now, in this process)
        payload, handed = secrets.handoff(spec.payload, f"task {spec.task!r}")
        if handed is not None:
            spec.env[worker.HANDED_ENV] = handed
        try:
            worker.write_payload(payload, spec.attempt_dir)
            if self.gang is not None:  # the first node's leader and the agents read it
                write_gang(spec.attempt_dir, self.gang)
        except Exception as e:
            raise ExecutorError(
                f"attempt {spec.attempt_id} of task {spec.task!r}: its payload cannot be "
                f"written ({type(e).__name__}: {e}); use module-level functions and "
                "picklable arguments") from e

    def _submit(self, group: list[AttemptSpec]) -> None:
        if self._closed:
            raise ExecutorError("the Slurm executor is closed")
        local_dir = self._new_submission_dir(group)
        remote_dir = (os.fspath(local_dir) if self.tunnel.local else
                      posixpath.join(self._remote_base(group), local_dir.name))
        index = {}
        for i, spec in enumerate(group):
            os.symlink(os.path.abspath(spec.attempt_dir), local_dir / str(i))
            index[str(i)] = {"attempt_id": spec.attempt_id, "task": spec.task,
                             "attempt_dir": os.path.abspath(spec.attempt_dir)}
        self._shipper.ship(group)  # the package, once per content on the cluster
        script = self._script(group, remote_dir)
        folder.atomic_write(local_dir / "job.sh", script.encode(), 0o700)
        folder.atomic_write(local_dir / "index.json", json.dumps(index, indent=1).encode())
        if not self.tunnel.local:
            self.tunnel.put(local_dir, remote_dir)
        res = self.tunnel.run(["sbatch", "--parsable", f"--chdir={remote_dir}",
                               posixpath.join(remote_dir, "job.sh")])
        if res.returncode != 0:
            raise ExecutorError(f"sbatch refused the job for task {group[0].task!r}"
                                + (f" and {len(group) - 1} more" if len(group) > 1 else "")
                                + f": {(res.stderr or res.stdout).strip()}")
        job_id = sb.parse_job_id(res.stdout)
        with self._lock:
            for i, spec in enumerate(group):
                key = f"{job_id}_{i}" if len(group) > 1 else job_id
                self._attempts[spec.attempt_id] = _Attempt(
                    spec, key, job_id, posixpath.join(remote_dir, str(i)))
                self._by_key[key] = spec.attempt_id
                with contextlib.suppress(OSError):
                    folder.atomic_write(Path(spec.attempt_dir) / INFO_FILE, json.dumps(
                        {"job_id": job_id, "key": key, "submission_dir": remote_dir,
                         "tunnel": self.tunnel.to_config()}).encode())
        self._next_poll = min(self._next_poll, time.monotonic() + self.poll_interval)

    def _local_base(self, group: list[AttemptSpec]) -> Path:
        """Where submission folders go here: the tunnel's ``job_dir`` (local) or
        ``slurm/`` in the experiment's folder."""
        first = Path(os.path.abspath(group[0].attempt_dir))
        experiment = first.parents[2] if first.parent.parent.name == "tasks" else first.parent
        if self.tunnel.local and self.tunnel.job_dir:
            return Path(self.tunnel.job_dir) / experiment.name
        return experiment / "slurm"

    def _remote_base(self, group: list[AttemptSpec]) -> str:
        return posixpath.join(str(self.tunnel.job_dir), self._local_base(group).parent.name)

    def _new_submission_dir(self, group: list[AttemptSpec]) -> Path:
        base = self._local_base(group)
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

    # -- polling ---------------------------------------------------------------------------

    def _poll(self) -> None:
        """One squeue call for every job; one sacct/scontrol call for those that left."""
        active = dict(self._attempts)
        try:
            res = self.tunnel.run(["squeue", "-h", "-r", "-j",
                                   ",".join(sb.split_keys(a.key for a in active.values())),
                                   "-o", "%i %T %r"])
        except ExecutorError as e:
            self._warn_once(f"squeue failed: {e}")
            return
        if res.returncode != 0 and "invalid job id" not in res.stderr.lower():
            self._warn_once(f"squeue failed: {res.stderr.strip()}")
            return
        queue = sb.parse_squeue(res.stdout) if res.returncode == 0 else {}
        left = []
        for aid, att in active.items():
            info = queue.get(att.key)
            if info is None or info.state not in sb.ACTIVE_STATES:
                left.append(aid)
            else:
                att.state = info.state
        if left:
            try:
                finals = self._final_states([active[aid].key for aid in left])
            except ExecutorError as e:  # the tunnel dropped: the next poll asks again
                self._warn_once(f"could not read finished jobs: {e}")
                return
            for aid in left:
                self._settle_if_final(active[aid], finals.get(active[aid].key))
        self._sync_logs(active)

    def _final_states(self, keys: list[str]) -> dict[str, sb.JobInfo]:
        ids = ",".join(sb.split_keys(keys))
        found: dict[str, sb.JobInfo] = {}
        if self._accounting is not False:
            res = self.tunnel.run(["sacct", "-n", "-P", "-X", "-j", ids,
                                   "-o", "JobID,State,ExitCode,Reason"])
            said = (res.stdout + res.stderr).lower()
            if sb.ACCOUNTING_DISABLED in said:
                self._accounting = False
                self._warn_once("Slurm accounting is disabled on this cluster: the state of "
                                "finished jobs comes from `scontrol show job`", level=logging.INFO)
            elif res.returncode == 0:
                self._accounting = True
                found = {k: v for k, v in sb.parse_sacct(res.stdout).items()
                         if v.state not in sb.ACTIVE_STATES}
        missing = [k for k in keys if k not in found]
        if missing:
            job_ids = sb.split_keys(missing)
            cmd = ["scontrol", "-o", "show", "job"] + (job_ids if len(job_ids) == 1 else [])
            res = self.tunnel.run(cmd)
            if res.returncode == 0:
                found.update(sb.parse_scontrol(res.stdout))
        return found

    def _settle_if_final(self, att: _Attempt, info: sb.JobInfo | None) -> None:
        if info is not None and info.state in sb.ACTIVE_STATES:
            return  # left squeue's view but not finished yet: next poll
        if info is None:
            att.unknown_polls += 1
            if att.unknown_polls < 3:
                return  # squeue and the job record may disagree for a moment
        self._fetch(att, _FETCHED, final=True)
        outcome = self._outcome(att, info)
        self._attempts.pop(att.spec.attempt_id, None)
        self._by_key.pop(att.key, None)
        self._done.append(outcome)

    def _outcome(self, att: _Attempt, info: sb.JobInfo | None) -> Outcome:
        aid, directory = att.spec.attempt_id, os.fspath(att.spec.attempt_dir)
        has_result = folder.has_result(directory)
        found = _read_error(directory)
        err, err_code = found if found is not None else (None, None)
        if info is None:  # Slurm forgot the job (purged, no accounting): trust the files
            if has_result:
                return Outcome(aid, None, exit_code=0)
            if err is not None:
                return _error_outcome(aid, "oom" if err.oom else "error", err_code, err)
            return Outcome(aid, att.stop_kind or "lost",
                           message=f"Slurm no longer knows job {att.key} and it left no result")
        kind, exit_code, message = sb.classify(info, att.stop_kind, _tail(directory))
        if kind is None:
            if has_result:
                return Outcome(aid, None, exit_code=0)
            if err is not None:
                return _error_outcome(aid, "error", exit_code, err)
            return Outcome(aid, "lost", exit_code=exit_code,
                           message=f"{message} but left no {folder.RESULT_FILE}")
        if kind in ("error", "oom") and err is not None:
            return _error_outcome(aid, "oom" if err.oom else kind,
                                  exit_code if exit_code is not None else err_code, err)
        return Outcome(aid, kind, exit_code=exit_code, message=message,
                       error=ErrorInfo("SlurmJob" + info.state.title().replace("_", ""),
                                       message) if kind in ("error", "oom") else None)

    def _fetch(self, att: _Attempt, names: Sequence[str], final: bool = False) -> None:
        if self.tunnel.local:
            return
        try:
            self.tunnel.get(att.remote_dir, att.spec.attempt_dir, names)
            if self.gang is not None:
                sg.fetch_gang_files(self.tunnel, self.gang, att, final)
        except ExecutorError as e:
            self._warn_once(f"could not copy back {att.remote_dir}: {e}")

    def _sync_logs(self, active: dict[str, _Attempt]) -> None:
        if self.tunnel.local or not self.log_sync_interval:
            return
        now = time.monotonic()
        if now - self._last_log_sync < self.log_sync_interval:
            return
        self._last_log_sync = now
        for att in active.values():
            if att.spec.attempt_id in self._attempts and att.state == "RUNNING":
                self._fetch(att, _LOGS)

    def _flush_cancels(self) -> None:
        keys, self._to_cancel = self._to_cancel, []
        if keys:
            res = self.tunnel.run(["scancel", *keys])
            if res.returncode != 0 and "invalid job id" not in res.stderr.lower():
                raise ExecutorError(f"scancel {' '.join(keys)} failed: {res.stderr.strip()}")

    def _flush_cancels_quietly(self) -> None:
        try:
            self._flush_cancels()
        except ExecutorError as e:
            self._warn_once(str(e))

    def _warn_once(self, message: str, level: int = logging.WARNING) -> None:
        if message not in self._warned:
            self._warned.add(message)
            _log.log(level, "steadyrun: %s", message)

    def __repr__(self) -> str:
        return (f"SlurmExecutor(partition={self.partition!r}, time={self.time!r}"
                f"{sg.describe(self.gang)}, "
                f"tunnel={self.tunnel!r})")


# --- helpers ----------------------------------------------------------------------------


def _depends_on(spec: AttemptSpec) -> list[str]:
    """Job keys this attempt waits for (``spec.depends_on_jobs``, set by an engine that
    launches dependants early)."""
    return [str(j) for j in (getattr(spec, "depends_on_jobs", None) or [])]


__all__ = ["LocalTunnel", "SSHTunnel", "SlurmExecutor", "Tunnel"]
