"""``steadyrun resume`` of an experiment launched with ``steadyrun run mymod:fn`` from a
project folder: the module imports and the task runs from that folder again, whether
the resume is run from the project folder, from another folder, or in the background.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from waiting import wait_for

pytestmark = pytest.mark.timeout(180)

MODULE = textwrap.dedent("""
    import os

    def flaky(name):
        # counted in the folder it runs from: fails the first time, then succeeds
        path = name + ".count"
        n = int(open(path).read()) + 1 if os.path.exists(path) else 1
        with open(path, "w") as f:
            f.write(str(n))
        if n < 2:
            raise RuntimeError(f"{name}: first call fails on purpose")
        return [n, os.getcwd()]
""")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mymod.py").write_text(MODULE)
    return folder


@pytest.fixture
def steadyrun_cli(subprocess_env, steadyrun_home):
    """``steadyrun_cli(cwd, "run", ...)``: the installed command as a user runs it, from
    ``cwd`` (not ``python -m``, which would put ``cwd`` on the import path by itself)."""
    script = shutil.which("steadyrun", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the steadyrun console script is not installed next to this python")
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=90, stdin=subprocess.DEVNULL)

    return call


def failed_run(steadyrun_cli, project: Path, name: str) -> str:
    proc = steadyrun_cli(project, "run", "mymod:flaky", f"name={name}", "--quiet",
                         "--name", name)
    assert proc.returncode == 1, proc.stderr
    assert "first call fails on purpose" in proc.stderr
    listed = json.loads(steadyrun_cli(project, "list", "--json").stdout)
    return next(e["id"] for e in listed if e["title"] == name)


def test_resume_from_the_project_folder_and_from_elsewhere(steadyrun_cli, project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name, where in (("here", project), ("there", elsewhere)):
        exp_id = failed_run(steadyrun_cli, project, name)
        resumed = steadyrun_cli(where, "resume", exp_id, "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert "No module named" not in resumed.stderr
        result = json.loads(resumed.stdout)
        # the second call, made from the folder the experiment was launched from
        assert result["tasks"][name]["value"] == [2, str(project)]
        assert (project / f"{name}.count").read_text() == "2"
    assert not list(elsewhere.iterdir())  # nothing was run from there


def test_detached_run_then_background_resume_from_elsewhere(steadyrun_cli, project,
                                                            tmp_path):
    def final(exp_id: str) -> dict | None:
        status = json.loads(steadyrun_cli(tmp_path, "status", exp_id, "--json").stdout)
        return status if status["state"] in ("succeeded", "failed", "cancelled") else None

    started = steadyrun_cli(project, "run", "mymod:flaky", "name=bg", "--detach")
    assert started.returncode == 0, started.stderr
    exp_id = started.stdout.strip()
    status = wait_for(lambda: final(exp_id), timeout=60, what="the detached run to end")
    assert status["state"] == "failed" and "first call fails" in status["tasks"][0]["message"]

    resumed = steadyrun_cli(tmp_path, "resume", exp_id, "--detach")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == exp_id
    status = wait_for(lambda: final(exp_id), timeout=60, what="the background resume to end")
    assert status["state"] == "succeeded", status
    assert (project / "bg.count").read_text() == "2"
