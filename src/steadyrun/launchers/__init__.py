"""Launchers: how one attempt becomes ``nodes x ntasks_per_node`` ranks.

An executor given ``ntasks_per_node=M`` (and, on a cluster, ``nodes=N``) or a
``launcher`` runs each attempt of a task as a *gang*: ``N x M`` processes with the
``torch.distributed`` environment set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so that
``torch.distributed.init_process_group()`` works with no arguments.

- ``launcher="torchrun"`` or :class:`Torchrun`: one torchrun agent per node starts the
  node's ranks (elastic restarts, rendezvous on the first node);
- ``launcher=None`` with more than one rank: plain rank processes, started by steadyrun
  itself, with the same variables (and ``SLURM_PROCID``/``SLURM_LOCALID`` on Slurm).

``Resources`` are per rank: admission counts the whole gang (:meth:`Gang.total`).

The folder of a gang attempt (besides what every attempt has)::

    gang.json                 the Gang, the rendezvous address and port when known
    stdout.log, stderr.log    what the node agents and torchrun printed
    ranks/<rank>/             one folder per rank (global rank)
        rank.json             {rank, local_rank, node_rank, host, node, pid, started}
        stdout.log, stderr.log, result.pkl, error.json   as a plain attempt's
    ranks.json                how each rank ended (written once all ranks ended)
    samples/node-<k>.jsonl    resource samples taken on node k, one JSON object a line:
                              {time, rank, host, cpu_percent, rss, processes,
                               read_bytes, write_bytes, gpu_memory, gpu_utilization}
                              (``rank`` null: the node agent's whole tree)

The attempt's own ``result.pkl`` is rank 0's; its ``error.json`` is the failing rank's,
its message naming the rank, node and host and its traceback ending with that rank's log
tail. The kind follows the worst rank: ``oom`` when any rank ran out of memory.

Processes: ``python -m steadyrun.launchers.node ATTEMPT_DIR`` is a node agent (one per
node; it starts the node's ranks, samples them, and stops them all when one fails);
``python -m steadyrun.launchers.rank ATTEMPT_DIR`` is one rank. On one node the agent
also gathers the ranks' ends into the attempt's files (:func:`steadyrun.launchers.collect.finish`);
on several, whoever waits for all nodes calls it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

#: Files and folders of a gang attempt (see the module docs).
GANG_FILE = "gang.json"
RANKS_DIR = "ranks"
RANKS_FILE = "ranks.json"
RANK_INFO_FILE = "rank.json"
SAMPLES_DIR = "samples"

#: Which node of the gang an agent is (else ``SLURM_NODEID``, else 0).
NODE_RANK_ENV = "STEADYRUN_NODE_RANK"
#: The rendezvous address and port, when the backend chose them for the agents.
MASTER_ADDR_ENV = "STEADYRUN_MASTER_ADDR"
MASTER_PORT_ENV = "STEADYRUN_MASTER_PORT"
#: Set (to 1) by a backend that gathers the ranks' ends itself once every node ended
#: (the Slurm leader): a one-node agent then leaves that to it.
COLLECTED_ENV = "STEADYRUN_GANG_COLLECTED"
#: Seconds between resource samples on each node (0: none); default 1.
SAMPLE_INTERVAL_ENV = "STEADYRUN_SAMPLE_INTERVAL"

RDZV_BACKENDS = ("c10d", "static")


@dataclass(frozen=True)
class Torchrun:
    """Run each node's ranks under ``torchrun`` (``torch.distributed.run``), in
    NeMo-Run's shape.

    ``nproc_per_node``: ranks per node (default: the executor's ``ntasks_per_node``);
    ``rdzv_backend``: ``"c10d"`` (default) or ``"static"``; ``rdzv_port``: the
    rendezvous port on the first node (default: a free port on one node, a port derived
    from the job on several); ``max_restarts``: how often torchrun restarts the node's
    ranks after a failure before the attempt fails (default 0: the attempt's own
    :class:`~steadyrun.Retry` decides). torch must be installed where the ranks run.
    """

    nproc_per_node: int | None = None
    rdzv_backend: str = "c10d"
    rdzv_port: int | None = None
    max_restarts: int = 0

    def __post_init__(self) -> None:
        from steadyrun.errors import ExecutorError

        if self.nproc_per_node is not None and not _whole(self.nproc_per_node, 1):
            raise ExecutorError(
                f"Torchrun(nproc_per_node={self.nproc_per_node!r}): give a whole number >= 1")
        if self.rdzv_backend not in RDZV_BACKENDS:
            raise ExecutorError(
                f"Torchrun(rdzv_backend={self.rdzv_backend!r}): choose one of "
                f"{', '.join(RDZV_BACKENDS)}")
        if self.rdzv_port is not None and not (_whole(self.rdzv_port, 1)
                                               and self.rdzv_port < 65536):
            raise ExecutorError(
                f"Torchrun(rdzv_port={self.rdzv_port!r}): give a port from 1 to 65535")
        if not _whole(self.max_restarts, 0):
            raise ExecutorError(
                f"Torchrun(max_restarts={self.max_restarts!r}): give a whole number >= 0")


@dataclass(frozen=True)
class Gang:
    """The shape of a gang: ``nodes`` x ``ntasks_per_node`` ranks, and the launcher
    (:class:`Torchrun`, or None for plain ranks)."""

    nodes: int = 1
    ntasks_per_node: int = 1
    launcher: Torchrun | None = None
    #: the rendezvous address and port, when the backend fixed them before the start
    master_addr: str | None = None
    master_port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """The world size: every rank of every node."""
        return self.nodes * self.ntasks_per_node

    def total(self, per_rank: Any) -> Any:
        """The :class:`~steadyrun.Resources` of the whole gang, from a per-rank request."""
        return per_rank.scaled(self.size) if self.size > 1 else per_rank

    def per_node(self, per_rank: Any) -> Any:
        """What one node of the gang needs: ``ntasks_per_node`` ranks' requests."""
        return per_rank.scaled(self.ntasks_per_node) if self.ntasks_per_node > 1 else per_rank

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "ntasks_per_node": self.ntasks_per_node,
                "launcher": None if self.launcher is None else {
                    "type": "torchrun", **asdict(self.launcher)},
                "master_addr": self.master_addr, "master_port": self.master_port,
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gang:
        launcher = d.get("launcher")
        torchrun = None
        if isinstance(launcher, dict):
            opts = {k: v for k, v in launcher.items() if k != "type"}
            torchrun = Torchrun(**opts)
        port = d.get("master_port")
        return cls(nodes=int(d.get("nodes") or 1),
                   ntasks_per_node=int(d.get("ntasks_per_node") or 1), launcher=torchrun,
                   master_addr=d.get("master_addr") or None,
                   master_port=int(port) if port else None, extra=dict(d.get("extra") or {}))


def resolve_gang(nodes: int, ntasks_per_node: int, launcher: Any, where: str) -> Gang | None:
    """The gang an executor's options describe, or None when each attempt is one plain
    process (one node, one task per node, no launcher).

    ``launcher`` is None, ``"torchrun"``, a :class:`Torchrun`, or a dict of its fields
    (a stored executor). ``where`` names the executor in errors, for example
    ``"SlurmExecutor"``. Raises :class:`~steadyrun.errors.ExecutorError` for bad values.
    """
    from steadyrun.errors import ExecutorError

    if not _whole(nodes, 1):
        raise ExecutorError(f"{where}(nodes={nodes!r}): give a whole number >= 1")
    if not _whole(ntasks_per_node, 1):
        raise ExecutorError(
            f"{where}(ntasks_per_node={ntasks_per_node!r}): give a whole number >= 1")
    torchrun = launcher_of(launcher, where)
    if torchrun is not None and torchrun.nproc_per_node not in (None, ntasks_per_node):
        if ntasks_per_node != 1:
            raise ExecutorError(
                f"{where}(ntasks_per_node={ntasks_per_node}, launcher=Torchrun(nproc_per_node="
                f"{torchrun.nproc_per_node})): the two disagree; give one of them")
        ntasks_per_node = int(torchrun.nproc_per_node)
    if torchrun is None and nodes == 1 and ntasks_per_node == 1:
        return None
    return Gang(nodes=int(nodes), ntasks_per_node=int(ntasks_per_node), launcher=torchrun)


def launcher_of(launcher: Any, where: str) -> Torchrun | None:
    """:class:`Torchrun` or None from what a user or a stored config gave."""
    from steadyrun.errors import ExecutorError

    if launcher is None or isinstance(launcher, Torchrun):
        return launcher
    if isinstance(launcher, str) and launcher.strip().lower() == "torchrun":
        return Torchrun()
    if isinstance(launcher, dict) and launcher.get("type", "torchrun") == "torchrun":
        return Torchrun(**{k: v for k, v in launcher.items() if k != "type"})
    raise ExecutorError(
        f"{where}(launcher={launcher!r}) is not a launcher; give \"torchrun\", "
        "run.Torchrun(...), or None for plain ranks")


def launcher_config(launcher: Torchrun | None) -> dict[str, Any] | None:
    """A launcher as plain data for :meth:`~steadyrun.executors.base.Executor.to_config`."""
    return None if launcher is None else {"type": "torchrun", **asdict(launcher)}


def write_gang(attempt_dir: str | os.PathLike[str], gang: Gang) -> None:
    """Write ``gang.json`` into an attempt folder (owner-only, atomically)."""
    from steadyrun.attempt.folder import atomic_write

    atomic_write(os.path.join(os.fspath(attempt_dir), GANG_FILE),
                 json.dumps(gang.to_dict(), indent=1).encode("utf-8"))


def read_gang(attempt_dir: str | os.PathLike[str]) -> Gang | None:
    """The gang of an attempt folder, or None for a plain attempt (or an unreadable file)."""
    try:
        with open(os.path.join(os.fspath(attempt_dir), GANG_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return Gang.from_dict(data)
    except Exception:
        return None


def rank_dir(attempt_dir: str | os.PathLike[str], rank: int) -> str:
    """The folder of one rank of a gang attempt."""
    return os.path.join(os.fspath(attempt_dir), RANKS_DIR, str(int(rank)))


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


__all__ = ["COLLECTED_ENV", "GANG_FILE",
           "Gang", "MASTER_ADDR_ENV", "MASTER_PORT_ENV", "NODE_RANK_ENV",
           "RANKS_DIR", "RANKS_FILE", "RANK_INFO_FILE", "SAMPLES_DIR", "SAMPLE_INTERVAL_ENV",
           "Torchrun", "launcher_config", "launcher_of", "rank_dir", "read_gang",
           "resolve_gang", "write_gang"]
