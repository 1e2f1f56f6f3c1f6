"""Packaged code on the local executor: the committed code runs, not the working tree."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import steadyrun as run
from packaged_repo import git
from steadyrun.packaging.record import RECORD_FILE, read_record

pytestmark = pytest.mark.timeout(120)


def test_the_committed_code_runs_in_a_packaged_copy(repo, steadyrun_home):
    path, name, module = repo
    assert module.VALUE == "dirty"  # what this process imported
    ex = run.LocalExecutor(packager=run.GitArchivePackager())
    exp = run.Experiment([run.Task("which", run.Partial(module.which)),
                          run.Task("again", run.Partial(module.which)),
                          run.Task("script", run.Script("./show.sh"))],
                         executor=ex, progress=False, tail_logs=False)
    result = exp.run()
    value = result["which"].value
    assert value["value"] == "committed"
    package = value["cwd"]
    assert value["file"] == os.path.join(package, f"{name}.py")
    assert result["again"].value["cwd"] == package  # one package for every task
    out = (steadyrun_home / "experiments" / exp.id / "tasks" / "script" / "1" /
           "stdout.log").read_text()
    assert out.split() == ["committed", package]  # a Script runs in the package too
    commit = git(path, "rev-parse", "HEAD").strip()
    record = read_record(steadyrun_home / "experiments" / exp.id)
    assert record["git"]["commit"] == commit and record["git"]["dirty"] is True
    assert record["git"]["changed"] == [f"{name}.py"]
    [pkg] = record["packages"].values()
    assert os.path.basename(package) == pkg["sha256"]
    assert pkg["info"]["git"]["commit"] == commit
    mode = os.stat(steadyrun_home / "experiments" / exp.id / RECORD_FILE).st_mode
    assert stat.S_IMODE(mode) == 0o600
    diff = (steadyrun_home / "experiments" / exp.id / "repro.diff").read_text()
    assert '-VALUE = \'committed\'' in diff and '+VALUE = \'dirty\'' in diff
    # a second experiment with the same code reuses the stored package and its folder
    again = run.Experiment([run.Task("which", run.Partial(module.which))], executor=ex,
                           progress=False, tail_logs=False).run()
    assert again["which"].value["cwd"] == package
    assert len(list((steadyrun_home / "packages").glob("*.tar.gz"))) == 1


def test_uncommitted_changes_are_packed_when_asked(repo):
    _, _, module = repo
    ex = run.LocalExecutor(packager=run.GitArchivePackager(include_uncommitted=True))
    assert run.run(run.Partial(module.which), executor=ex, progress=False,
                   tail_logs=False)["value"] == "dirty"


def test_a_dirty_tree_is_refused_when_checked(repo, steadyrun_home):
    path, name, module = repo
    ex = run.LocalExecutor(packager=run.GitArchivePackager(check_uncommitted_changes=True))
    with pytest.raises(run.PackagingError, match=f"uncommitted changes: {name}.py"):
        run.Experiment([run.Task("which", run.Partial(module.which))], executor=ex,
                       progress=False).run()
    assert not list((steadyrun_home / "experiments").glob("*")), "nothing was created"
    (path / "notes.txt").write_text("x")
    git(path, "commit", "-q", "-am", "second")
    ex = run.LocalExecutor(packager=run.GitArchivePackager(check_untracked_files=True))
    with pytest.raises(run.PackagingError, match="untracked files: notes.txt"):
        run.run(run.Partial(module.which), executor=ex, progress=False)


def test_show_prints_the_commit_and_the_diff_hash(repo, steadyrun_home, subprocess_env):
    path, _, module = repo
    ex = run.LocalExecutor(packager=run.GitArchivePackager())
    first = run.Experiment([run.Task("which", run.Partial(module.which))], executor=ex,
                           progress=False, tail_logs=False)
    first.run()
    record = read_record(steadyrun_home / "experiments" / first.id)
    out = subprocess.run([sys.executable, "-m", "steadyrun", "show", first.id],
                         env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert git(path, "rev-parse", "HEAD").strip() in out.stdout
    assert record["git"]["diff_sha256"] in out.stdout
    [pkg] = record["packages"].values()
    assert pkg["sha256"] in out.stdout
    as_json = subprocess.run([sys.executable, "-m", "steadyrun", "show", first.id, "--json"],
                             env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["git"]["commit"] == record["git"]["commit"]
    # commit the change: the next experiment runs other code
    git(path, "commit", "-q", "-am", "second")
    second = run.Experiment([run.Task("which", run.Partial(module.which, ))], executor=ex,
                            progress=False, tail_logs=False)
    assert second.run()["which"].value["value"] == "dirty"
    diff = subprocess.run([sys.executable, "-m", "steadyrun", "diff", first.id, second.id],
                          env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert diff.returncode == 0, diff.stderr
    assert "git.commit" in diff.stdout and "git.dirty" in diff.stdout
    assert "packages" in diff.stdout


def test_the_record_withholds_secrets_and_needs_no_git(tmp_path, monkeypatch, steadyrun_home):
    monkeypatch.chdir(tmp_path)  # not a git repository
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefsecretvalue")
    exp = run.Experiment([run.Task("s", run.Script(inline="true", env={
        "API_KEY": "sk-plainsecretvalue", "TOKEN": run.Secret("HF_TOKEN"), "SEED": "7"}))],
        progress=False, tail_logs=False)
    exp.run()
    folder = steadyrun_home / "experiments" / exp.id
    text = (folder / RECORD_FILE).read_text()
    assert "plainsecretvalue" not in text and "abcdefsecretvalue" not in text
    assert read_record(folder)["configs"] == (folder / "definition.yaml").read_text()
    record = read_record(folder)
    assert "plainsecretvalue" not in record["configs"]
    assert "abcdefsecretvalue" not in record["configs"]
    assert record["git"] is None and record["packages"] == {}
    assert "SEED" in record["configs"] and "API_KEY" in record["configs"]
    assert record["distributions"]["pytest"] == pytest.__version__
    assert record["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    from steadyrun.cli.show import summary

    lines = dict(summary(record))
    assert lines["git"] == "not launched from a git repository"
    assert lines["package"].startswith("none")


def test_a_resume_runs_the_package_of_the_launch(repo, steadyrun_home):
    path, _, module = repo
    ex = run.LocalExecutor(packager=run.GitArchivePackager())
    exp = run.Experiment([run.Task("which", run.Partial(module.which))], executor=ex,
                         progress=False, tail_logs=False)
    first = exp.run()["which"].value
    git(path, "commit", "-q", "-am", "second")  # HEAD now holds the other code
    again = run.Experiment.from_id(exp.id).resume(rerun="all", tail_logs=False)
    assert again["which"].attempts == 2
    assert again["which"].value == first  # the same package, built once at launch
