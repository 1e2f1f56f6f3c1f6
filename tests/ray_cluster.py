"""A real Ray head node on loopback for the Ray executor's tests, and payloads for them.

:func:`start_cluster` runs ``ray start --head`` with every listener on 127.0.0.1, token
authentication with a token made for the test, and a temporary folder of its own;
:func:`stop_cluster` ends exactly the processes of that cluster (found through its
temporary folder), never other Ray instances of the machine, as ``ray stop`` would.

The payload functions at the end are imported by Ray workers: this module imports only
the standard library at the top.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Variables every process of a test cluster needs (the driver, a detached controller).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token"}


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    #: the custom resource of each node joined with :func:`add_node`
    nodes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(num_cpus: int = 2, timeout: float = 60.0,
                  resource: str | None = None) -> Cluster:
    """Start a head node; return its address and the environment clients need.
    ``resource`` names a custom resource (1 unit) the head node has.

    Raises RuntimeError with ``ray start``'s output when it does not come up."""
    temp_dir = Path(tempfile.mkdtemp(prefix="sr-ray-"))  # short: Ray's socket paths are long
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = dict(LOOPBACK_ENV, RAY_AUTH_TOKEN_PATH=str(token))
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray) if ray.exists() else "ray", "start", "--head", f"--port={port}",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    if resource:
        cmd.append(f"--resources={{\"{resource}\": 1}}")
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    cluster = Cluster(address=f"127.0.0.1:{port}", temp_dir=temp_dir, env=env)
    if proc.returncode != 0:
        stop_cluster(cluster)
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
    return cluster


def add_node(cluster: Cluster, name: str, num_cpus: int = 1, timeout: float = 60.0) -> None:
    """Join a second Ray node (a raylet of its own on this machine) to ``cluster``.

    It has ``num_cpus`` CPUs, the custom resource ``name`` (1 unit) to tell it apart,
    its own temporary folder inside the cluster's (so :func:`stop_cluster` ends it too)
    and its own ports. Both nodes have the address 127.0.0.1; Ray's node ids differ.
    Raises RuntimeError with ``ray start``'s output when it does not join."""
    temp_dir = cluster.temp_dir / name
    temp_dir.mkdir()
    low = free_port_range(200)
    # `ray start --address` refuses to join while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and
    # with it set to 1 it swaps 127.0.0.1 for the public address: run Ray's command line
    # with the check passed and the node's address kept on loopback (its processes
    # inherit the 0 and stay there too)
    cmd = [sys.executable, "-c", _JOIN_ON_LOOPBACK, "start", f"--address={cluster.address}",
           "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
           f"--resources={{\"{name}\": 1}}", "--disable-usage-stats",
           f"--temp-dir={temp_dir}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}",
           f"--min-worker-port={low}", f"--max-worker-port={low + 199}"]
    proc = subprocess.run(cmd, env={**os.environ, **cluster.env}, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start (node {name}) failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    cluster.nodes.append(name)


_JOIN_ON_LOOPBACK = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive ports that are free now (from 20000 up)."""
    for low in range(20000, 60000, count):
        try:
            for port in range(low, low + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return low
    raise RuntimeError(f"no {count} consecutive free ports")


def wait_for_nodes(cluster: Cluster, count: int, timeout: float = 60.0) -> None:
    """Block until ``ray status`` of the cluster lists ``count`` alive nodes."""
    ray = Path(sys.executable).with_name("ray")
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        proc = subprocess.run([str(ray) if ray.exists() else "ray", "status",
                               f"--address={cluster.address}"],
                              env={**os.environ, **cluster.env}, capture_output=True,
                              text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        alive = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if alive.count(" node_") >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray cluster has not {count} alive nodes:\n{out}")


def forget_auth_token() -> None:
    """Make an imported Ray read its token again: Ray keeps the first token it read for
    the life of the process, so a second test cluster (a token of its own) in the same
    pytest run would be refused without this."""
    if "ray" not in sys.modules:
        return
    try:
        from ray._private.authentication_test_utils import reset_auth_token_state
    except ImportError:  # a Ray without token authentication
        return
    reset_auth_token_state()


def cluster_processes(cluster: Cluster) -> list[int]:
    """Pids of the cluster's processes: those naming its temporary folder, and their
    descendants (Ray workers rename themselves ``ray::IDLE``)."""
    import psutil

    roots = []
    marker = f"{cluster.temp_dir}{os.sep}"  # Ray's session paths live below it
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and any(marker in part for part in p.info["cmdline"] or ()):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    pids = set()
    for p in roots:
        pids.add(p.pid)
        try:
            pids.update(c.pid for c in p.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(pids)


def stop_cluster(cluster: Cluster, grace: float = 3.0) -> None:
    """End the cluster's own processes (SIGTERM, grace, SIGKILL) and remove its folder."""
    import psutil

    procs = []
    for pid in cluster_processes(cluster):
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


# --- payloads run by Ray workers ------------------------------------------------------------


def die_once(marker: str) -> str:
    """SIGKILL this process on the first call (counted in ``marker``); return 'survived'
    afterwards."""
    path = Path(marker)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n == 1:
        os.kill(os.getpid(), 9)
    return f"survived after {n - 1} kill(s)"


def write_pid_and_sleep(pidfile: str, seconds: float) -> None:
    """Write this process's pid, print a line, then sleep (a task to stop)."""
    Path(pidfile).write_text(str(os.getpid()))
    print("sleeping", flush=True)
    time.sleep(seconds)


def shout(lines: int, width: int = 100) -> int:
    """Print ``lines`` numbered lines of ``width`` characters to stdout; one to stderr."""
    for i in range(lines):
        print(f"{i:08d} " + "x" * (width - 10), flush=False)
    sys.stdout.flush()
    print("done shouting", file=sys.stderr, flush=True)
    return lines


def where() -> dict[str, object]:
    """Where this ran: pid, host and the attempt variables the executor set."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "task": os.environ.get("STEADYRUN_TASK"),
            "attempt": os.environ.get("STEADYRUN_ATTEMPT")}


def rank_where() -> dict[str, object]:
    """What one rank of a gang saw: its ``torch.distributed`` variables, its pid and the
    pid of the raylet of the Ray node it ran on (Ray sets ``RAY_RAYLET_PID`` for its
    workers; a gang's processes inherit it)."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
             "MASTER_ADDR", "MASTER_PORT", "RAY_RAYLET_PID", "STEADYRUN_NODE_RANK")
    return {"pid": os.getpid(), **{n: os.environ.get(n) for n in names}}


# --- payloads for node loss and preemption (tests/test_ray_preempt.py) ---------------------


def note_where(folder: str) -> dict[str, object]:
    """Write where this attempt runs into ``folder``/<attempt>.json (atomically): its pid,
    its Ray node id and the pid of that node's raylet (Ray sets ``RAY_RAYLET_PID`` for
    its workers)."""
    import json

    import ray

    info = {"pid": os.getpid(), "raylet_pid": int(os.environ.get("RAY_RAYLET_PID") or 0),
            "node_id": ray.get_runtime_context().get_node_id(),
            "attempt": os.environ.get("STEADYRUN_ATTEMPT")}
    path = Path(folder) / f"{info['attempt']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
    return info


def count_saving_each_step(steps: int, dt: float, folder: str) -> dict[str, object]:
    """Count to ``steps`` in steps of ``dt`` seconds, saving the step reached into the
    task's folder after each one (a checkpoint that survives a killed node); resume
    from it. Returns the count, the step this attempt started from and its node."""
    import json

    import steadyrun as run

    state = run.task_dir() / "step.json"
    step = json.loads(state.read_text()) if state.exists() else 0
    first = step
    where = note_where(folder)
    while step < steps:
        time.sleep(dt)
        step += 1
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(step))
        tmp.replace(state)
    return {"value": step, "first": first, "node_id": where["node_id"]}


def count_without_saving(steps: int, dt: float, folder: str) -> dict[str, object]:
    """Count to ``steps`` in steps of ``dt`` seconds, saving nothing anywhere."""
    where = note_where(folder)
    for _ in range(steps):
        time.sleep(dt)
    return {"value": steps, "node_id": where["node_id"]}


class CheckpointedCounter:
    """A class payload in submitit's ``Checkpointable`` shape: ``checkpoint()`` returns
    itself with the step it reached, and the next attempt runs that."""

    def __init__(self, steps: int, dt: float, folder: str) -> None:
        self.steps, self.dt, self.folder = steps, dt, folder
        self.step = 0
        self.starts: list[int] = []
        self.nodes: list[str] = []
        self.checkpoints = 0

    def __call__(self) -> dict[str, object]:
        self.starts.append(self.step)
        self.nodes.append(str(note_where(self.folder)["node_id"]))
        while self.step < self.steps:
            time.sleep(self.dt)
            self.step += 1
        return {"value": self.step, "starts": self.starts, "nodes": self.nodes,
                "checkpoints": self.checkpoints}

    def checkpoint(self, *args: object, **kwargs: object) -> CheckpointedCounter:
        self.checkpoints += 1
        return self


def drain_node(cluster: Cluster, node_id: str, deadline: int = 120) -> None:
    """Ask the cluster's GCS to drain node ``node_id`` for preemption, as an autoscaler
    does before it takes the machine away (``ray drain-node``, ``deadline`` seconds)."""
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.run([str(ray) if ray.exists() else "ray", "drain-node",
                           f"--address={cluster.address}", f"--node-id={node_id}",
                           "--reason=DRAIN_NODE_REASON_PREEMPTION",
                           "--reason-message=preempted by the test",
                           f"--deadline-remaining-seconds={deadline}"],
                          env={**os.environ, **cluster.env}, capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"ray drain-node failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
