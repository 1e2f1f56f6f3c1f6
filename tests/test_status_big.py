"""``status`` and ``resume`` of an experiment past 50 tasks: counts, the tasks worth a
look and a total line; ``--all`` streams every task; a resume with nothing to do is
told from counts, without reading the definition."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import steadyrun as run
from payloads import add, boom
from steadyrun.store.db import Store
from steadyrun.store.summary import iter_tasks, notable_tasks, nothing_to_resume, state_counts


def _experiment(ok: int, failed: int, title: str) -> str:
    tasks = [run.Task(f"ok{i}", run.Partial(add, i)) for i in range(ok)]
    tasks += [run.Task(f"bad{i}", run.Partial(boom, f"no {i}")) for i in range(failed)]
    exp = run.Experiment(tasks, title=title, executor=run.LocalExecutor(strategy="thread"),
                         progress=False, tail_logs=False, monitor_interval=None)
    return exp.run(raise_on_failure=False).id


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              stdin=subprocess.DEVNULL)

    return call


@pytest.fixture
def mixed(steadyrun_home) -> str:
    return _experiment(35, 25, "mixed")


def test_status_shows_counts_the_failed_tasks_and_how_to_see_the_rest(cli, mixed):
    proc = cli("status", mixed)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "60: 35 succeeded, 25 failed" in text
    rows = [line for line in text.splitlines() if line.startswith(("ok", "bad"))]
    assert len(rows) == 20 and all(r.startswith("bad") for r in rows)
    assert "RuntimeError" in text or "error" in text
    assert f"and 5 more; every one: `steadyrun status {mixed} --all --state failed`" in text
    assert "total: 60 tasks, 35 succeeded, 25 failed; 60 attempts" in text

    data = json.loads(cli("status", mixed, "--json").stdout)
    assert data["counts"] == {"succeeded": 35, "failed": 25}
    assert data["totals"]["tasks"] == 60 and data["totals"]["attempts"] == 60
    assert len(data["tasks"]) == 20 and data["tasks_more"] == 5
    assert {t["state"] for t in data["tasks"]} == {"failed"}
    assert data["tasks"][0]["name"] == "bad0" and data["tasks"][0]["kind"] == "error"


def test_status_all_streams_every_task_in_order(cli, mixed):
    proc = cli("status", mixed, "--all")
    names = [line.split()[0] for line in proc.stdout.splitlines()
             if line.startswith(("ok", "bad"))]
    assert names == [f"ok{i}" for i in range(35)] + [f"bad{i}" for i in range(25)]
    assert "more" not in proc.stdout and "total: 60 tasks" in proc.stdout
    lines = cli("status", mixed, "--all", "--json").stdout.splitlines()
    tasks = [json.loads(line) for line in lines]
    assert [t["name"] for t in tasks] == names
    assert tasks[0]["state"] == "succeeded" and tasks[0]["attempts"] == 1
    failed = cli("status", mixed, "--all", "--state", "failed", "--json").stdout.splitlines()
    assert [json.loads(line)["name"] for line in failed] == [f"bad{i}" for i in range(25)]
    refused = cli("status", mixed, "--state", "failed")
    assert refused.returncode == 2 and "--all" in refused.stderr
    unknown = cli("status", mixed, "--all", "--state", "broken")
    assert unknown.returncode == 2 and "succeeded" in unknown.stderr


def test_summary_queries_page_and_bound(mixed):
    store = Store(readonly=True)
    counts = state_counts(store, mixed)
    assert counts == {"succeeded": 35, "failed": 25}
    assert [t.name for t in notable_tasks(store, mixed, counts, 3)] == ["bad0", "bad1", "bad2"]
    paged = [t.name for t in iter_tasks(store, mixed, page=7)]
    assert paged == [f"ok{i}" for i in range(35)] + [f"bad{i}" for i in range(25)]
    assert not nothing_to_resume(store, mixed, ("failed",))
    assert nothing_to_resume(store, mixed, ("cancelled",)) is True
    assert not nothing_to_resume(store, mixed, ("ok1",))
    assert not nothing_to_resume(store, mixed, ("all",))
    store.close()


def test_resume_with_nothing_to_do_reads_no_definition(cli, steadyrun_home):
    exp_id = _experiment(55, 0, "done")
    (Store().experiment_dir(exp_id) / "definition.yaml").unlink()  # not read
    proc = cli("resume", exp_id)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to resume (55 succeeded)" in proc.stdout
    data = json.loads(cli("resume", exp_id, "--json").stdout)
    assert data == {"id": exp_id, "state": "succeeded", "counts": {"succeeded": 55},
                    "resumed": []}
    detached = cli("resume", exp_id, "--detach")
    assert detached.returncode == 0 and detached.stdout.strip() == exp_id
    assert "nothing to resume" in detached.stderr
    result = run.Experiment.from_id(exp_id).resume()
    assert result.state == "succeeded" and result["ok3"].value == 3
    store = Store()
    assert store.experiment(exp_id).state == "succeeded"
    assert not [e for e in store.events(exp_id) if e.kind == "reopened"]
    store.close()


def test_resume_choosing_nothing_of_a_failed_experiment_exits_1(cli, mixed):
    proc = cli("resume", mixed, "--rerun", "cancelled")
    assert proc.returncode == 1
    assert "nothing to resume" in proc.stdout and "chooses no task" in proc.stderr
    with pytest.raises(run.ExperimentFailed):
        run.Experiment.from_id(mixed).resume(rerun="cancelled")


def test_a_big_rerun_sums_up_its_outcome(cli, mixed):
    proc = cli("resume", mixed, "--rerun", "ok0", "--quiet")
    assert proc.returncode == 1, proc.stderr  # the failed ones are still failed
    assert "60 tasks: 35 succeeded, 25 failed" in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("ok")]) == 0
    assert f"experiment {mixed} failed" in proc.stdout
