"""A git repository in a temporary folder with a module installed nowhere: committed
once, then changed without committing (for the packaging tests)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

MODULE_TEXT = '''import os
VALUE = {value!r}


def which():
    return {{"value": VALUE, "cwd": os.getcwd(), "file": __file__}}
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def make_repo(root: Path) -> tuple[Path, str]:
    """A repository with ``<module>.py`` committed as ``VALUE = "committed"`` and changed
    to ``"dirty"`` in the working tree; returns (repository, module name)."""
    name = f"srpkg_{uuid.uuid4().hex[:10]}"
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    (repo / f"{name}.py").write_text(MODULE_TEXT.format(value="committed"))
    (repo / "show.sh").write_text(f'#!/bin/sh\n{sys.executable} -c "import {name}, os; '
                                  f'print({name}.VALUE, os.getcwd())"\n')
    (repo / "show.sh").chmod(0o755)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    (repo / f"{name}.py").write_text(MODULE_TEXT.format(value="dirty"))
    return repo, name


def import_dirty(repo: Path, name: str):
    """The module as the working tree has it, imported in this process."""
    import importlib

    sys.path.insert(0, str(repo))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(repo))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A committed repository with a module installed nowhere, changed since its commit,
    the working folder for the test; its module imported here (the dirty version)."""
    path, name = make_repo(tmp_path)
    monkeypatch.chdir(path)
    module = import_dirty(path, name)
    yield path, name, module
    sys.modules.pop(name, None)
