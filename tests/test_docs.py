"""The documentation site: every public name has a docstring and an API page entry, the
CLI reference has a section per command, and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import steadyrun as run

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _api_text() -> str:
    return "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))


@pytest.mark.parametrize("name", run.__all__)
def test_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(run, name)
    assert (inspect.getdoc(obj) or "").strip(), f"run.{name} has no docstring"


@pytest.mark.parametrize("name", run.__all__)
def test_public_name_is_on_an_api_page(name: str) -> None:
    obj = getattr(run, name)
    target = obj.__name__ if isinstance(obj, types.ModuleType) else f"steadyrun.{name}"
    found = re.search(rf"^::: {re.escape(target)}$", _api_text(), re.MULTILINE)
    assert found, f"run.{name} is not rendered on any page of docs/api/ (add '::: {target}')"


def test_cli_reference_has_a_section_per_command() -> None:
    """Each command has a section with a help marker, which the docs build replaces by
    the command's ``--help`` text (docs/_hooks.py): options cannot drift from the code."""
    from steadyrun.cli.main import app

    text = (DOCS / "reference" / "cli.md").read_text()
    missing = []
    for name in app.commands:
        if not re.search(rf"^## `steadyrun {name}`$", text, re.MULTILINE):
            missing.append(f"a section '## `steadyrun {name}`'")
        if f"<!-- help: {name} -->" not in text:
            missing.append(f"<!-- help: {name} -->")
    assert not missing, "docs/reference/cli.md lacks: " + ", ".join(missing)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs and mkdocstrings are not installed (the docs extra)")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "api" / "config" / "index.html").exists()
