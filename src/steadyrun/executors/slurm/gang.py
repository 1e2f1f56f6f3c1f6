"""Gangs on Slurm, and the cluster's nodes as ``sinfo`` reports them.

``SlurmExecutor(nodes=N, ntasks_per_node=M, launcher=...)`` runs each attempt as one job
of ``N`` nodes, as rules:

1. The job asks for ``--nodes=N --ntasks-per-node=1``: one node agent per node
   (:mod:`steadyrun.launchers.node`), which starts that node's ``M`` ranks itself (or
   through torchrun). ``--cpus-per-task``, ``--mem`` and ``--gpus-per-node`` are one
   node's share: ``M`` times one rank's request (a task's ``Resources`` are per rank).
   The executor's own ``cpus_per_task`` is per rank; its ``mem`` and ``gpus_per_node``
   are per node, as sbatch reads them.
2. The batch script runs ``python -m steadyrun.launchers.srun ATTEMPT_DIR`` on the first
   node: it fixes the rendezvous (the first node's address, a port), starts the node
   agents with one ``srun --kill-on-bad-exit=1`` (a failing node ends the others) and
   gathers the ranks' ends into the attempt's files.
3. Admission: a gang whose per-node share does not fit one node of the partition, or
   that needs more such nodes than the partition has, is refused before anything is
   submitted (:class:`~steadyrun.errors.InsufficientResources`).
4. Through SSH, the node agents' samples (``samples/node-<k>.jsonl``) and the ranks' logs
   are copied back while the job runs; at the end also ``ranks.json`` and every rank's
   ``rank.json``, ``end.json``, ``result.pkl`` and ``error.json``.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from steadyrun.attempt import folder
from steadyrun.executors.base import Capacity
from steadyrun.executors.slurm import sbatch as sb
from steadyrun.executors.slurm.records import _gres_gpus
from steadyrun.launchers import GANG_FILE, RANK_INFO_FILE, RANKS_DIR, RANKS_FILE, SAMPLES_DIR, Gang
from steadyrun.launchers.collect import END_FILE
from steadyrun.task import Resources
from steadyrun.units import format_size

#: The entry point a gang's batch script runs on the first node.
LEADER_MODULE = "steadyrun.launchers.srun"
_SLURM_MEM = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class NodeShape:
    """One node as ``sinfo -N`` shows it: CPUs, memory in bytes, GPUs."""

    cpus: float
    memory: int
    gpus: int


@dataclass(frozen=True)
class NodeShare:
    """What one node of an attempt gets: ``cpus`` (None: Slurm's default), ``mem`` as
    sbatch reads it (``"4G"``, None: Slurm's default) and ``gpus`` (None: none asked);
    ``nodes`` and ``tasks`` (per node) are the job's ``--nodes``/``--ntasks-per-node``."""

    cpus: int | None
    mem: str | None
    gpus: int | None
    nodes: int = 1
    tasks: int = 1

    def memory_bytes(self) -> int | None:
        """``mem`` in bytes (Slurm's units: a bare number is MiB), or None."""
        return None if self.mem is None else slurm_memory_bytes(self.mem)


def share_of(executor: Any, res: Resources) -> NodeShare:
    """:func:`node_share` with a ``SlurmExecutor``'s options; a plain attempt keeps the
    executor's ``nodes`` and ``ntasks_per_node`` as sbatch options."""
    share = node_share(executor.gang, res, executor.cpus_per_task, executor.mem,
                       executor.gpus_per_node)
    if executor.gang is None:
        share = replace(share, nodes=executor.nodes, tasks=executor.ntasks_per_node)
    return share


def node_share(gang: Gang | None, res: Resources, cpus_per_task: int | None,
               mem: str | None, gpus_per_node: int | None) -> NodeShare:
    """One node's share of an attempt with per-rank request ``res`` (rule 1); the
    executor's options win over the request."""
    m = 1 if gang is None else gang.ntasks_per_node
    if cpus_per_task is not None:
        cpus: int | None = int(cpus_per_task) * m
    elif res.cpus:
        cpus = max(1, math.ceil(res.cpus * m))
    else:
        cpus = m if m > 1 else None  # a rank gets one CPU, as Slurm gives a task
    if mem is None and res.memory_bytes:
        mem = sb.memory_option(res.memory_bytes * m)
    gpus = gpus_per_node if gpus_per_node is not None else (res.gpus * m or None)
    return NodeShare(cpus, mem, gpus, nodes=1 if gang is None else gang.nodes)


def slurm_memory_bytes(text: str | int) -> int | None:
    """Bytes of an sbatch ``--mem`` value (``"4G"``, ``"500M"``, ``"2048"`` MiB), or
    None when it cannot be read."""
    found = _SLURM_MEM.match(str(text))
    if not found:
        return None
    power = " KMGT".index((found.group(2) or "M").upper())
    return int(float(found.group(1)) * (1 << (10 * power)))


# --- the cluster's nodes -----------------------------------------------------------------------


def query_nodes(tunnel: Any, partition: str | None,
                warn: Callable[[str], None]) -> dict[str, NodeShape] | None:
    """Every node of the cluster (or ``partition``) by name, from one ``sinfo`` call;
    None when sinfo cannot tell (``warn`` says why)."""
    from steadyrun.errors import ExecutorError

    cmd = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G"]
    if partition:
        cmd += ["-p", partition]
    try:
        res = tunnel.run(cmd)
    except ExecutorError as e:
        warn(f"sinfo failed ({e}); assuming a large cluster")
        return None
    nodes: dict[str, NodeShape] = {}
    if res.returncode == 0:
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4 and parts[1].isdigit():
                mem = int(parts[2]) if parts[2].rstrip("+").isdigit() else 0
                nodes[parts[0]] = NodeShape(float(parts[1]), mem << 20, _gres_gpus(parts[3]))
    if not nodes:
        warn("sinfo reported no nodes; assuming a large cluster")
        return None
    return nodes


def capacity_of(nodes: dict[str, NodeShape] | None, oversubscribe: float) -> Capacity:
    """The nodes summed and multiplied by ``oversubscribe``; very large when unknown."""
    if not nodes:
        return Capacity(cpus=1e6, memory=1 << 60, gpus=list(range(4096)))
    f = oversubscribe
    return Capacity(cpus=sum(n.cpus for n in nodes.values()) * f,
                    memory=int(sum(n.memory for n in nodes.values()) * f),
                    gpus=list(range(int(sum(n.gpus for n in nodes.values()) * f))))


def check_nodes(nodes: dict[str, NodeShape] | None, gang: Gang | None, share: NodeShare,
                res: Resources, partition: str | None, task: str | None) -> None:
    """Raise :class:`~steadyrun.errors.InsufficientResources` when fewer nodes than the
    attempt needs (1 for a plain attempt) can each hold one node's share (rule 3).
    Nothing is checked when the nodes are unknown."""
    if not nodes:
        return
    from steadyrun.errors import InsufficientResources

    wanted = 1 if gang is None else gang.nodes
    memory = share.memory_bytes() or 0
    cpus, gpus = share.cpus or 0, share.gpus or 0
    fitting = [name for name, n in nodes.items()
               if cpus <= n.cpus + 1e-9 and memory <= n.memory and gpus <= n.gpus]
    if len(fitting) >= wanted:
        return
    where = f"partition {partition!r}" if partition else "the cluster"
    largest = max(nodes.values(), key=lambda n: (n.cpus, n.memory, n.gpus))
    asks = f"cpus={cpus}, memory={format_size(memory) if memory else 'default'}, gpus={gpus}"
    if gang is not None:
        asks = (f"{gang.nodes} node(s) of {asks} each ({gang.ntasks_per_node} rank(s) of "
                f"{res.describe()} per node)")
    if len(fitting) == 0 or gang is None:
        why = (f"no node of {where} is that large (the largest has cpus={largest.cpus:g}, "
               f"memory={format_size(largest.memory)}, gpus={largest.gpus})")
    else:
        why = f"only {len(fitting)} of the {len(nodes)} node(s) of {where} can hold that"
    if gang is not None and gang.nodes > len(nodes):
        why = f"{where} has {len(nodes)} node(s)"
    raise InsufficientResources(
        f"task {task!r} asks for {asks} but {why}; lower the request, use fewer ranks per "
        "node or fewer nodes, or choose another partition")


# --- files copied back through SSH -----------------------------------------------------------


def fetch_gang_files(tunnel: Any, gang: Gang, attempt: Any, final: bool) -> None:
    """Copy a gang attempt's samples and rank logs back (rule 4) from its
    ``attempt.remote_dir`` into its ``attempt.spec.attempt_dir``; with ``final`` also
    ``ranks.json`` and every rank's end. Files not there yet are skipped."""
    remote_dir, local_dir = attempt.remote_dir, os.fspath(attempt.spec.attempt_dir)
    samples = [f"node-{k}.jsonl" for k in range(gang.nodes)]
    _get(tunnel, posixpath.join(remote_dir, SAMPLES_DIR),
         os.path.join(local_dir, SAMPLES_DIR), samples)
    per_rank = [folder.STDOUT_LOG, folder.STDERR_LOG]
    if final:
        per_rank += [RANK_INFO_FILE, END_FILE, folder.RESULT_FILE, folder.ERROR_FILE]
        tunnel.get(remote_dir, local_dir, [RANKS_FILE, GANG_FILE])
    for r in range(gang.size):
        _get(tunnel, posixpath.join(remote_dir, RANKS_DIR, str(r)),
             os.path.join(local_dir, RANKS_DIR, str(r)), per_rank)


def describe(gang: Gang | None) -> str:
    """``", nodes=2, ntasks_per_node=4, launcher='torchrun'"`` for a repr ("" if none)."""
    return "" if gang is None else (
        f", nodes={gang.nodes}, ntasks_per_node={gang.ntasks_per_node}, "
        f"launcher={'torchrun' if gang.launcher else None!r}")


def _get(tunnel: Any, remote: str, local: str, names: list[str]) -> None:
    os.makedirs(local, mode=0o700, exist_ok=True)
    tunnel.get(remote, local, names)


__all__ = ["LEADER_MODULE", "NodeShape", "NodeShare", "capacity_of", "check_nodes",
           "describe", "fetch_gang_files", "node_share", "query_nodes", "share_of",
           "slurm_memory_bytes"]
