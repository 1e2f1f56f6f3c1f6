"""Several processes resuming one experiment at once: the controller lock lets exactly
one of them drive it; the others are refused cleanly and change nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import payloads
import steadyrun as run
from steadyrun.attempt.liveness import process_start_time
from steadyrun.store.db import Store
from steadyrun.store.liveness import controller_dead
from waiting import wait_for

pytestmark = pytest.mark.timeout(180)

RACERS = 3
TASKS = 4

# waits at a barrier (a file) with everything imported, then runs `steadyrun resume`
RACER = textwrap.dedent("""
    import os, sys, time
    exp_id, ready, go = sys.argv[1:4]
    from steadyrun.cli.main import main
    import steadyrun.engine.loop, steadyrun.experiment, steadyrun.manage  # noqa: F401
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.001)
    main(["resume", exp_id, "--json"])
""")


def race(exp_id: str, tmp_path, env: dict[str, str]) -> list[dict]:
    """Start RACERS processes that resume ``exp_id`` at the same instant; return the
    winners' JSON results after checking that every other one was refused cleanly."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(RACERS)]
    procs = [subprocess.Popen([sys.executable, str(script), exp_id, str(r), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in ready]
    try:
        wait_for(lambda: all(r.exists() for r in ready), timeout=60, what="every racer ready")
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    winners = [json.loads(out) for p, (out, _) in zip(procs, outs, strict=True)
               if p.returncode == 0]
    assert winners, (codes, outs)
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode == 0:
            continue
        # a loser: exit 2 and one clear line naming the controller that won
        assert p.returncode == 2, (codes, err)
        assert err.count("\n") == 1 and err.startswith("error: experiment "), err
        assert "already driven by controller pid" in err, err
        assert "Traceback" not in err and out == ""
    assert all(w["state"] == "succeeded" for w in winners)
    return winners


def assert_settled(exp_id: str, attempts: int | None) -> None:
    """Succeeded, every task succeeded (after ``attempts`` attempts when given), and no
    controller left holding or missing."""
    store = Store()
    try:
        row = store.experiment(exp_id)
        assert row.state == "succeeded" and row.controller_pid is None
        assert not controller_dead(row)
        tasks = store.tasks(exp_id)
        assert all(t.state == "succeeded" for t in tasks)
        if attempts is not None:
            assert all(t.attempts == attempts for t in tasks)
    finally:
        store.close()


@pytest.mark.parametrize("round_", range(10))
def test_three_resumes_at_once_run_each_task_exactly_once(round_, tmp_path, subprocess_env):
    markers = [tmp_path / f"count{i}" for i in range(TASKS)]
    tasks = [run.Task(f"t{i}", run.Partial(payloads.fail_until, str(m), 2))
             for i, m in enumerate(markers)]
    first = run.Experiment(tasks, title="race", executor=run.LocalExecutor("thread"),
                           progress=False).run(raise_on_failure=False)
    assert first.state == "failed" and all(m.read_text() == "1" for m in markers)
    race(first.id, tmp_path, subprocess_env)
    # each task ran once more in all: by one of the racers, never by two
    assert [m.read_text() for m in markers] == ["2"] * TASKS
    assert_settled(first.id, attempts=2)


@pytest.mark.parametrize("round_", range(5))
def test_three_resumes_after_the_controller_was_killed(round_, tmp_path, subprocess_env):
    effects = tmp_path / "effects.txt"
    script = tmp_path / "controller.py"
    script.write_text(textwrap.dedent(f"""
        import steadyrun as run, payloads
        tasks = [run.Task(f"t{{i}}", run.Partial(payloads.side_effect, {str(effects)!r},
                                                 f"t{{i}}", 0.2)) for i in range(6)]
        run.Experiment(tasks, title="killed", progress=False,
                       executor=run.LocalExecutor("thread", max_workers=2)).run()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=subprocess_env,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: effects.exists() and len(effects.read_text().split()) >= 2,
                 what="two side effects")
    finally:
        proc.kill()
        proc.wait()
    exp_id = run.list_experiments(title="killed")[0].id
    assert run.Experiment.from_id(exp_id).status().controller_dead
    race(exp_id, tmp_path, subprocess_env)
    assert sorted(set(effects.read_text().split())) == [f"t{i}" for i in range(6)]
    assert_settled(exp_id, attempts=None)


def test_a_refused_resume_changes_nothing(tmp_path):
    marker = tmp_path / "count"
    first = run.Experiment([run.Task("t", run.Partial(payloads.fail_until, str(marker), 2))],
                           title="refused", executor=run.LocalExecutor("thread"),
                           progress=False).run(raise_on_failure=False)
    store = Store()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = wait_for(lambda: process_start_time(holder.pid), what="the holder")
        store.acquire_controller(first.id, holder.pid, socket.gethostname(), started)
        before = (store.experiment(first.id).as_dict(),
                  [t.as_dict() for t in store.tasks(first.id)])
        with pytest.raises(run.ExperimentLocked, match=f"controller pid {holder.pid}"):
            run.Experiment.from_id(first.id).resume()
        after = (store.experiment(first.id).as_dict(),
                 [t.as_dict() for t in store.tasks(first.id)])
        assert after == before and marker.read_text() == "1"
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the lock is free again
    assert run.Experiment.from_id(first.id).resume()["t"].value == 2
    store.close()


def test_an_attempt_folder_left_by_a_crash_is_reused_only_when_empty(tmp_path):
    from steadyrun.errors import StoreError

    store = Store()
    exp_id = store.create_experiment("folders", [{"name": "a"}], {"type": "LocalExecutor"})
    left = store.attempt_dir(exp_id, "a", 1)
    left.parent.mkdir(mode=0o700)  # a task's folder appears with its first attempt
    left.mkdir(mode=0o755)  # made, then the controller died before the row was committed
    assert store.insert_attempt(exp_id, "a", 1, state="running") == left
    assert oct(left.stat().st_mode & 0o777) == "0o700"
    (store.attempt_dir(exp_id, "a", 2)).mkdir()
    (store.attempt_dir(exp_id, "a", 2) / "stdout.log").write_text("another run's output")
    with pytest.raises(StoreError, match="already holds files from another run"):
        store.insert_attempt(exp_id, "a", 2, state="running")
    with pytest.raises(StoreError, match="attempt 1 is already recorded"):
        store.insert_attempt(exp_id, "a", 1, state="running")
    store.close()


def test_take_over_lets_only_the_named_parent_hand_the_lock_on(tmp_path):
    store = Store()
    exp_id = store.create_experiment("handover", [{"name": "a"}], {"type": "LocalExecutor"})
    host = socket.gethostname()
    me = os.getpid()
    store.acquire_controller(exp_id, me, host, process_start_time(me) or 0.0)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = wait_for(lambda: process_start_time(child.pid), what="the child")
        with pytest.raises(run.ExperimentLocked):
            store.acquire_controller(exp_id, child.pid, host, started)
        store.acquire_controller(exp_id, child.pid, host, started, take_over_from=me)
        assert store.experiment(exp_id).controller_pid == child.pid
        assert not store.hand_over_controller(exp_id, me, child.pid, host, started)
    finally:
        child.kill()
        child.wait()
    store.close()

