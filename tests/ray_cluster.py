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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(num_cpus: int = 2, timeout: float = 60.0) -> Cluster:
    """Start a head node; return its address and the environment clients need.

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
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    cluster = Cluster(address=f"127.0.0.1:{port}", temp_dir=temp_dir, env=env)
    if proc.returncode != 0:
        stop_cluster(cluster)
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
    return cluster


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
