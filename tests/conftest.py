"""Shared fixtures: every test gets its own store folder; never the user's ~/.steadyrun."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# The real clusters and servers: one definition each, so a session starts each one once
# whichever test modules use it.
from packaged_repo import repo  # noqa: E402, F401 - a git repository to package
from slurm_cluster import slurm_cluster, slurm_cluster_2nodes, sshd_server  # noqa: E402, F401


@pytest.fixture(autouse=True)
def steadyrun_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A fresh ``$STEADYRUN_HOME`` per test."""
    home = tmp_path_factory.mktemp("home") / "steadyrun"
    monkeypatch.setenv("STEADYRUN_HOME", str(home))
    return home


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child interpreters that must import steadyrun and test helpers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC_DIR), str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    return env


# Tests that start a cluster (Slurm, SSH, Ray) are `slow`; `-m "not slow"` is the fast subset.
_CLUSTER_MODULES = {"test_slurm_executor.py": "slurm", "test_ray_executor.py": "ray",
                    "test_sbatch.py": "slurm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        backend = _CLUSTER_MODULES.get(item.path.name)
        if backend is not None:
            item.add_marker(getattr(pytest.mark, backend))
            if item.path.name != "test_sbatch.py":
                item.add_marker(pytest.mark.slow)
