"""Crash recovery: a controller killed with SIGKILL at the moments that matter, then
resumed. Every task's side effect happens exactly once, nothing finished is rerun, and
no process of the killed run outlives it.

Payloads that must not finish before the resume took over wait on a gate file that is
created only once the store holds the resume's new attempt: an old worker that
survived would then write a second side effect, deterministically.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap

import psutil
import pytest

import crash_payloads as cp
import steadyrun as run
from crash_helpers import (
    STEADYRUN_BIN,
    Reaper,
    Release,
    assert_exactly_once,
    assert_no_late_results,
    attempts,
    detach,
    driver_env,
    has_attempt,
    kill_controller,
    resume,
    started_pids,
    state,
    unique_title,
    wait_final,
    wait_while_driven,
)
from waiting import wait_for

pytestmark = [pytest.mark.crash, pytest.mark.timeout(180)]


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.cleanup()


def started(starts, name: str) -> bool:
    return any(fields[0] == name for fields in cp.read_lines(starts))


def effect_task(name: str, effects, starts, *, hold: float = 0.0, gate=None,
                cpus: float = 0.25, **options) -> run.Task:
    payload = run.Partial(cp.effect, str(effects), name, hold=hold, starts=str(starts),
                          gate=str(gate) if gate else None)
    return run.Task(name, payload, resources=run.Resources(cpus=cpus), **options)


# --- 1. pool workers ---------------------------------------------------------------------


def test_pool_worker_of_a_killed_controller_never_adds_a_second_side_effect(
        tmp_path, reaper):
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    tasks = [effect_task("quick", effects, starts, hold=1.2),
             effect_task("slow", effects, starts, gate=gate, depends_on=["quick"])]
    exp = run.Experiment(tasks, title=unique_title("pool"), progress=False,
                         executor=run.LocalExecutor(strategy="process", max_workers=2))
    controller = detach(exp, reaper)
    wait_while_driven(exp.id, lambda: started(starts, "slow"), "the slow task to start")
    pool = reaper.track(c.pid for c in psutil.Process(controller).children())
    old_worker = reaper.track(started_pids(starts))
    kill_controller(exp.id, reaper)

    with Release(gate, lambda: has_attempt(exp.id, "slow", 2)):
        result = resume(exp.id)
    assert result.ok, result
    assert result["quick"].attempts == 1, "a finished task ran again"
    reaper.assert_gone(pool + old_worker, "the killed controller's pool workers")
    assert_exactly_once(effects, ["quick", "slow"])
    assert_no_late_results(exp.id)
    reaper.assert_no_leftovers("after the resume")


# --- 2. attempts queued in the executor -------------------------------------------------


def test_attempts_queued_behind_a_busy_worker_run_once_after_resume(tmp_path, reaper):
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    names = ["t1", "t2", "t3"]
    tasks = [effect_task(n, effects, starts, gate=gate, cpus=0.1) for n in names]
    exp = run.Experiment(tasks, title=unique_title("queued"), progress=False,
                         executor=run.LocalExecutor(strategy="subprocess", max_workers=1))
    detach(exp, reaper)
    wait_while_driven(exp.id, lambda: started(starts, "t1"), "the first task to start")
    old_worker = reaper.track(started_pids(starts))
    kill_controller(exp.id, reaper)

    with Release(gate, lambda: any(a.number == 2 for a in attempts(exp.id))):
        result = resume(exp.id)
    assert result.ok, result
    reaper.assert_gone(old_worker, "the killed controller's worker")
    assert_exactly_once(effects, names)
    assert_no_late_results(exp.id)
    reaper.assert_no_leftovers("after the resume")


@pytest.mark.parametrize("strategy", ["subprocess", "process"])
def test_a_time_limit_counts_from_the_start_not_from_the_queue(tmp_path, strategy):
    effects, starts = tmp_path / "effects", tmp_path / "starts"
    tasks = [effect_task("first", effects, starts, hold=1.5, cpus=0.1),
             effect_task("second", effects, starts, hold=0.1, cpus=0.1, timeout=1.0)]
    exp = run.Experiment(tasks, title=unique_title("queue-timeout"), progress=False,
                         executor=run.LocalExecutor(strategy=strategy, max_workers=1))
    result = exp.run(raise_on_failure=False)
    second = result["second"]
    assert "before it started" not in second.message, second.message
    assert second.state == "succeeded", (second.state, second.kind, second.message)
    assert result.ok
    assert_exactly_once(effects, ["first", "second"])


# --- 3. named crash points ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["subprocess", "process"])
@pytest.mark.parametrize("point", ["attempt-recorded", "launched", "outcome-received"])
def test_controller_killed_at_a_crash_point_then_resumed(tmp_path, reaper, point, strategy):
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    # at outcome-received the attempt has ended: nothing may hold it
    held = point != "outcome-received"
    tasks = [effect_task("t", effects, starts, gate=gate if held else None, hold=0.1)]
    exp = run.Experiment(tasks, title=unique_title(f"crash-{point}"), progress=False,
                         executor=run.LocalExecutor(strategy=strategy, max_workers=1))
    controller = detach(exp, reaper, crash_at=point)
    wait_for(lambda: not reaper.alive([controller]), 30, f"the controller to crash at {point}")
    assert state(exp.id) == "running", f"the controller ended instead of crashing at {point}"
    if point == "outcome-received":
        assert_exactly_once(effects, ["t"])  # it ran to the end before the crash
    first = reaper.track(started_pids(starts))

    with Release(gate, lambda: has_attempt(exp.id, "t", 2)):
        result = resume(exp.id)
    assert result.ok, result
    assert result["t"].value == "t"
    if point == "outcome-received":
        assert result["t"].attempts == 1, "a finished attempt was run again"
    reaper.assert_gone(first, "the worker launched by the crashed controller")
    assert_exactly_once(effects, ["t"])
    assert_no_late_results(exp.id)
    reaper.assert_no_leftovers("after the resume")


# --- 4. concurrent resumers -------------------------------------------------------------


def test_three_concurrent_resumers_one_drives_the_others_are_refused(tmp_path, reaper):
    for race in range(5):
        effects, starts = tmp_path / f"effects{race}", tmp_path / f"starts{race}"
        gate = tmp_path / f"gate{race}"
        names = ["a", "b"]
        tasks = [effect_task(n, effects, starts, gate=gate, cpus=0.5) for n in names]
        exp = run.Experiment(tasks, title=unique_title(f"race{race}"), progress=False,
                             executor=run.LocalExecutor(strategy="subprocess"))
        detach(exp, reaper)
        wait_while_driven(exp.id, lambda s=starts: len(cp.read_lines(s)) == 2,
                          "both tasks to start")
        old = reaper.track(started_pids(starts))
        kill_controller(exp.id, reaper)

        procs = [reaper.popen([STEADYRUN_BIN, "resume", exp.id], env=driver_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        # the winner waits on the gate, so the two others must have ended by themselves
        wait_for(lambda ps=procs: sum(p.poll() is not None for p in ps) >= 2, 60,
                 f"race {race}: two of three resumers to be refused")
        # and the winner reclaims the dead controller's workers before it starts its own:
        # a leftover let through the gate first would do its side effect, then be killed
        wait_for(lambda o=old: not reaper.alive(o), 60,
                 f"race {race}: the winner to stop the killed controller's workers")
        gate.touch()
        outputs = [p.communicate(timeout=60) for p in procs]
        codes = [p.returncode for p in procs]
        report = "\n".join(f"exit {c}: {err.strip()[-400:]}"
                           for c, (_, err) in zip(codes, outputs, strict=True))
        assert sorted(codes) == [0, 2, 2], f"race {race}:\n{report}"
        for code, (_, err) in zip(codes, outputs, strict=True):
            assert "Traceback" not in err, f"race {race}:\n{report}"
            if code == 2:  # refused, naming the controller that drives it
                assert re.search(r"driven by|controller pid \d+", err), f"race {race}:\n{report}"
                assert "database is locked" not in err, f"race {race}:\n{report}"
        assert state(exp.id) == "succeeded", f"race {race}"
        reaper.assert_gone(old, f"race {race}: the killed controller's workers")
        assert_exactly_once(effects, names)
        assert_no_late_results(exp.id)
        reaper.assert_no_leftovers(f"race {race}")


# --- 7. a task on its own executor -------------------------------------------------------


def test_a_task_keeps_its_own_executor_under_detach_and_after_resume(tmp_path, reaper):
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    own = run.LocalExecutor(strategy="subprocess")

    def build(gated):
        return [effect_task("shared", effects, starts, hold=0.1),
                effect_task("own", effects, starts, hold=0.1, executor=own,
                            gate=gate if gated else None)]

    exp = run.Experiment(build(False), title=unique_title("mixed"), progress=False,
                         executor=run.LocalExecutor(strategy="thread"))
    controller = detach(exp, reaper)
    assert wait_final(exp.id) == "succeeded"
    by_task = {a.task: a for a in attempts(exp.id)}
    assert by_task["own"].executor == "local/subprocess", by_task["own"].executor
    assert by_task["shared"].executor == "local/thread", by_task["shared"].executor
    pids = {fields[0]: int(fields[1]) for fields in cp.read_lines(starts)}
    assert pids["shared"] == controller and pids["own"] != controller, (pids, controller)

    starts.unlink()
    effects.unlink()
    exp = run.Experiment(build(True), title=unique_title("mixed-crash"), progress=False,
                         executor=run.LocalExecutor(strategy="thread"))
    detach(exp, reaper)
    wait_while_driven(exp.id, lambda: started(starts, "own"),
                          "the task on its own executor to start")
    old = reaper.track(started_pids(starts))
    kill_controller(exp.id, reaper)
    with Release(gate, lambda: has_attempt(exp.id, "own", 2)):
        result = resume(exp.id)
    assert result.ok, result
    last = [a for a in attempts(exp.id) if a.task == "own"][-1]
    assert last.number == 2 and last.executor == "local/subprocess", (
        last.number, last.executor)
    resumed_pid = [int(f[1]) for f in cp.read_lines(starts) if f[0] == "own"][-1]
    assert resumed_pid != os.getpid(), "the task ran inside the resuming controller"
    reaper.assert_gone([p for p in old if p != os.getpid()], "the killed run's workers")
    assert_exactly_once(effects, ["shared", "own"])
    reaper.assert_no_leftovers("after the resume")


# --- 8. resume from the project folder ---------------------------------------------------


MYMOD = textwrap.dedent("""
    import os, time

    def fn(effects: str = "", starts: str = "", gate: str = "") -> str:
        def line(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(fd, f"fn {os.getpid()} {time.time():.6f}\\n".encode())
            os.close(fd)
        line(starts)
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        line(effects)
        return "done"
""")


def test_resume_from_the_project_folder_finds_the_users_module(tmp_path, reaper):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mymod.py").write_text(MYMOD)
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    env = driver_env()
    launched = subprocess.run(
        [STEADYRUN_BIN, "run", "mymod:fn", f"effects={effects}", f"starts={starts}",
         f"gate={gate}", "--detach"],
        cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert launched.returncode == 0, launched.stderr
    exp_id = launched.stdout.split()[-1]
    reaper.track([run.Experiment.from_id(exp_id).status().controller["pid"]])
    wait_while_driven(exp_id, lambda: started(starts, "fn"), "the task to start")
    old = reaper.track(started_pids(starts))
    kill_controller(exp_id, reaper)

    with Release(gate, lambda: has_attempt(exp_id, "fn", 2)):
        resumed = subprocess.run([STEADYRUN_BIN, "resume", exp_id], cwd=project, env=env,
                                 capture_output=True, text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert state(exp_id) == "succeeded"
    reaper.assert_gone(old, "the killed controller's worker")
    assert_exactly_once(effects, ["fn"])
    reaper.assert_no_leftovers("after the resume")

