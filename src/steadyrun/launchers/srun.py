"""The leader of a gang on Slurm: ``python -m steadyrun.launchers.srun ATTEMPT_DIR``.

A gang attempt's batch script runs this on the first node of its allocation. It:

1. fixes the rendezvous: the address of the allocation's first node (its ``NodeAddr``
   in ``scontrol show node``, else its name) and a port: ``Torchrun(rdzv_port=...)``,
   else the one in ``gang.json``, else one derived from ``$SLURM_JOB_ID`` in
   20000-31999 and free on this node (the rendezvous listens here); both are written
   into ``gang.json``;
2. starts one node agent per node (:mod:`steadyrun.launchers.node`) with
   ``srun --nodes=N --ntasks-per-node=1 --kill-on-bad-exit=1``, so that a node whose
   rank failed ends the whole step, with ``STEADYRUN_MASTER_ADDR``/``_PORT`` exported;
   ``--container-image IMAGE`` runs the agents in that image (pyxis), with the attempt
   folder mounted;
3. waits for the step, then gathers every rank's end into the attempt's ``ranks.json``
   and ``result.pkl`` or ``error.json`` (:func:`steadyrun.launchers.collect.finish`),
   and exits with the attempt's status (0, else the failing rank's).

Cancelled (``scancel``, the time limit), Slurm signals every step of the job: the leader
passes SIGTERM on to its ``srun``, and each node agent ends its ranks. Exit status 2: no
attempt folder or no ``gang.json``; 1 when ``srun`` could not be started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

from steadyrun.launchers import (
    COLLECTED_ENV,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    Gang,
    read_gang,
    write_gang,
)

#: Ports derived from the job id: ``PORT_BASE + job_id % PORT_SPAN`` (below Linux's
#: ephemeral ports), the next free one when it is taken.
PORT_BASE = 20000
PORT_SPAN = 12000
EXIT_FAILED = 1
EXIT_BAD_ATTEMPT_DIR = 2


def main(argv: list[str] | None = None) -> int:
    """Run the gang attempt in the folder ``argv`` names; return its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    image = None
    for arg in list(args):
        if arg.startswith("--container-image="):
            image = arg.partition("=")[2]
            args.remove(arg)
    if len(args) != 1 or not os.path.isdir(args[0]):
        print(f"steadyrun.launchers.srun: no attempt folder in {args!r}", file=sys.stderr)
        return EXIT_BAD_ATTEMPT_DIR
    directory = os.path.abspath(args[0])
    gang = read_gang(directory)
    if gang is None:
        print(f"steadyrun.launchers.srun: {directory} has no readable gang.json",
              file=sys.stderr)
        return EXIT_BAD_ATTEMPT_DIR
    addr, port = rendezvous(gang, os.environ)
    with contextlib.suppress(OSError):
        write_gang(directory, dataclasses.replace(gang, master_addr=addr, master_port=port))
    print(f"steadyrun: gang of {gang.nodes} node(s) x {gang.ntasks_per_node} rank(s), "
          f"rendezvous {addr}:{port}", file=sys.stderr, flush=True)
    code = run_step(step_command(gang, directory, addr, port, os.environ, image), addr, port)
    from steadyrun.launchers.collect import finish

    try:
        return finish(directory)
    except OSError as e:
        print(f"steadyrun.launchers.srun: could not gather the ranks' ends: {e}",
              file=sys.stderr)
        return code or EXIT_FAILED


def rendezvous(gang: Gang, env: Any) -> tuple[str, int]:
    """The address of the allocation's first node and the rendezvous port (rule 1)."""
    addr = gang.master_addr or first_node_address(env.get("SLURM_JOB_NODELIST", ""))
    port = (gang.launcher.rdzv_port if gang.launcher is not None else None) or gang.master_port
    if not port:
        port = free_port_from(derived_port(env.get("SLURM_JOB_ID", "")))
    return addr, int(port)


def first_node_address(nodelist: str) -> str:
    """``NodeAddr`` of the first node of a Slurm node list (``n[1-2]``), else its name,
    else this host's name."""
    first = ""
    if nodelist:
        out = _run(["scontrol", "show", "hostnames", nodelist])
        first = out.split()[0] if out.split() else ""
    if not first:
        return socket.gethostname()
    found = re.search(r"(?:^|\s)NodeAddr=(\S+)", _run(["scontrol", "-o", "show", "node", first]))
    return found.group(1) if found else first


def derived_port(job_id: str) -> int:
    """A port from the job's id, the same on every node of the job."""
    digits = "".join(c for c in job_id if c.isdigit())
    return PORT_BASE + (int(digits) if digits else os.getpid()) % PORT_SPAN


def free_port_from(port: int, tries: int = 200) -> int:
    """``port``, or the next one nobody listens on here."""
    for k in range(tries):
        candidate = PORT_BASE + (port - PORT_BASE + k) % PORT_SPAN
        with socket.socket() as s:
            try:
                s.bind(("", candidate))
            except OSError:
                continue
            return candidate
    return port


def step_command(gang: Gang, directory: str, addr: str, port: int, env: Any,
                 image: str | None = None) -> list[str]:
    """The ``srun`` that starts one node agent on each node of the allocation."""
    cmd = ["srun", f"--nodes={gang.nodes}", f"--ntasks={gang.nodes}", "--ntasks-per-node=1",
           "--kill-on-bad-exit=1",
           f"--export=ALL,{MASTER_ADDR_ENV}={addr},{MASTER_PORT_ENV}={port},"
           f"{COLLECTED_ENV}=1"]  # this leader gathers the ranks' ends, once
    cpus = env.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():  # srun does not take it from the job by itself (22.05)
        cmd.append(f"--cpus-per-task={cpus}")
    if image:
        cmd += [f"--container-image={image}", f"--container-mounts={directory}:{directory}"]
    return [*cmd, sys.executable, "-m", "steadyrun.launchers.node", directory]


def run_step(cmd: list[str], addr: str, port: int) -> int:
    """Run the step; pass SIGTERM/SIGINT on to it; return its exit status."""
    env = dict(os.environ)
    env[MASTER_ADDR_ENV], env[MASTER_PORT_ENV] = addr, str(port)
    try:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    except OSError as e:
        print(f"steadyrun.launchers.srun: could not start {cmd[0]}: {e}", file=sys.stderr)
        return EXIT_FAILED

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    rc = proc.wait()
    return 128 - rc if rc < 0 else rc


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
