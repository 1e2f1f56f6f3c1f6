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
