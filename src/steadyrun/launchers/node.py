"""One node of a gang: ``python -m steadyrun.launchers.node ATTEMPT_DIR``.

The node agent starts this node's ranks, watches them and ends them together:

- which node it is: ``$STEADYRUN_NODE_RANK``, else ``$SLURM_NODEID``, else 0;
- the rendezvous: ``$STEADYRUN_MASTER_ADDR``/``$STEADYRUN_MASTER_PORT``, else the
  address and port in ``gang.json``, else (a one-node gang) 127.0.0.1 and a free port;
- with :class:`~steadyrun.launchers.Torchrun`: one ``python -m torch.distributed.run``
  agent for the node (rendezvous hosted by node 0), which starts
  ``python -m steadyrun.launchers.rank`` per local rank; without: the rank processes
  directly, with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
  ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (and on Slurm ``SLURM_PROCID``,
  ``SLURM_LOCALID``, ``SLURM_NTASKS``) set as torchrun would;
- when a rank fails, the node's other ranks are stopped at once (SIGTERM, the grace
  period, SIGKILL) and the agent exits with the failing rank's status; on several nodes
  the backend stops the other nodes (Slurm's ``--kill-on-bad-exit``, Ray cancels);
- it samples its ranks into ``samples/node-<k>.jsonl`` (:mod:`steadyrun.launchers.sampling`);
- its ranks (and torchrun) are killed by the kernel when the agent dies, however it
  dies; it writes ``identity.json`` (node 0) or ``identity-node<k>.json`` before any rank
  starts, keeps every process of its ranks as a descendant, and ends them all when it is
  stopped with SIGTERM: a gang leaves no orphans;
- on a one-node gang (unless ``$STEADYRUN_GANG_COLLECTED`` says its backend does) it
  then gathers the ranks' ends into the attempt's files
  (:func:`steadyrun.launchers.collect.finish`).

Exit status: 0 when every rank of the node succeeded, else the failing rank's (75 when
its controller was gone before anything started, 2 for a missing folder or gang file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from steadyrun.attempt import guard, preempt, worker
from steadyrun.attempt.names import ATTEMPT_ID_ENV, CONTROLLER_PID_ENV, IDENTITY_FILE
from steadyrun.launchers import (
    COLLECTED_ENV,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NODE_RANK_ENV,
    SAMPLE_INTERVAL_ENV,
    Gang,
    read_gang,
)
from steadyrun.launchers.collect import END_FILE  # how a plain rank ended, by its agent

#: Seconds between looks at the node's rank processes.
POLL = 0.05
#: torchrun's own monitor interval (seconds): how soon it sees a rank fail.
TORCHRUN_MONITOR = 0.2


def main(argv: list[str] | None = None) -> int:
    """Run this node's part of the gang attempt in ``argv[0]``; return the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or not os.path.isdir(args[0]):
        print(f"steadyrun.launchers.node: no attempt folder in {args!r}", file=sys.stderr)
        return worker.EXIT_BAD_ATTEMPT_DIR
    directory = os.path.abspath(args[0])
    gang = read_gang(directory)
    if gang is None:
        print(f"steadyrun.launchers.node: {directory} has no readable gang.json",
              file=sys.stderr)
        return worker.EXIT_BAD_ATTEMPT_DIR
    controller = guard.take_controller_pid(CONTROLLER_PID_ENV)
    guard.keep_descendants()
    node_rank = node_rank_of(os.environ)
    attempt_id = os.environ.get(ATTEMPT_ID_ENV) or os.path.basename(directory)
    identity = IDENTITY_FILE if node_rank == 0 else f"identity-node{node_rank}.json"
    try:
        guard.record_identity(directory, attempt_id, identity, controller_pid=controller)
    except OSError as e:
        print(f"steadyrun.launchers.node: could not write {identity}: {e}", file=sys.stderr)
    if guard.controller_gone(controller):
        return worker.EXIT_CONTROLLER_GONE
    agent = NodeAgent(directory, gang, node_rank)
    signal.signal(signal.SIGTERM, agent.on_stop)
    signal.signal(signal.SIGUSR1, agent.on_preempt)
    return agent.run()


def node_rank_of(env: Any) -> int:
    """This node's index in the gang, from the environment."""
    for name in (NODE_RANK_ENV, "SLURM_NODEID"):
        text = env.get(name)
        if text and text.isdigit():
            return int(text)
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rendezvous(gang: Gang, env: Any) -> tuple[str, int]:
    """The rendezvous address and port this node uses (see the module docs)."""
    addr = env.get(MASTER_ADDR_ENV) or gang.master_addr
    port_text = env.get(MASTER_PORT_ENV)
    port = int(port_text) if port_text and port_text.isdigit() else gang.master_port
    if gang.launcher is not None and gang.launcher.rdzv_port and not port:
        port = gang.launcher.rdzv_port
    if not addr:
        addr = "127.0.0.1"
    if not port:
        if gang.nodes > 1:
            raise RuntimeError(
                f"a gang of {gang.nodes} nodes needs its rendezvous port fixed before it "
                f"starts (${MASTER_PORT_ENV}, or Torchrun(rdzv_port=...))")
        port = free_port(addr if addr.startswith("127.") else "")
    return addr, int(port)


def rank_env(gang: Gang, node_rank: int, local_rank: int, addr: str, port: int,
             base: Any) -> dict[str, str]:
    """The environment of one plain rank: torchrun's variables (and Slurm's, under
    Slurm), on top of ``base``."""
    rank = node_rank * gang.ntasks_per_node + local_rank
    env = dict(base)
    env.update({"RANK": str(rank), "LOCAL_RANK": str(local_rank),
                "WORLD_SIZE": str(gang.size), "LOCAL_WORLD_SIZE": str(gang.ntasks_per_node),
                "GROUP_RANK": str(node_rank), "ROLE_RANK": str(rank),
                "MASTER_ADDR": addr, "MASTER_PORT": str(port), NODE_RANK_ENV: str(node_rank)})
    if "SLURM_JOB_ID" in env:
        env.update({"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local_rank),
                    "SLURM_NTASKS": str(gang.size),
                    "SLURM_NTASKS_PER_NODE": str(gang.ntasks_per_node)})
    return env


def torchrun_command(gang: Gang, node_rank: int, addr: str, port: int, directory: str,
                     run_id: str) -> list[str]:
    """The ``torch.distributed.run`` command for one node of the gang."""
    tr = gang.launcher
    assert tr is not None
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={gang.nodes}",
           f"--nproc-per-node={gang.ntasks_per_node}", f"--max-restarts={tr.max_restarts}",
           f"--monitor-interval={TORCHRUN_MONITOR}"]
    if tr.rdzv_backend == "static":
        cmd += [f"--node-rank={node_rank}", f"--master-addr={addr}", f"--master-port={port}"]
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={addr}:{port}", f"--rdzv-id={run_id}",
                f"--rdzv-conf=is_host={'true' if node_rank == 0 else 'false'}"]
    return [*cmd, "-m", "steadyrun.launchers.rank", directory]


class NodeAgent:
    """Starts, watches and ends one node's ranks (see the module docs)."""

    def __init__(self, directory: str, gang: Gang, node_rank: int) -> None:
        self.directory = directory
        self.gang = gang
        self.node_rank = node_rank
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # local rank (or -1) -> process
        self.stopping = False
        self.preempting = False

    def run(self) -> int:
        from steadyrun.launchers.sampling import NodeSampler

        gang, k = self.gang, self.node_rank
        try:
            addr, port = rendezvous(gang, os.environ)
        except RuntimeError as e:
            print(f"steadyrun.launchers.node: {e}", file=sys.stderr)
            return worker.EXIT_FAILED
        m = gang.ntasks_per_node
        sampler = NodeSampler(self.directory, k, gang.size, m, socket.gethostname(),
                              _interval())
        sampler.start()
        try:
            code = self._start(addr, port)
            if code is None:
                code = self._watch()
        finally:
            sampler.stop()
            worker.end_leftovers(worker.LEFTOVER_GRACE)
        if gang.nodes == 1 and not os.environ.get(COLLECTED_ENV):
            from steadyrun.launchers.collect import finish

            try:
                return finish(self.directory)
            except OSError as e:
                print(f"steadyrun.launchers.node: could not gather the ranks' ends: {e}",
                      file=sys.stderr)
                return code or worker.EXIT_FAILED
        return code

    def _start(self, addr: str, port: int) -> int | None:
        base = dict(os.environ)
        base[NODE_RANK_ENV] = str(self.node_rank)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            if self.gang.launcher is not None:
                run_id = (os.environ.get("SLURM_JOB_ID")
                          or os.path.basename(os.path.dirname(self.directory)) + "-"
                          + os.path.basename(self.directory))
                cmd = torchrun_command(self.gang, self.node_rank, addr, port, self.directory,
                                       "".join(c if c.isalnum() else "-" for c in run_id))
                self.procs[-1] = subprocess.Popen(cmd, env=base, stdin=subprocess.DEVNULL,
                                                  preexec_fn=_die_with_agent)
            else:
                for local in range(self.gang.ntasks_per_node):
                    env = rank_env(self.gang, self.node_rank, local, addr, port, base)
                    self.procs[local] = subprocess.Popen(
                        [sys.executable, "-m", "steadyrun.launchers.rank", self.directory],
                        env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_agent)
        except OSError as e:
            print(f"steadyrun.launchers.node: could not start the ranks: {e}", file=sys.stderr)
            return worker.EXIT_FAILED
        return None

    def _watch(self) -> int:
        """Wait for the node's processes; on the first failure stop the rest."""
        failed: int | None = None
        while self.procs:
            for key, proc in list(self.procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del self.procs[key]
                self._record_end(key, rc, stopped=failed is not None)
                if rc != 0 and failed is None:
                    failed = _status(rc)
                    if not self.preempting:  # preempted ranks end by themselves
                        self._stop_all(worker._stop_grace())
            if self.procs:
                time.sleep(POLL)
        return failed or 0

    def _record_end(self, local: int, rc: int, *, stopped: bool) -> None:
        """Write ``ranks/<r>/end.json`` for a plain rank: its exit status, the signal
        that killed it, and whether this agent stopped it (another rank failed first), so
        that a rank killed from outside (the kernel's OOM killer) is named as the one
        that failed."""
        if local < 0:  # torchrun's agent: its ranks' ends are in its own report
            return
        import json

        from steadyrun.attempt.folder import atomic_write
        from steadyrun.launchers import rank_dir

        rank = self.node_rank * self.gang.ntasks_per_node + local
        here = rank_dir(self.directory, rank)
        end = {"exit_code": _status(rc), "signal": -rc if rc < 0 else None,
               "ended_at": time.time(), "stopped": stopped}
        try:
            os.makedirs(here, mode=0o700, exist_ok=True)
            atomic_write(os.path.join(here, END_FILE), json.dumps(end).encode("utf-8"))
        except OSError:
            pass

    def _stop_all(self, grace: float) -> None:
        """SIGTERM every process still running, SIGKILL what is left after ``grace``."""
        for proc in self.procs.values():
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
            time.sleep(POLL)
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal(proc, signal.SIGKILL)

    def on_preempt(self, signum: int, frame: Any) -> None:
        """SIGUSR1 (or a SIGTERM that means it): each rank is preempted; they save and
        end by themselves within the grace period (torchrun's ranks too: every process
        of the node but torchrun's agent gets the signal)."""
        self.preempting = True
        for key, proc in self.procs.items():
            if key >= 0:
                _signal(proc, signal.SIGUSR1)
            else:
                _signal_ranks_of(proc.pid)

    def on_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM: end every rank (and what it started), then die of the signal."""
        if self.stopping:
            return
        if preempt.term_is_preemption(self.directory):
            return self.on_preempt(signal.SIGUSR1, frame)
        self.stopping = True
        try:
            self._stop_all(worker._stop_grace())
            worker.end_leftovers(worker._stop_grace())
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)


def _die_with_agent() -> None:
    """In a child, before it runs: SIGKILL it when the agent dies, so that an agent
    killed outright (a cancelled cluster task) leaves no rank running."""
    guard.die_with_parent(signal.SIGKILL)


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        proc.send_signal(signum)


def _signal_ranks_of(pid: int) -> None:
    """SIGUSR1 to the children of torchrun's agent ``pid`` (its ranks)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGUSR1)


def _status(rc: int) -> int:
    """A child's return code as an exit status (death by signal N: 128 + N)."""
    return 128 - rc if rc < 0 else rc


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(SAMPLE_INTERVAL_ENV) or 1.0))
    except ValueError:
        return 1.0


if __name__ == "__main__":
    sys.exit(main())
