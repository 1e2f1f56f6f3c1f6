"""An experiment's definition is whole: what a resume, a background controller or
``Experiment.from_id`` rebuilds is what ran, and results read back equal what ``run()``
returned."""

from __future__ import annotations

import json
import os
import sys

import pytest

import payloads
import steadyrun as run
from steadyrun.errors import StoreError
from steadyrun.store.db import Store
from steadyrun.store.definition import LAUNCH_FILE, load_definition
from waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def attempt_executors(exp_id: str) -> dict[tuple[str, int], str]:
    store = Store()
    try:
        return {(a.task, a.number): a.executor for a in store.attempts(exp_id)}
    finally:
        store.close()


def test_tasks_keep_their_own_executors_when_rebuilt_and_resumed(tmp_path):
    own = run.LocalExecutor(strategy="thread", max_workers=1)
    marker = str(tmp_path / "count")
    tasks = [run.Task("plain", run.Partial(payloads.add, 1)),
             run.Task("flaky", run.Partial(payloads.fail_until, marker, 2), executor=own),
             run.Task("also", run.Partial(payloads.add, 2), executor=own)]
    first = run.Experiment(tasks, title="own", executor=run.LocalExecutor()).run(
        raise_on_failure=False)
    assert first["flaky"].state == "failed"

    exp = run.Experiment.from_id(first.id)
    plain, flaky, also = exp.tasks
    assert plain.executor is None
    assert flaky.executor.to_config() == own.to_config()
    assert flaky.executor is also.executor  # one executor, one capacity, as it was

    resumed = exp.resume()
    assert resumed["flaky"].value == 2
    assert attempt_executors(first.id) == {
        ("plain", 1): "local/subprocess", ("flaky", 1): "local/thread",
        ("flaky", 2): "local/thread", ("also", 1): "local/thread"}


def test_a_detached_controller_runs_each_task_on_its_own_executor():
    exp = run.Experiment([
        run.Task("a", run.Partial(payloads.add, 1)),
        run.Task("b", run.Partial(payloads.add, 2), executor=run.LocalExecutor("sequential"))],
        title="detached-own")
    exp.run(detach=True)
    wait_for(lambda: exp.status().state in ("succeeded", "failed", "cancelled"),
             what="the detached experiment to end")
    assert exp.status().state == "succeeded", str(exp.status())
    assert attempt_executors(exp.id) == {("a", 1): "local/subprocess",
                                         ("b", 1): "local/sequential"}


def test_launch_folder_and_import_path_are_recorded_and_restored(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "projmod_restore.py").write_text(
        "import os\n\ndef where(tag):\n    return tag, os.getcwd()\n")
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    import projmod_restore

    result = run.Experiment([run.Task("w", run.Partial(projmod_restore.where, "x"))],
                            title="launch").run()
    assert result["w"].value == ("x", str(project))
    launch = json.loads((Store().experiment_dir(result.id) / LAUNCH_FILE).read_text())
    assert launch["launch_dir"] == str(project)
    assert str(project) in launch["import_path"]

    # elsewhere, with the project folder no longer importable: loading puts it back
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project)])
    store = Store()
    definition = load_definition(store, result.id)
    store.close()
    assert definition.launch_dir == project
    assert str(project) in sys.path
    assert definition.tasks[0].payload.__fn_or_cls__ is projmod_restore.where


def test_payloads_are_read_only_from_inside_the_experiment_folder(tmp_path):
    result = run.Experiment([run.Task("l", lambda: 41 + 1)], title="pickled").run()
    assert result["l"].value == 42
    store = Store()
    folder = store.experiment_dir(result.id)
    definition = folder / "definition.yaml"
    text = definition.read_text()
    assert "cloudpickle:" in text
    outside = tmp_path / "evil.pkl"
    outside.write_bytes(b"not read")
    definition.write_text(text.replace("tasks/l/payload.pkl",
                                       os.path.relpath(outside, folder)))
    with pytest.raises(StoreError, match="outside the experiment's folder"):
        load_definition(store, result.id)
    store.close()


def test_results_read_back_equal_what_run_returned_for_a_failed_task():
    exp = run.Experiment([run.Task("ok", run.Partial(payloads.add, 1)),
                          run.Task("bad", run.Partial(payloads.boom, "kaput")),
                          run.Task("after", run.Partial(payloads.add, 2), depends_on=["bad"])],
                         title="same-results")
    ran = exp.run(raise_on_failure=False)
    again = run.Experiment.from_id(ran.id).results()
    assert ran.state == again.state == "failed"
    for name in ("ok", "bad", "after"):
        assert ran[name] == again[name], name
        assert ran[name].to_dict() == again[name].to_dict()
    error = again["bad"].error
    assert error is not None and error.kind == "error" and again["bad"].kind == "error"
    assert error.exit_code == ran["bad"].error.exit_code
    assert "RuntimeError: kaput" in (error.remote_traceback or "")
    assert "about to fail" in (error.log_tail or "")
    assert again["ok"].value == ran["ok"].value == 1
    with pytest.raises(run.TaskFailed, match="kaput"):
        _ = again["bad"].value
    assert again["after"].state == "skipped" and again["after"].error is None
