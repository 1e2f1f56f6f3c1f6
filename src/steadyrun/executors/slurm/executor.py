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
   (the kind ``stop`` asked for wins); NODE_FAIL/BOOT_FAIL -> ``lost``; requeued, PREEMPTED
   or exit 76 -> ``preempted`` (:mod:`~steadyrun.executors.slurm.states`, ``.preempt``).
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
from steadyrun.attempt.names import PREEMPT_ON_TERM_ENV
from steadyrun.config import secrets
from steadyrun.errors import ExecutorError, MissingSecret
from steadyrun.executors.base import AttemptSpec, Capacity, Executor, Outcome
from steadyrun.executors.slurm import gang as sg
from steadyrun.executors.slurm import preempt as sp
from steadyrun.executors.slurm import sbatch as sb
from steadyrun.executors.slurm import shipping, states, submission
from steadyrun.executors.slurm.records import (  # noqa: F401 - _gres_gpus: imported from here
    INFO_FILE,
    _gres_gpus,
    cancel_recorded,
    final_states,
    job_outcome,
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
    warned: bool = False  # the job asked for a warning signal before its time limit
    started: bool = False  # seen running: PENDING again means requeued
    requeued: str = ""  # why the job counts as requeued (empty: it does not)
    signalled_at: float | None = None  # asked to save and stop (SIGUSR1), at


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
    ``signal="USR1@90"`` gives the job SIGUSR1 that long before its time limit, and
    ``requeue=True`` lets Slurm requeue it (else ``--no-requeue``): either way the
    payload saves (``run.on_preempt``, a class ``checkpoint()``), the attempt ends
    ``preempted`` and the next one resumes as a new job; ``grace_period`` is the time
    the worker gives the payload to save
    (:mod:`steadyrun.executors.slurm.preempt`).
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
    #: ``stop(..., "preempted")`` sends SIGUSR1 (``Task(checkpoint_on_timeout=True)``).
    can_preempt = True

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
                 container_workdir: str | None = None, packager: Any = None,
                 signal: str | None = None, requeue: bool = False,
                 grace_period: float = 30.0) -> None:
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
        self.signal, self._warning = signal, sp.parse_signal(signal)
        self.requeue, self.grace_period = bool(requeue), sp.check_grace(grace_period)
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
        self._to_signal: list[str] = []  # asked to save and stop (SIGUSR1)
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
                key = tuple(self._directives(spec.resources, _depends_on(spec),
                                             checkpoint=_checkpoints(spec)))
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
                if self._to_cancel or self._to_signal:
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
            if kind == "preempted" and att.started and att.warned:  # it saves first
                att.signalled_at = time.monotonic()
                self._to_signal.append(att.key)
            else:
                self._to_cancel.append(att.key)

    @classmethod
    def reclaim(cls, attempt_dir: Path) -> str | None:
        """A Slurm job outlives its controller: cancel the one the attempt folder
        records (``scancel``), besides any worker of it still running here."""
        note = super().reclaim(attempt_dir)
        requeued = sp.reclaim_recorded(attempt_dir)
        if requeued:
            return requeued + (f"; {note}" if note else "")
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
                "log_sync_interval": self.log_sync_interval, "signal": self.signal,
                "requeue": self.requeue, "grace_period": self.grace_period,
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
            key = tuple(self._directives(spec.resources, _depends_on(spec),
                                         checkpoint=_checkpoints(spec)))
            groups.setdefault(key if self.array else (*key, spec.attempt_id), []).append(spec)
        scripts = []
        for group in groups.values():
            where = group[0].attempt_dir
            base = (os.fspath(submission.local_base(self.tunnel, where)) if self.tunnel.local
                    else submission.remote_base(self.tunnel, where))
            scripts.append(self._script(group, posixpath.join(base, "<submission>")))
        return "\n".join(scripts)

    # -- submission ------------------------------------------------------------------------

    def _directives(self, res: Resources, depends_on: Sequence[str] = (),
                    count: int | None = None, name: str | None = None,
                    checkpoint: bool = False) -> list[str]:
        """``#SBATCH`` lines for attempts with ``res``; ``count``/``name`` add the per-job
        lines (array, job name, logs), left out when grouping; ``checkpoint``: the
        task checkpoints on timeout (a warning signal by itself)."""
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
        warning = self._warning_for(checkpoint)
        opts += [("signal", None if warning is None else f"B:{warning[0]}@{warning[1]}"),
                 ("requeue" if self.requeue else "no-requeue", True)]
        opts += list(self._extra.items())
        if depends_on:
            opts += [("dependency", "afterok:" + ":".join(depends_on)),
                     ("kill-on-invalid-dep", "yes")]
        lines = [sb.directive(k, v) for k, v in opts]
        return [line for line in lines if line is not None]

    def _script(self, group: list[AttemptSpec], submit_dir: str) -> str:
        name = f"sr-{group[0].task}" + (f"+{len(group) - 1}" if len(group) > 1 else "")
        checkpoint = _checkpoints(group[0])
        directives = self._directives(group[0].resources, _depends_on(group[0]),
                                      count=len(group), name=name, checkpoint=checkpoint)
        warning = self._warning_for(checkpoint)
        # on a remote cluster the worker cannot follow its link to the task's folder
        remote = None if self.tunnel.local else posixpath.dirname(submit_dir)
        entries = [sb.ScriptEntry(i, dict(spec.env) if remote is None else {
            **spec.env, context.TASK_DIR_ENV: posixpath.join(
                remote, "work", task_dir_name(spec.task))}) for i, spec in enumerate(group)]
        env = secrets.resolve_env(self.env, "SlurmExecutor(env=...)")
        if self.tunnel.local:  # modules importable here are importable in the job
            env.setdefault(worker.PARENT_PATH_ENV, os.pathsep.join(p for p in sys.path if p))
        env[worker.GRACE_ENV] = f"{sp.worker_grace(warning, self.grace_period):g}"
        if self.requeue:  # a requeue sends SIGTERM: the payload saves
            env[PREEMPT_ON_TERM_ENV] = "1"
        python = self.python or (sys.executable if self.tunnel.local else "python3")
        return sb.render_script(directives=directives, submit_dir=submit_dir, entries=entries,
                                python=python, env=env, container_image=self.container_image,
                                setup_lines=[*self._shipper.lines(group, python),
                                             *self.setup_lines],
                                **self._shipper.container_options(),
                                module=None if self.gang is None else sg.LEADER_MODULE,
                                signal=None if warning is None else warning[0])

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
        local_dir = submission.new_submission_dir(self.tunnel, group[0].attempt_dir)
        remote_dir = (os.fspath(local_dir) if self.tunnel.local else
                      posixpath.join(submission.remote_base(self.tunnel, group[0].attempt_dir),
                                     local_dir.name))
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
                    spec, key, job_id, posixpath.join(remote_dir, str(i)),
                    warned=self._warning_for(_checkpoints(spec)) is not None)
                self._by_key[key] = spec.attempt_id
                with contextlib.suppress(OSError):
                    folder.atomic_write(Path(spec.attempt_dir) / INFO_FILE, json.dumps(
                        {"job_id": job_id, "key": key, "submission_dir": remote_dir,
                         "tunnel": self.tunnel.to_config()}).encode())
        self._next_poll = min(self._next_poll, time.monotonic() + self.poll_interval)

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
                att.started = att.started or info.state in states.STARTED_STATES
        self._follow_requeues(active, queue)
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
        found, accounting = final_states(self.tunnel, keys, self._accounting)
        if accounting is False and self._accounting is None:
            self._warn_once("Slurm accounting is disabled on this cluster: the state of "
                            "finished jobs comes from `scontrol show job`", level=logging.INFO)
        self._accounting = accounting
        return found

    def _follow_requeues(self, active: dict[str, _Attempt],
                         queue: dict[str, sb.JobInfo]) -> None:
        """Cancel requeued jobs (``preempted``) and those deaf to SIGUSR1 for long."""
        try:
            due = sp.due_for_cancel(self.tunnel, active.values(), queue, self.grace_period)
        except ExecutorError as e:  # the tunnel dropped: the next poll looks again
            self._warn_once(f"could not read requeued jobs: {e}")
            return
        self._to_cancel += [att.key for att in due]

    def _settle_if_final(self, att: _Attempt, info: sb.JobInfo | None) -> None:
        if info is not None and info.state in sb.ACTIVE_STATES:
            return  # left squeue's view but not finished yet: next poll
        if info is None:
            att.unknown_polls += 1
            if att.unknown_polls < 3:
                return  # squeue and the job record may disagree for a moment
        self._fetch(att, _FETCHED, final=True)
        outcome = job_outcome(att, info)
        self._attempts.pop(att.spec.attempt_id, None)
        self._by_key.pop(att.key, None)
        self._done.append(outcome)

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
        signals, self._to_signal = self._to_signal, []
        if signals:  # the batch shell passes it on to the worker
            self.tunnel.run(["scancel", "--batch", "--signal=USR1", *signals])
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

    def _warning_for(self, checkpoint: bool) -> tuple[str, int] | None:
        return sp.warning_for(self._warning, checkpoint, self.grace_period)

    def _warn_once(self, message: str, level: int = logging.WARNING) -> None:
        if message not in self._warned:
            self._warned.add(message)
            _log.log(level, "steadyrun: %s", message)

    def __repr__(self) -> str:
        return (f"SlurmExecutor(partition={self.partition!r}, time={self.time!r}"
                f"{sg.describe(self.gang)}, "
                f"tunnel={self.tunnel!r})")


# --- helpers ----------------------------------------------------------------------------


def _checkpoints(spec: AttemptSpec) -> bool:
    """Whether the attempt's task checkpoints at its time limit."""
    return spec.checkpoint_on_timeout


def _depends_on(spec: AttemptSpec) -> list[str]:
    """Job keys this attempt waits for (``spec.depends_on_jobs``, set by an engine that
    launches dependants early)."""
    return [str(j) for j in (getattr(spec, "depends_on_jobs", None) or [])]


__all__ = ["LocalTunnel", "SSHTunnel", "SlurmExecutor", "Tunnel"]
