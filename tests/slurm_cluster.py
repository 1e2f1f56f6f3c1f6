"""Real Slurm clusters and a real SSH server on 127.0.0.1, for the Slurm tests.

``slurm_cluster`` (session) runs ``scripts/slurm-up.sh``, which installs Slurm with
apt-get when it is missing, and ``scripts/slurm-down.sh`` at the end;
``slurm_cluster_2nodes`` (session) does the same for a second cluster of two nodes
(``n1``, ``n2``: two slurmd on this machine) with its own folder and ports, so both can
run at once; it leaves ``SLURM_CONF`` alone (see its docs). ``sshd_server``
(session) does the same with ``scripts/sshd-up.sh``/``sshd-down.sh``. They skip only
where nothing can be installed (not root, or no apt-get). Also here: a tunnel that
records every command it runs, and payloads the Slurm jobs import.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from steadyrun.executors.slurm.tunnel import LocalTunnel
from waiting import wait_for  # noqa: F401 - the tests import it from here too

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _can_install() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open while choosing)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """``SLURM_CONF`` of a running one-node cluster (set in ``os.environ`` meanwhile)."""
    if shutil.which("sbatch") is None and not _can_install():
        pytest.skip("Slurm is not installed and cannot be (needs root and apt-get)")
    scratch = Path("/tmp") / f"steadyrun-slurm-test-{os.getpid()}"
    env = dict(os.environ, STEADYRUN_SLURMCTLD_PORT=str(_free_port()),
               STEADYRUN_SLURMD_PORT=str(_free_port()))
    up = subprocess.run([str(SCRIPTS / "slurm-up.sh"), str(scratch)], env=env,
                        capture_output=True, text=True, timeout=300)
    if up.returncode == 77:
        pytest.skip(up.stderr.strip())
    if up.returncode != 0:
        raise RuntimeError(f"slurm-up.sh failed:\n{up.stdout}\n{up.stderr}")
    conf = str(scratch / "slurm.conf")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        subprocess.run([str(SCRIPTS / "slurm-down.sh"), str(scratch)], timeout=60)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster_2nodes():
    """``SLURM_CONF`` of a running two-node cluster (``n1``, ``n2``, one slurmd each).

    Unlike ``slurm_cluster`` it does not set ``os.environ``: the one-node cluster's tests
    read ``SLURM_CONF`` from there, and both clusters may be up in one session. Tests of
    this cluster set it for themselves (``monkeypatch.setenv``)."""
    if shutil.which("sbatch") is None and not _can_install():
        pytest.skip("Slurm is not installed and cannot be (needs root and apt-get)")
    scratch = Path("/tmp") / f"steadyrun-slurm2-test-{os.getpid()}"
    ctld, node1, node2 = _free_ports(3)
    env = dict(os.environ, STEADYRUN_SLURM_NODES="2", STEADYRUN_SLURMCTLD_PORT=str(ctld),
               STEADYRUN_SLURMD_PORT=str(node1), STEADYRUN_SLURMD_PORT2=str(node2))
    up = subprocess.run([str(SCRIPTS / "slurm-up.sh"), str(scratch)], env=env,
                        capture_output=True, text=True, timeout=300)
    if up.returncode == 77:
        pytest.skip(up.stderr.strip())
    if up.returncode != 0:
        subprocess.run([str(SCRIPTS / "slurm-down.sh"), str(scratch)], timeout=60)
        raise RuntimeError(f"slurm-up.sh failed:\n{up.stdout}\n{up.stderr}")
    try:
        yield str(scratch / "slurm.conf")
    finally:
        subprocess.run([str(SCRIPTS / "slurm-down.sh"), str(scratch)], timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_server():
    """``{"port", "identity", "known_hosts", "dir"}`` of sshd on 127.0.0.1, keys only."""
    if shutil.which("ssh-keygen") is None and not _can_install():
        pytest.skip("openssh-server is not installed and cannot be (needs root and apt-get)")
    pytest.importorskip("paramiko")
    directory = Path("/tmp") / f"steadyrun-sshd-test-{os.getpid()}"
    up = subprocess.run([str(SCRIPTS / "sshd-up.sh"), str(directory)], capture_output=True,
                        text=True, timeout=300)
    if up.returncode == 77:
        pytest.skip(up.stderr.strip())
    if up.returncode != 0:
        raise RuntimeError(f"sshd-up.sh failed:\n{up.stdout}\n{up.stderr}")
    info = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    try:
        yield {"port": int(info["PORT"]), "identity": info["IDENTITY"],
               "known_hosts": info["KNOWN_HOSTS"], "dir": directory}
    finally:
        subprocess.run([str(SCRIPTS / "sshd-down.sh"), str(directory)], timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


class RecordingTunnel(LocalTunnel):
    """A LocalTunnel that keeps every command it ran (``calls``), for counting."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []

    def run(self, cmd, timeout=60.0):
        self.calls.append(list(cmd))
        return super().run(cmd, timeout)

    def count(self, program: str) -> int:
        return sum(1 for c in self.calls if c[0] == program)


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` of one job (or array element ``ID_INDEX``) as a dict."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True, check=True).stdout
    line = out.splitlines()[0]
    return dict(f.split("=", 1) for f in line.split() if "=" in f)



# --- payloads (imported by the jobs' workers) ---------------------------------------------


def hog_memory(megabytes: int, seconds: float = 5.0) -> int:
    """Hold ``megabytes`` of touched memory for ``seconds`` (Slurm should kill it)."""
    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(seconds)
    return len(block)


def echo_env_and_args(*args: str) -> dict:
    """What the job saw: its task name variable and the arguments, unchanged."""
    return {"task": os.environ.get("STEADYRUN_TASK"), "args": list(args)}
