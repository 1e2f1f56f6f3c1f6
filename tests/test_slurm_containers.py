"""Slurm containers (pyxis/enroot flags) and the package in the batch script: golden file
only, since no pyxis runs here; ``bash -n`` checks the script parses."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import steadyrun as run
from steadyrun.errors import ExecutorError
from steadyrun.executors.base import AttemptSpec
from steadyrun.executors.slurm.executor import SlurmExecutor
from steadyrun.executors.slurm.tunnel import SSHTunnel

GOLDEN = Path(__file__).resolve().parent / "golden" / "sbatch_container.sh"


def remote(**options) -> SlurmExecutor:
    tunnel = SSHTunnel("login.example.org", "alice", job_dir="/scratch/alice/jobs")
    return SlurmExecutor(tunnel=tunnel, python="/opt/venv/bin/python", **options)


def spec(tmp_path: Path, name: str = "train") -> AttemptSpec:
    folder = tmp_path / "exp-1" / "tasks" / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    return AttemptSpec(attempt_id=f"exp-1/{name}/1", task=name, number=1, payload=None,
                       attempt_dir=folder, env={"STEADYRUN_TASK": name})


def test_golden_container_script_with_the_package_mounted(tmp_path):
    ex = remote(container_image="nvcr.io/nvidia/pytorch:24.05-py3",
                container_mounts=["/datasets:/datasets:ro", "/scratch/alice:/scratch/alice"],
                packager=run.GitArchivePackager())
    script = ex.dryrun(spec(tmp_path))
    if os.environ.get("STEADYRUN_UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), (
        "the batch script changed; if on purpose, rerun with STEADYRUN_UPDATE_GOLDEN=1")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert ('--container-mounts="$ATTEMPT_DIR:$ATTEMPT_DIR,/datasets:/datasets:ro,'
            '/scratch/alice:/scratch/alice,$STEADYRUN_PACKAGE:$STEADYRUN_PACKAGE:ro"') in script
    assert '--container-workdir="$STEADYRUN_PACKAGE"' in script


def test_an_explicit_workdir_and_no_package(tmp_path):
    script = remote(container_image="img", container_workdir="/workspace").dryrun(spec(tmp_path))
    assert '--container-mounts="$ATTEMPT_DIR:$ATTEMPT_DIR" --container-workdir="/workspace"' \
        in script
    assert "STEADYRUN_PACKAGE" not in script
    plain = remote(packager=run.GitArchivePackager()).dryrun(spec(tmp_path))
    assert "-m steadyrun.packaging.unpack" in plain and 'cd "$STEADYRUN_PACKAGE"' in plain
    assert "--container" not in plain


@pytest.mark.parametrize("mounts", [["/a:/b,/c:/d"], ['/a:/b"; rm -rf /'], ["$HOME:/h"],
                                    ["nocolon"]])
def test_mounts_that_cannot_be_written_safely_are_refused(mounts):
    with pytest.raises(ExecutorError, match="container_mounts"):
        remote(container_image="img", container_mounts=mounts)
    with pytest.raises(ExecutorError, match="container_workdir"):
        remote(container_image="img", container_workdir="relative/dir")


def test_the_shell_unpack_of_a_container_job_runs_and_checks_the_file(tmp_path):
    from steadyrun.executors.slurm.shipping import _file_sha256, _tar_unpack
    from steadyrun.packaging.base import MARKER, Member, write_package

    package = write_package({"mod.py": Member(b"X = 1\n"), "run.sh": Member(b"#!/bin/sh\n",
                                                                             executable=True)},
                            tmp_path / "packages", {})
    tar = str(package.path)
    script = "\n".join([*_tar_unpack(tar, _file_sha256(tar)), 'echo "$STEADYRUN_PACKAGE"'])
    for _ in range(2):  # the second run finds the folder complete
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        folder = Path(out.stdout.strip())
        assert folder == tmp_path / "packages" / package.sha256
        assert (folder / "mod.py").read_text() == "X = 1\n"
        assert (folder / MARKER).read_text().strip() == package.sha256
        assert os.access(folder / "run.sh", os.X_OK)
    assert sorted(p.name for p in (tmp_path / "packages").iterdir()) == sorted(
        [package.path.name, package.sha256])
    (folder / MARKER).unlink()
    bad = script.replace(_file_sha256(tar), "0" * 64)
    assert subprocess.run(["bash", "-c", bad], capture_output=True).returncode != 0
