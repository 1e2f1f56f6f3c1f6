"""Managing experiments from other processes: status, logs, cancel, detach, resume."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import payloads
import steadyrun as run
from steadyrun.manage import reconcile
from steadyrun.store.db import Store
from waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def integrity_ok() -> bool:
    db = Path(os.environ["STEADYRUN_HOME"]) / "steadyrun.db"
    return sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"



def alive(pids) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_resume_after_sigkill_runs_the_rest_exactly_once(tmp_path, subprocess_env):
    effects = tmp_path / "effects.txt"
    script = tmp_path / "controller.py"
    script.write_text(textwrap.dedent(f"""
        import steadyrun as run, payloads
        tasks = [run.Task(f"t{{i}}", run.Partial(payloads.side_effect, {str(effects)!r},
                                                 f"t{{i}}", 0.4)) for i in range(10)]
        exp = run.Experiment(tasks, title="killed", executor=run.LocalExecutor(cpus=2))
        exp.run()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=subprocess_env,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: effects.exists() and len(effects.read_text().split()) >= 4,
             what="four side effects")
    proc.kill()
    proc.wait()
    exp_id = run.list_experiments(title="killed")[0].id
    status = run.Experiment.from_id(exp_id).status()
    assert status.state == "running" and status.controller_dead
    result = run.Experiment.from_id(exp_id).resume()
    names = effects.read_text().split()
    assert sorted(names) == sorted(f"t{i}" for i in range(10)), names
    assert result.ok and all(r.state == "succeeded" for r in result.values())
    assert result["t9"].value == "t9"
    assert integrity_ok()


def test_detached_experiment_followed_by_status_from_a_third_process(subprocess_env):
    exp = run.Experiment([run.Task("a", run.Partial(payloads.sleep_for, 0.5)),
                          run.Task("b", run.Partial(payloads.add, 1, b=2), depends_on=["a"])],
                         title="detached")
    started = time.time()
    assert exp.run(detach=True) is None
    assert time.time() - started < 5
    code = textwrap.dedent(f"""
        import time, steadyrun as run
        exp = run.Experiment.from_id({exp.id[:-2]!r})
        while exp.status().state not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.1)
        s = exp.status()
        print(s.state, [t.state for t in s.tasks], exp.results()["b"].value)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, timeout=60,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "succeeded ['succeeded', 'succeeded'] 3"
    assert integrity_ok()


def test_cancel_from_another_process_stops_a_running_tree(tmp_path, subprocess_env):
    pidfile = tmp_path / "pids"
    exp = run.Experiment([
        run.Task("long", run.Partial(payloads.spawn_children_and_sleep, str(pidfile))),
        run.Task("after", run.Partial(payloads.add, 1), depends_on=["long"])], title="cxl")
    exp.run(detach=True)
    wait_for(pidfile.exists, what="the task's process tree")
    pids = [int(p) for p in pidfile.read_text().split()]
    code = f"import steadyrun as run; print(run.Experiment.from_id({exp.id!r}).cancel())"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, timeout=60,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "cancelled" in out.stdout
    wait_for(lambda: exp.status().state == "cancelled", what="the experiment cancelled")
    states = {t.name: t.state for t in exp.status().tasks}
    assert states == {"long": "cancelled", "after": "cancelled"}
    time.sleep(0.3)
    assert alive(pids) == []
    assert "already cancelled" in exp.cancel()
    assert integrity_ok()


def test_a_second_controller_is_refused_and_a_dead_one_is_reported(tmp_path):
    exp = run.Experiment([run.Task("slow", run.Partial(payloads.sleep_for, 30))], title="lock")
    exp.run(detach=True)
    wait_for(lambda: exp.status().tasks[0].state == "running", what="the task to start")
    controller = exp.status().controller
    assert controller["alive"] is True
    with pytest.raises(run.ExperimentLocked, match=f"pid {controller['pid']}"):
        run.Experiment.from_id(exp.id).resume()
    os.kill(controller["pid"], signal.SIGKILL)
    wait_for(lambda: exp.status().controller["alive"] is False, what="a dead controller")
    status = exp.status()
    assert status.state == "running" and status.controller_dead
    assert "controller dead" in str(status)
    # the dead controller holds no lock: a resume takes over (and the task runs again)
    leftover = status.tasks[0].pid
    exp2 = run.Experiment.from_id(exp.id)
    exp2.tasks[0].timeout = 0.5  # do not wait 30 s in the test
    result = exp2.resume(raise_on_failure=False)
    assert result["slow"].attempts == 2 and result["slow"].kind == "timeout"
    assert leftover is None or alive([leftover]) == []
    assert integrity_ok()


def test_running_without_any_controller_is_dead_in_status_and_list():
    store = Store()
    exp_id = store.create_experiment("orphan", [{"name": "a"}], {"type": "LocalExecutor"})
    store.update_experiment(exp_id, state="running", started_at=time.time())
    store.close()
    status = run.Experiment.from_id(exp_id).status()
    assert status.controller_dead and status.controller["alive"] is False
    assert f"controller dead: `steadyrun resume {exp_id}`" in str(status)
    data = status.to_dict()
    assert data["controller_dead"] is True and data["next_step"] == f"steadyrun resume {exp_id}"
    info = run.list_experiments(title="orphan")[0]
    assert info.controller_dead and info.controller_alive is False


def test_reconcile_keeps_a_finished_attempt_and_loses_an_unfinished_one():
    store = Store()
    exp_id = store.create_experiment("settle", [{"name": "done"}, {"name": "cut"}],
                                     {"type": "LocalExecutor"})
    for name in ("done", "cut"):
        store.update_task(exp_id, name, state="running", attempts=1)
        store.insert_attempt(exp_id, name, 1, state="running", started_at=time.time())
    (store.attempt_dir(exp_id, "done", 1) / "result.pkl").write_bytes(
        pickle.dumps(7))
    store.update_experiment(exp_id, state="running")
    notes = reconcile(store, exp_id)
    assert len(notes) == 2
    states = {t.name: (t.state, t.kind) for t in store.tasks(exp_id)}
    assert states == {"done": ("succeeded", None), "cut": ("failed", "lost")}
    row = store.experiment(exp_id)
    assert row.state == "failed" and row.controller_pid is None  # released, not running
    assert run.Experiment.from_id(exp_id).results()["done"].value == 7
    store.close()


def test_resume_reruns_only_the_chosen_kinds(tmp_path):
    marker = str(tmp_path / "count")
    tasks = [run.Task("ok", run.Partial(payloads.add, 1)),
             run.Task("flaky", run.Partial(payloads.fail_until, marker, 2)),
             run.Task("child", run.Partial(payloads.add, 2), depends_on=["flaky"])]
    first = run.Experiment(tasks, title="partial").run(raise_on_failure=False)
    assert [first[n].state for n in ("ok", "flaky", "child")] == [
        "succeeded", "failed", "skipped"]
    exp = run.Experiment.from_id(first.id)
    again = exp.resume(rerun=["never-started"], raise_on_failure=False)
    assert again["flaky"].state == "failed" and again["child"].state == "skipped"
    assert Path(marker).read_text() == "1"  # flaky was not rerun
    final = run.Experiment.from_id(first.id).resume()
    assert final["flaky"].value == 2 and final["child"].value == 2
    assert final["flaky"].attempts == 2  # attempt numbers go on across runs
    assert final["ok"].value == 1 and final["ok"].attempts == 1  # never run twice
    assert run.Experiment.from_id(first.id).results()["ok"].value == 1


def test_logs_of_finished_and_followed_attempts():
    exp = run.Experiment([run.Task("talk", run.Partial(payloads.chatty, 3)),
                          run.Task("slow", run.Partial(payloads.chatty, 5, 0.2))], title="logs")
    exp.run(detach=True)
    followed = list(run.Experiment.from_id(exp.id).logs("slow", follow=True))
    assert followed == [f"line {i}" for i in range(5)] + ["to stderr"]
    both = list(exp.logs())
    assert "[talk] line 2" in both and "[slow] to stderr" in both
    assert list(exp.logs("talk", stream="stderr")) == ["to stderr"]
    with pytest.raises(run.TaskDefinitionError, match="no task 'nope'"):
        list(exp.logs("nope"))


def test_unknown_and_ambiguous_ids_name_the_candidates():
    a = run.Experiment([run.Task("t", run.Partial(payloads.add, 1))], title="same").run()
    b = run.Experiment([run.Task("t", run.Partial(payloads.add, 1))], title="same").run()
    with pytest.raises(run.ExperimentNotFound, match="matches several"):
        run.Experiment.from_id("same-")
    with pytest.raises(run.ExperimentNotFound, match="closest: "):
        run.Experiment.from_id(a.id[:-1] + "z")
    assert run.Experiment.from_title("same").id == b.id
    with pytest.raises(run.ExperimentNotFound, match="closest: same"):
        run.Experiment.from_title("sane")
    infos = run.list_experiments(title="same")
    assert [i.id for i in infos] == [b.id, a.id]
    assert infos[0].counts == {"succeeded": 1} and infos[0].controller_alive is None


def test_sweep_expands_a_grid_into_named_tasks():
    base = run.Task("fit", run.Partial(payloads.add, 0, b=0),
                    resources=run.Resources(cpus=0.5))
    tasks = run.sweep(base, {"a": [1, 2], "b": [0.001, 10]})
    assert [t.name for t in tasks] == ["fit[a=1,b=0.001]", "fit[a=1,b=10]",
                                       "fit[a=2,b=0.001]", "fit[a=2,b=10]"]
    assert all(t.resources.cpus == 0.5 for t in tasks)
    result = run.Experiment(tasks, executor=run.LocalExecutor(strategy="thread")).run()
    assert result["fit[a=2,b=10]"].value == 12
    with pytest.raises(run.TaskDefinitionError, match="sweep over 'c'"):
        run.sweep(base, {"c": [1]})
    assert base.payload.a == 0  # the original is untouched


def test_store_lock_is_released_after_a_normal_run():
    result = run.Experiment([run.Task("t", run.Partial(payloads.add, 1))], title="rel").run()
    row = Store().experiment(result.id)
    assert row.controller_pid is None and row.state == "succeeded"
