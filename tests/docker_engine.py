"""A real Docker engine on this machine, for the Docker tests.

``docker_engine`` (session) runs ``scripts/docker-up.sh``, which installs Debian's
docker.io with apt-get when it is missing, starts a private dockerd (its own socket, no
bridge, no iptables) and makes the test image from a cached debootstrap root filesystem;
``scripts/docker-down.sh`` stops it at the end. It sets ``DOCKER_HOST`` meanwhile and
skips only where nothing can be installed or started (not root, no apt-get).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
IMAGE = "steadyrun-test-python:bookworm"
#: The label every container steadyrun makes carries.
ATTEMPT_LABEL = "steadyrun.attempt"


def _can_install() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


@pytest.fixture(scope="session")
def docker_engine():
    """``{"host": "unix://...", "image": IMAGE, "dir": Path}`` of a running dockerd
    (``DOCKER_HOST`` is set in ``os.environ`` meanwhile)."""
    pytest.importorskip("docker")
    if shutil.which("dockerd") is None and not _can_install():
        pytest.skip("dockerd is not installed and cannot be (needs root and apt-get)")
    directory = Path("/tmp") / f"steadyrun-docker-test-{os.getpid()}"
    env = dict(os.environ, STEADYRUN_DOCKER_IMAGE=IMAGE)
    up = subprocess.run([str(SCRIPTS / "docker-up.sh"), str(directory)], env=env,
                        capture_output=True, text=True, timeout=900)
    if up.returncode == 77:
        pytest.skip(up.stderr.strip())
    if up.returncode != 0:
        subprocess.run([str(SCRIPTS / "docker-down.sh"), str(directory)], timeout=120)
        raise RuntimeError(f"docker-up.sh failed:\n{up.stdout}\n{up.stderr}")
    host = f"unix://{directory}/docker.sock"
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    try:
        yield {"host": host, "image": IMAGE, "dir": directory}
    finally:
        subprocess.run([str(SCRIPTS / "docker-down.sh"), str(directory)], timeout=120)
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        shutil.rmtree(directory, ignore_errors=True)


def steadyrun_containers(host: str) -> list[dict]:
    """Every container on the daemon that carries steadyrun's attempt label."""
    import docker

    api = docker.APIClient(base_url=host, version="auto")
    try:
        return list(api.containers(all=True, filters={"label": ATTEMPT_LABEL}))
    finally:
        api.close()
